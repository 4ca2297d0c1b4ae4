import datetime
import json

from click.testing import CliRunner

from stages.cli import main
from stages.generate.facts import sample_patients
from stages.generate.template import template_records


def test_template_generation_is_byte_identical_for_a_seed(tmp_path):
    runner = CliRunner()
    for name in ("a.jsonl", "b.jsonl"):
        result = runner.invoke(main, ["generate", "--n-record", "25", "--seed", "3", "--output", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    other = tmp_path / "c.jsonl"
    runner.invoke(main, ["generate", "--n_record", "25", "--seed", "4", "--output", str(other)])
    assert other.read_bytes() != (tmp_path / "a.jsonl").read_bytes()


def test_names_are_unique_and_records_complete():
    records = template_records(sample_patients(2000, seed=1), seed=1)
    assert len({r["client_name"] for r in records}) == 2000
    assert len({r["id"] for r in records}) == 2000
    for r in records[:200]:
        for field in ("id", "client_name", "date_of_birth", "date", "subjective", "objective", "assessment",
                      "plan", "facts"):
            assert r[field]
        datetime.date.fromisoformat(r["date_of_birth"])
        assert datetime.date.fromisoformat(r["date"]) > datetime.date.fromisoformat(r["date_of_birth"])


def test_each_note_states_its_key_facts():
    for r in template_records(sample_patients(300, seed=2), seed=2):
        f = r["facts"]
        assert f["diagnosis"] in r["assessment"]
        assert f["medication"] in r["plan"]
        assert f["complaint"] in r["subjective"]
        assert f["vitals"]["blood_pressure"] in r["objective"]


def test_phrasing_varies_between_notes():
    records = template_records(sample_patients(100, seed=5), seed=5)
    openings = {r["subjective"].replace(r["client_name"], "X").split(" ")[0] for r in records}
    assert len(openings) >= 3


def test_output_is_json_lines(tmp_path):
    out = tmp_path / "n.jsonl"
    CliRunner().invoke(main, ["generate", "--n-record", "3", "--output", str(out)])
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["note-00001", "note-00002",
                                                                                "note-00003"]
