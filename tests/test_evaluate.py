import json

import pytest
import torch
from click.testing import CliRunner

from stages.cli import main

ROW_KEYS = {"prompt", "input_text", "response", "mean_entropy", "first_token_entropy", "max_entropy", "entropy_std",
            "num_tokens"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, medical_dir):
    out = tmp_path_factory.mktemp("eval")
    retain = str(medical_dir / "med_synthetic_full_minus_forget20.json")
    common = ["--base-model", tiny_model_dir, "--retain-file", retain,
              "--max-new-tokens", "6", "--retain-samples", "4", "--max-seq-length", "96", "--batch-size", "3"]
    base = CliRunner().invoke(main, ["evaluate", "--run-name", "base", "--output-dir", str(out / "base"),
                                     "--forget-file", str(medical_dir / "med_synthetic_forget20.json"), *common])
    assert base.exit_code == 0, base.output
    sub = CliRunner().invoke(main, ["evaluate", "--run-name", "sub", "--output-dir", str(out / "sub"),
                                    "--reference", str(out / "base"),
                                    "--forget-file", str(medical_dir / "med_synthetic_forget10.json"), *common])
    assert sub.exit_code == 0, sub.output
    return out


def rows(directory):
    return [json.loads(line) for line in (directory / "per_prompt.jsonl").read_text().splitlines()]


def test_per_prompt_rows_have_the_contract_keys(evaluated, medical_dir):
    base_rows = rows(evaluated / "base")
    assert len(base_rows) == len(json.loads((medical_dir / "med_synthetic_forget20.json").read_text()))
    for row in base_rows:
        assert ROW_KEYS <= set(row)
        assert row["input_text"].endswith("<|im_start|>assistant\n") and row["prompt"] in row["input_text"]


def test_metrics_follow_verify_section_a(evaluated):
    base = json.loads((evaluated / "base" / "metrics.json").read_text())
    sub = json.loads((evaluated / "sub" / "metrics.json").read_text())
    for metrics in (base, sub):
        assert {"mean_entropy", "first_token_entropy", "max_entropy", "entropy_std", "num_tokens",
                "retain_perplexity", "uncertainty_ratio", "uq_verdict"} <= set(metrics)
    assert base["uncertainty_ratio"] == pytest.approx(1.0)
    # The same model on a subset of the base's prompts: UR compares like with like, so it is exactly 1.
    assert sub["uncertainty_ratio"] == pytest.approx(1.0)
    assert sub["retain_perplexity"] == pytest.approx(base["retain_perplexity"])
    sub_rows = rows(evaluated / "sub")
    assert sub["mean_entropy"] == pytest.approx(sum(r["mean_entropy"] for r in sub_rows) / len(sub_rows))


def test_entropies_are_those_of_greedy_decoding_of_input_text(evaluated, tiny_model_dir):
    from stages.common.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    for row in rows(evaluated / "sub"):
        ids = tokenizer(row["input_text"], return_tensors="pt", add_special_tokens=False)["input_ids"]
        entropies = []
        for _ in range(row["num_tokens"]):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
            entropies.append(float(-(logp.exp() * logp).sum()))
            ids = torch.cat([ids, logp.argmax().view(1, 1)], dim=1)
        assert row["mean_entropy"] == pytest.approx(sum(entropies) / len(entropies), abs=1e-4)
        assert row["first_token_entropy"] == pytest.approx(entropies[0], abs=1e-4)


def test_missing_reference_prompts_are_a_clear_error(tmp_path, evaluated, tiny_model_dir, medical_dir):
    result = CliRunner().invoke(main, [
        "evaluate", "--run-name", "x", "--base-model", tiny_model_dir, "--reference", str(evaluated / "sub"),
        "--forget-file", str(medical_dir / "med_synthetic_forget20.json"),
        "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget20.json"),
        "--output-dir", str(tmp_path / "x"), "--max-new-tokens", "2"])
    assert result.exit_code == 1 and "the base model was not measured on" in result.output
    assert not (tmp_path / "x").exists()


def test_report_tables_every_run(tmp_path, evaluated):
    result = CliRunner().invoke(main, ["report", "--eval-dir", str(evaluated), "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    csv_lines = (tmp_path / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,mean_entropy,uncertainty_ratio")
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["base", "sub"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| base |" in markdown and "| sub |" in markdown
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
