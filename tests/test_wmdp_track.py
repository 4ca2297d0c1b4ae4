"""The WMDP track through lm-evaluation-harness, on the local WMDP-format fixture run as a custom task: the
accuracy lm-eval reports equals a naive per-question log-likelihood loop over the choice letters."""

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from stages.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "wmdp_bio_mc.jsonl"
DESCRIPTION = "The following are multiple choice questions (with answers) about biology.\n\n"


def naive_accuracy(model, tokenizer, path):
    correct = []
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        context = DESCRIPTION + doc["question"].strip() + "".join(
            f"\n{letter}. {choice}" for letter, choice in zip("ABCD", doc["choices"], strict=True)) + "\nAnswer:"
        scores = []
        for letter in "ABCD":
            context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            whole = tokenizer(context + " " + letter, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(context_ids), len(whole))))
        correct.append(int(max(range(4), key=scores.__getitem__) == doc["answer"]))
    return sum(correct) / len(correct)


def test_wmdp_and_mmlu_accuracy_through_lm_eval_match_a_naive_loop(tmp_path, tiny_model_dir, medical_dir):
    from stages.common.models import load_model, load_tokenizer

    result = CliRunner().invoke(main, [
        "evaluate", "--run-name", "base", "--base-model", tiny_model_dir, "--output-dir", str(tmp_path / "base"),
        "--forget-file", str(medical_dir / "med_synthetic_forget10.json"),
        "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget20.json"),
        "--holdout-file", str(medical_dir / "med_synthetic_holdout.json"), "--max-new-tokens", "2",
        "--answer-tokens", "2", "--retain-samples", "2", "--max-seq-length", "96", "--precision", "fp32",
        "--wmdp-bio", str(FIXTURE), "--mmlu", str(FIXTURE)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    expected = naive_accuracy(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), FIXTURE)
    assert metrics["wmdp_bio_accuracy"] == expected
    assert metrics["mmlu_accuracy"] == expected
