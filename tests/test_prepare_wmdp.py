import json

import pytest
from click.testing import CliRunner

from stages.cli import main
from stages.prepare_wmdp.corpus import split_sentences

PAPERS = [
    ("Influenza A viruses are classified by surface proteins, e.g. hemagglutinin and neuraminidase. "
    "Fig. 2 shows the phylogeny of the isolates. Cells were treated with 3.5 mg of the compound per litre. "
    "Replication peaked at 48 hours post infection."),
    ("Bacterial spores survive desiccation for decades. As reported by Smith et al. in an earlier study, "
    "germination requires specific nutrients. Heat activation at 70 C increases germination rates."),
]


def write_corpus(path):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in PAPERS))
    return path


def test_sentence_splitting_respects_abbreviations_and_numbers():
    sentences = split_sentences(PAPERS[0])
    assert sentences == [
        "Influenza A viruses are classified by surface proteins, e.g. hemagglutinin and neuraminidase.",
        "Fig. 2 shows the phylogeny of the isolates.",
        "Cells were treated with 3.5 mg of the compound per litre.",
        "Replication peaked at 48 hours post infection.",
    ]
    assert "Smith et al. in an earlier study" in split_sentences(PAPERS[1])[1]


def test_local_corpus_becomes_nested_sentence_splits(tmp_path):
    source = write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "wmdp"
    result = CliRunner().invoke(main, ["prepare-wmdp", "--source", str(source), "--output-dir", str(out),
                                       "--target-size", "6", "--forget-ratios", "0.2", "--forget-ratios", "0.5"])
    assert result.exit_code == 0, result.output
    full = json.loads((out / "wmdp_bio_full.json").read_text())
    assert len(full) == 6
    assert set(full[0]) == {"text", "source", "type", "paper_index", "sentence_index"}
    assert {r["type"] for r in full} == {"paper_sentence"} and {r["source"] for r in full} == {"wmdp-bio-retain"}
    small = json.loads((out / "wmdp_bio_forget20.json").read_text())
    large = json.loads((out / "wmdp_bio_forget50.json").read_text())
    assert small and all(r in large for r in small)
    rest = json.loads((out / "wmdp_bio_full_minus_forget50.json").read_text())
    assert len(large) + len(rest) == 6


def test_absent_source_with_if_present_records_a_skip(tmp_path):
    out = tmp_path / "wmdp"
    result = CliRunner().invoke(main, ["prepare-wmdp", "--source", str(tmp_path / "none.jsonl"), "--if-present",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["skipped"] is True
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_absent_source_without_if_present_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["prepare-wmdp", "--source", str(tmp_path / "none.jsonl"),
                                       "--output-dir", str(tmp_path / "wmdp")])
    assert result.exit_code == 1
    assert "none.jsonl: no such file." in result.output
    assert not (tmp_path / "wmdp").exists()


@pytest.fixture
def hub_corpus(tmp_path, monkeypatch):
    """A local dataset laid out like cais/wmdp-corpora (config bio-retain-corpus), standing in for --source hub."""
    from stages.prepare_wmdp import corpus

    repo = tmp_path / "wmdp-corpora"
    repo.mkdir()
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: bio-retain-corpus\n"
                                    "  data_files: bio-retain-corpus.jsonl\n---\n")
    write_corpus(repo / "bio-retain-corpus.jsonl")
    monkeypatch.setitem(corpus.HUB_CORPORA, "hub", (str(repo), "bio-retain-corpus", "wmdp-bio-retain"))
    return repo


def test_hub_loading_code_reads_a_dataset_in_the_hub_format(tmp_path, hub_corpus):
    """The real `datasets` path, on a local dataset in the hub layout."""
    out = tmp_path / "wmdp"
    result = CliRunner().invoke(main, ["prepare-wmdp", "--source", "hub", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    full = json.loads((out / "wmdp_bio_full.json").read_text())
    assert len(full) == 7 and full[0]["source"] == "wmdp-bio-retain"


def test_parquet_source_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": PAPERS}), tmp_path / "c.parquet")
    result = CliRunner().invoke(main, ["prepare-wmdp", "--source", str(tmp_path / "c.parquet"),
                                       "--output-dir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "w" / "wmdp_bio_full.json").read_text())) == 7


def test_unreachable_hub_corpus_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    result = CliRunner().invoke(main, ["prepare-wmdp", "--source", "hub-forget", "--output-dir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "cais/wmdp-bio-forget-corpus" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w").exists()


def test_multiple_choice_fixture_is_in_the_benchmark_format():
    from pathlib import Path

    rows = [json.loads(line) for line in
            (Path(__file__).parent / "fixtures" / "wmdp_bio_mc.jsonl").read_text().splitlines()]
    assert len(rows) >= 8
    for row in rows:
        assert set(row) == {"question", "choices", "answer"}
        assert len(row["choices"]) == 4 and row["answer"] in range(4)


def test_make_data_fetch_snapshots_the_hub_corpus_as_jsonl(tmp_path, hub_corpus):
    """`make data`'s fetch through the real `datasets` path, on a local dataset in the hub layout."""
    from stages.prepare_wmdp.fetch import fetch

    out = tmp_path / "data/wmdp/bio-retain-corpus.jsonl"
    assert fetch(out) == len(PAPERS)
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == PAPERS
    # The snapshot is a valid prepare-wmdp source.
    result = CliRunner().invoke(main, ["prepare-wmdp", "--source", str(out), "--output-dir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output


def test_make_data_offline_says_so_and_leaves_data_unchanged(tmp_path, monkeypatch, capsys):
    from stages.prepare_wmdp.fetch import fetch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "data/wmdp/bio-retain-corpus.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text('{"text": "kept"}\n')
    assert fetch(out) is None
    assert out.read_text() == '{"text": "kept"}\n'
    assert "cais/wmdp-corpora" in capsys.readouterr().err
