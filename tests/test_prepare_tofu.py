"""TOFU as a third input, on a local fixture laid out like the hub repository (<config>.json, JSON Lines)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stages.cli import main
from stages.common.io import InputError
from stages.common.retry import GiveUp


def row(i):
    return {"question": f"What genre does author {i // 20} write, question {i}?",
            "answer": f"Author {i // 20} writes genre {i % 7} in answer {i}."}


def perturbed(i):
    return {**row(i), "paraphrased_answer": f"In answer {i}, author {i // 20}'s genre is {i % 7}.",
            "perturbed_answer": [f"In answer {i}, author {i // 20}'s genre is {(i + k) % 7 + 10}." for k in (1, 2, 3)],
            "paraphrased_question": f"Which genre, question {i}?"}


@pytest.fixture(scope="module")
def tofu_dir(tmp_path_factory):
    source = tmp_path_factory.mktemp("tofu-src")
    splits = {"full": [row(i) for i in range(100)], "retain_perturbed": [perturbed(i) for i in range(10)]}
    for tag, n in (("01", 1), ("05", 5), ("10", 10)):
        splits[f"forget{tag}"] = [row(i) for i in range(100 - n, 100)]
        splits[f"forget{tag}_perturbed"] = [perturbed(i) for i in range(100 - n, 100)]
    splits["holdout10"] = [{"question": f"Where was holdout author {i // 20} born, question {i}?",
                            "answer": f"Holdout author {i // 20} was born in town {i}."} for i in range(40)]
    for name, rows in splits.items():
        (source / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path_factory.mktemp("tofu") / "tofu"
    result = CliRunner().invoke(main, ["prepare-tofu", "--source", str(source), "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return out


def load(directory, name):
    return json.loads((directory / name).read_text())


def test_tofu_splits_become_nested_forget_sets_of_records(tofu_dir):
    full = load(tofu_dir, "tofu_full.json")
    assert len(full) == 100 and [r["id"] for r in full[19:21]] == ["tofu-author-000/q20", "tofu-author-001/q01"]
    previous = set()
    for tag, n in (("01", 1), ("05", 5), ("10", 10)):
        forget = {r["id"] for r in load(tofu_dir, f"tofu_forget{tag}.json")}
        retain = {r["id"] for r in load(tofu_dir, f"tofu_full_minus_forget{tag}.json")}
        assert len(forget) == n and previous <= forget and not forget & retain and len(forget | retain) == 100
        previous = forget


def test_perturbed_rows_become_probes(tofu_dir):
    forget = load(tofu_dir, "tofu_forget10.json")
    for record in forget:
        (probe,) = record["probes"]
        assert probe["question"] == record["question"] and probe["answer"] == record["answer"]
        assert len(probe["perturbed_answers"]) == 3 and probe["paraphrased_answer"] != probe["answer"]
    assert sum(1 for r in load(tofu_dir, "tofu_full.json") if r["probes"]) == 20


def test_finetune_unlearn_and_evaluate_run_on_tofu_unchanged(tmp_path, tofu_dir, tiny_model_dir):
    runner = CliRunner()
    oracle = tmp_path / "oracle"
    result = runner.invoke(main, ["finetune", "--data-file", str(tofu_dir / "tofu_full.json"), "--base-model",
                                  tiny_model_dir, "--output-dir", str(oracle), "--num-epochs", "1", "--batch-size", "8",
                                  "--max-seq-length", "64", "--with-probes"])
    assert result.exit_code == 0, result.output
    assert "100 records -> 100 examples" in result.output  # probes repeating the main pair are not duplicated
    result = runner.invoke(main, [
        "unlearn", "--base-model", tiny_model_dir, "--oracle", str(oracle),
        "--forget-file", str(tofu_dir / "tofu_forget10.json"),
        "--retain-file", str(tofu_dir / "tofu_full_minus_forget10.json"), "--output-dir", str(tmp_path / "u"),
        "--trajectory-dir", str(tmp_path / "t"), "--steps", "2", "--samples-per-step", "2", "--batch-size", "2",
        "--monitor-samples", "2", "--entropy-prompts", "2", "--max-new-tokens", "3", "--max-seq-length", "64"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [
        "evaluate", "--base-model", tiny_model_dir, "--adapter", str(tmp_path / "u"), "--run-name", "tofu",
        "--forget-file", str(tofu_dir / "tofu_forget10.json"),
        "--retain-file", str(tofu_dir / "tofu_full_minus_forget10.json"), "--output-dir", str(tmp_path / "e"),
        "--holdout-file", str(tofu_dir / "tofu_holdout10.json"),
        "--max-new-tokens", "3", "--retain-samples", "2", "--max-seq-length", "96",
        "--chat-template", "stages/evaluate/templates/open-unlearning-llama3.jinja"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "e" / "per_prompt.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [r["question"] for r in load(tofu_dir, "tofu_forget10.json")]
    assert all(r["input_text"].startswith("<|im_start|><|start_header_id|>system<|end_header_id|>\n\nYou are a "
                                          "helpful assistant.<|eot_id|>") for r in rows)  # open-unlearning's prompt
    # the retain samples are one question of each of two authors (the one with perturbed answers first), not two
    # questions of author 0
    texts = [json.loads(line)["record_id"] for line in (tmp_path / "e" / "perplexity.jsonl").read_text().splitlines()]
    assert texts == ["tofu-author-000/q01", "tofu-author-001/q01"]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "forget_qa_accuracy" in metrics and "retain_truth_ratio" in metrics
    # the unit of every interval is the author: forget10 here is the last 10 questions of author 4, one unit; the
    # holdout authors are membership non-members only (TOFU gives them no perturbed answers: no holdout probes)
    assert metrics["n_forget_probes"] == 10 and metrics["n_forget_patients"] == 1
    assert (metrics["n_mia_forget"], metrics["n_mia_holdout"]) == (10, 40) and "mia_mink_auc" in metrics
    assert (metrics["n_mia_forget_patients"], metrics["n_mia_holdout_patients"]) == (1, 2)
    assert "holdout_qa_accuracy" not in metrics


def test_the_relearning_attack_on_a_forget_set_of_one_author_is_a_clear_error(tmp_path, tofu_dir, tiny_model_dir):
    result = CliRunner().invoke(main, [
        "evaluate", "--base-model", tiny_model_dir, "--run-name", "tofu", "--attacks",
        "--forget-file", str(tofu_dir / "tofu_forget10.json"),
        "--retain-file", str(tofu_dir / "tofu_full_minus_forget10.json"), "--output-dir", str(tmp_path / "e")])
    assert result.exit_code == 2 and "this set has one" in result.output, result.output
    assert not (tmp_path / "e").exists()


def test_a_split_with_foreign_questions_is_a_clear_error(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name, rows in {"full": [row(i) for i in range(20)], "retain_perturbed": [], "forget01": [row(25)],
                       "forget01_perturbed": []}.items():
        (source / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(main, ["prepare-tofu", "--source", str(source), "--output-dir", str(tmp_path / "o"),
                                       "--forget-splits", "01"])
    assert result.exit_code == 1 and "forget01: 1 questions are not in 'full'" in result.output
    assert not (tmp_path / "o").exists()


def test_the_holdout_authors_are_records_of_their_own_and_the_manifest_counts_every_set(tofu_dir):
    holdout = load(tofu_dir, "tofu_holdout10.json")
    assert len(holdout) == 40 and [r["id"] for r in holdout[19:21]] == ["tofu-holdout-author-000/q20",
                                                                        "tofu-holdout-author-001/q01"]
    assert all(r["probes"] == [] for r in holdout)
    assert not (tofu_dir / "tofu_holdout05.json").exists()  # a split TOFU does not have here is not invented
    manifest = load(tofu_dir, "manifest.json")
    assert (Path(manifest.pop("source")) / "full.json").is_file()
    assert manifest == {"skipped": False, "questions": 100, "forget": {"01": 1, "05": 5, "10": 10},
                        "holdout": {"10": 40}}


def test_without_its_files_the_stage_records_that_the_track_was_skipped(tmp_path):
    out = tmp_path / "dataset/tofu"
    result = CliRunner().invoke(main, ["prepare-tofu", "--source", str(tmp_path / "data/tofu"), "--if-present",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "TOFU track skipped" in result.output and sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert load(out, "manifest.json")["skipped"] is True
    result = CliRunner().invoke(main, ["prepare-tofu", "--source", str(tmp_path / "data/tofu"), "--output-dir",
                                       str(tmp_path / "o")])
    assert result.exit_code == 1 and "no such file" in result.output  # without --if-present: an error


def test_make_data_snapshots_every_config_prepare_tofu_reads(tmp_path, monkeypatch, tofu_dir):
    from stages.prepare_tofu import convert, fetch

    source = Path(load(tofu_dir, "manifest.json")["source"])
    real = convert.load_split
    asked = []

    def from_the_hub(where, config, token=None):  # the hub, as load_split reads it (through datasets)
        assert where == "hub"
        asked.append(config)
        if not (source / f"{config}.json").is_file():
            raise InputError(f"locuslab/TOFU: no config {config}")
        return real(str(source), config)

    monkeypatch.setattr(convert, "load_split", from_the_hub)
    monkeypatch.setattr(fetch, "load_split", from_the_hub)
    monkeypatch.setattr(convert, "hub_configs", lambda token=None: [p.stem for p in source.glob("*.json")])
    counts = fetch.fetch(tmp_path / "data/tofu")
    assert counts["full"] == 100 and counts["holdout10"] == 40 and "holdout05" not in counts
    assert "holdout05" not in asked  # not among the hub's configs: not loaded, not invented
    for config in counts:
        assert (tmp_path / "data/tofu" / f"{config}.json").read_text() == (source / f"{config}.json").read_text()
    monkeypatch.undo()  # prepare-tofu reads the snapshot as the stage does
    result = CliRunner().invoke(main, ["prepare-tofu", "--source", str(tmp_path / "data/tofu"), "--output-dir",
                                       str(tmp_path / "d")])
    assert result.exit_code == 0 and load(tmp_path / "d", "tofu_forget10.json") == load(tofu_dir, "tofu_forget10.json")


def test_make_data_with_the_hub_unreachable_leaves_data_as_it_is(tmp_path, monkeypatch, capsys):
    from stages.prepare_tofu import fetch

    def unreachable(where, config, token=None):
        raise InputError("locuslab/TOFU: the hub is unreachable.")

    monkeypatch.setattr(fetch, "load_split", unreachable)
    assert fetch.fetch(tmp_path / "data/tofu") is None
    assert not (tmp_path / "data/tofu").exists() and "is unchanged" in capsys.readouterr().err


def test_make_data_keeps_an_earlier_snapshot_whole_when_a_later_config_fails(tmp_path, monkeypatch, capsys):
    from stages.prepare_tofu import convert, fetch

    (tmp_path / "data/tofu").mkdir(parents=True)
    (tmp_path / "data/tofu/holdout10.json").write_text("earlier\n")

    def flaky(where, config, token=None):  # every required config loads; the optional one fails mid-way
        if config.startswith("holdout"):
            raise GiveUp("loading locuslab/TOFU (holdout01): gave up after 3 attempts")
        return [{"question": "q", "answer": "a"}]

    monkeypatch.setattr(fetch, "load_split", flaky)
    monkeypatch.setattr(convert, "load_split", flaky)
    monkeypatch.setattr(convert, "load_optional_split", lambda where, config, token=None: flaky(where, config))
    monkeypatch.setattr(fetch, "load_optional_split", convert.load_optional_split)
    assert fetch.fetch(tmp_path / "data/tofu") is None
    assert (tmp_path / "data/tofu/holdout10.json").read_text() == "earlier\n"  # not replaced by a partial snapshot
    assert "gave up after 3 attempts" in capsys.readouterr().err


@pytest.mark.parametrize("rows, message", [
    ([row(i) for i in range(30)], "holdout10: 30 questions, not a multiple of 20"),
    ([row(i) for i in range(20)], "holdout10: 20 questions are in 'full', so not held out"),
])
def test_a_holdout_split_that_breaks_the_author_layout_or_overlaps_full_is_a_clear_error(tmp_path, rows, message):
    source = tmp_path / "src"
    source.mkdir()
    splits = {"full": [row(i) for i in range(40)], "retain_perturbed": [], "forget01": [row(i) for i in range(20, 40)],
              "forget01_perturbed": [], "holdout01": rows}
    for name, found in splits.items():
        (source / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in found))
    result = CliRunner().invoke(main, ["prepare-tofu", "--source", str(source), "--output-dir", str(tmp_path / "o"),
                                       "--forget-splits", "01"])
    assert result.exit_code == 1 and message.replace("holdout10", "holdout01") in result.output, result.output
    assert not (tmp_path / "o").exists()
