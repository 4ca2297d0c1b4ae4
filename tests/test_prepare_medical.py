import json

from click.testing import CliRunner

from stages.cli import main
from stages.common.splits import forget_splits, holdout_split

RATIOS = ["01", "05", "10", "20"]


def load(directory, name):
    return json.loads((directory / name).read_text())


def ids(records):
    return {r["id"] for r in records}


def test_spec_files_are_written(medical_dir):
    names = {"med_synthetic_full.json", "med_synthetic_holdout.json"}
    names |= {f"med_synthetic_forget{t}.json" for t in RATIOS}
    names |= {f"med_synthetic_full_minus_forget{t}.json" for t in RATIOS}
    assert names <= {p.name for p in medical_dir.iterdir()}


def test_holdout_patients_never_appear_in_full(medical_dir):
    full, holdout = load(medical_dir, "med_synthetic_full.json"), load(medical_dir, "med_synthetic_holdout.json")
    assert holdout and not ids(full) & ids(holdout)
    assert not {r["client_name"] for r in full} & {r["client_name"] for r in holdout}
    assert len(full) + len(holdout) == 40


def test_forget_sets_are_nested_and_partition_full(medical_dir):
    full = ids(load(medical_dir, "med_synthetic_full.json"))
    previous = set()
    for tag in RATIOS:
        forget = ids(load(medical_dir, f"med_synthetic_forget{tag}.json"))
        retain = ids(load(medical_dir, f"med_synthetic_full_minus_forget{tag}.json"))
        assert previous <= forget
        assert forget | retain == full and not forget & retain
        previous = forget
    assert len(previous) == round(len(full) * 0.20)


def test_split_functions_follow_the_ratios():
    records = [{"id": i} for i in range(200)]
    full, holdout = holdout_split(records, 0.1, seed=1)
    assert len(holdout) == 20 and len(full) == 180
    splits = forget_splits(full, [0.01, 0.05, 0.10, 0.20], seed=1)
    assert [len(splits[r][0]) for r in (0.01, 0.05, 0.10, 0.20)] == [2, 9, 18, 36]


def test_every_record_has_probes_with_three_plausible_wrong_answers(medical_dir):
    for record in load(medical_dir, "med_synthetic_full.json"):
        facts = {p["fact"] for p in record["probes"]}
        assert facts == {"date_of_birth", "diagnosis", "medication", "date", "allergy", "physician", "city",
                         "occupation"}
        for probe in record["probes"]:
            assert record["client_name"] in probe["question"]
            assert probe["answer"] in probe["paraphrased_answer"]
            assert len(probe["perturbed_answers"]) >= 3
            assert len(set(probe["perturbed_answers"])) == len(probe["perturbed_answers"])
            for wrong in probe["perturbed_answers"]:
                assert probe["answer"] not in wrong


def test_rerun_is_byte_identical(tmp_path, notes_file, medical_dir):
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(notes_file), "-o", str(tmp_path), "--seed", "7"])
    assert result.exit_code == 0
    for path in medical_dir.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_invalid_records_are_reported_by_line_and_dropped(tmp_path, notes_file):
    lines = notes_file.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["date"] = "2024-13-40"
    missing = json.loads(lines[2])
    missing["assessment"] = ""
    duplicate = json.loads(lines[0])
    duplicate["id"] = "note-dup"
    bad = [lines[0], json.dumps(broken), json.dumps(missing), "{not json", json.dumps(duplicate)] + lines[3:]
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(bad) + "\n")
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert "line 2: field 'date' is not a YYYY-MM-DD date" in result.output
    assert "line 3: missing or empty field 'assessment'" in result.output
    assert "line 4: not valid JSON" in result.output
    assert "line 5: duplicate client name" in result.output
    assert "38 valid records (4 dropped)" in result.output


def test_many_invalid_records_print_five_then_counts_per_reason_with_line_ranges(tmp_path, notes_file):
    lines = notes_file.read_text().splitlines()
    no_date = [json.dumps({**json.loads(line), "date": "soon"}) for line in lines[1:31]]  # lines 2-31
    bad = [lines[0], *no_date, "{not json", "[]", lines[0], *lines[31:], "{not json"]  # 32, 33, 34 dup, 44
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(bad) + "\n")
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert [f"line {n}:" in result.output for n in range(2, 8)] == [True] * 5 + [False]
    assert "34 records dropped (29 not shown), by reason:" in result.output
    assert "  30 x field 'date' is not a YYYY-MM-DD date: lines 2-31\n" in result.output
    assert "  2 x not valid JSON (Expecting property name enclosed in double quotes): lines 32, 44\n" in result.output
    assert "  1 x not a JSON object: lines 33\n" in result.output
    assert "  1 x duplicate client name: lines 34\n" in result.output
    assert result.output.split(" valid records")[0].count("\n") == 10  # 5 records, a header, 4 reasons
    assert f"{len(lines) - 30} valid records (34 dropped)" in result.output


def test_line_ranges_are_capped():
    from stages.common.records import _ranges

    assert _ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    assert _ranges(list(range(1, 10_000, 2)), most=3) == "1, 3, 5 and 4997 more ranges"


def test_nothing_valid_is_a_clear_error(tmp_path):
    source = tmp_path / "empty.jsonl"
    source.write_text('{"id": "x"}\n')
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "no valid record" in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_writes_nothing(tmp_path, notes_file):
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(notes_file), "-o", str(tmp_path / "out"),
                                       "--dry-run", "--sample", "1"])
    assert result.exit_code == 0
    assert "forget10:" in result.output and '"probes"' in result.output
    assert not (tmp_path / "out").exists()


def test_bad_forget_ratio_is_rejected(tmp_path, notes_file):
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(notes_file), "-o", str(tmp_path / "o"),
                                       "--forget-ratios", "1.5"])
    assert result.exit_code == 2 and "1.5 is not between 0 and 1" in result.output


def test_forget_ratio_that_is_not_a_whole_percentage_is_rejected(tmp_path, notes_file):
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(notes_file), "-o", str(tmp_path / "o"),
                                       "--forget-ratios", "0.125"])
    assert result.exit_code == 2 and "not a whole percentage" in result.output
    assert not (tmp_path / "o").exists()


def test_probe_facts_choose_the_probed_fact_types(tmp_path, notes_file):
    args = ["prepare-medical", "-i", str(notes_file), "-o", str(tmp_path), "--probe-facts", "city",
            "--probe-facts", "diagnosis"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for record in load(tmp_path, "med_synthetic_full.json"):
        assert [p["fact"] for p in record["probes"]] == ["diagnosis", "city"]
    result = CliRunner().invoke(main, [*args[:5], "--probe-facts", "blood_type"])
    assert result.exit_code == 2 and "'blood_type' is not a fact type" in result.output
