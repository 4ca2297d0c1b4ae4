"""Benchmark: this revision's three ways to the same numbers with less arithmetic, each side by side with the code
before it, in one run on the embedded model and the default profile's data (params.yaml):

- finetune: the default recipe (LoRA r16 on the top 15 layers, batch 4, the empty training system prompt, its 12
  epochs) on the first --steps / 12 batches of the oracle's training set, so the prefix is reused as often as in the
  stage: the whole model every step vs FrozenPrefix (the 15 frozen layers run once per example); per-step losses
  compared;
- the unlearning monitor's retain perplexity (16 retain patients' 80 training pairs, evaluated after every unlearning
  step): every example whole (bench/reference.whole_answer_nll) vs answer_nll (system prompt once, vocabulary only
  at answer positions);
- the bitsandbytes nf4 attack's greedy answers to the 100 forget probes: bf16 compute vs float32 compute (what
  bnb_compute_dtype picks on a CPU without native bf16; on one with it both are bf16 and the part is skipped).

Each pair alternates A, B, A, B (medians of two). baseline/ours: the three parts' seconds summed, before vs after.
Writes bench/results/less_work.json.

    python bench/less_work.py [--steps 50]      (about 6 min on 2 cores)
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402
from reference import whole_answer_nll  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def data(params):
    """The default profile's full, retain (forget50's complement) and forget records, made by the real stages."""
    from click.testing import CliRunner

    from stages.cli import main
    from stages.common.io import read_json

    medical = params["prepare_medical"]
    with tempfile.TemporaryDirectory() as tmp:
        facts = [arg for fact in medical["probe-facts"] for arg in ("--probe-facts", fact)]
        for args in (["generate", "--n-record", str(params["generate"]["n-record"]), "--seed", str(params["seed"]),
                      "--output", f"{tmp}/n.jsonl"],
                     ["prepare-medical", "-i", f"{tmp}/n.jsonl", "-o", f"{tmp}/d", "--seed", str(params["seed"]),
                      "--holdout-ratio", str(medical["holdout-ratio"]), "--forget-ratios", "0.5", *facts]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
        return [read_json(f"{tmp}/d/{name}.json") for name in
                ("med_synthetic_full", "med_synthetic_full_minus_forget50", "med_synthetic_forget50")]


def timed(function):
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def alternate(before, after, rounds=2):
    """Median seconds of each, run A, B, A, B; and the last results."""
    times = {"before": [], "after": []}
    results = {}
    for _ in range(rounds):
        for name, function in (("before", before), ("after", after)):
            seconds, results[name] = timed(function)
            times[name].append(seconds)
    return statistics.median(times["before"]), statistics.median(times["after"]), results


def finetune_part(tokenizer, full, params, steps):
    from peft import get_peft_model

    from stages.common.chat import encode_examples, training_pairs
    from stages.common.models import load_model, lora_config, resolve_precision
    from stages.common.seeding import seed_everything
    from stages.finetune.train import train_lora

    recipe = params["finetune"]
    precision = resolve_precision(recipe["precision"], "cpu")
    examples, _ = encode_examples(tokenizer, training_pairs(full, True, False), params["max_seq_length"], system="")
    # the recipe's epochs over a slice of the set: the prefix is computed once and reused as often as in the stage
    epochs = recipe["num-epochs"]
    chosen = examples[:max(1, steps // epochs) * recipe["batch-size"]]

    def train(frozen_prefix):
        seed_everything(0)
        base = load_model("embedded", trainable=True)
        model = get_peft_model(base, lora_config(base, recipe["lora-rank"], recipe["lora-alpha"],
                                                 recipe["lora-targets"], recipe["lora-top-layers"]))
        _, log, _ = train_lora(model, tokenizer, chosen, num_epochs=epochs, batch_size=recipe["batch-size"],
                               grad_accum=1,
                               learning_rate=recipe["learning-rate"], schedule="constant", warmup_ratio=0.0, seed=0,
                               precision=precision, progress=False, frozen_prefix=frozen_prefix)
        return [e["loss"] for e in log]

    before, after, losses = alternate(lambda: train(False), lambda: train(True))
    drift = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["before"], losses["after"], strict=True))
    return before, after, {"steps": len(losses["after"]), "examples": len(chosen), "epochs": epochs,
                           "precision": precision, "max_loss_relative_diff": drift}


def monitor_part(tokenizer, retain, params):
    from stages.common.chat import training_pairs
    from stages.common.measure import answer_nll
    from stages.common.models import load_model

    model = load_model("embedded").eval()
    pairs = training_pairs(retain[:params["unlearn"]["monitor-samples"]], True, False)
    length = params["max_seq_length"]
    before, after, nll = alternate(lambda: whole_answer_nll(model, tokenizer, pairs, length),
                                   lambda: answer_nll(model, tokenizer, pairs, length))
    ppl = {k: math.exp(sum(v[0]) / sum(v[1])) for k, v in nll.items()}
    return before, after, {"pairs": len(pairs), "perplexity_before": ppl["before"], "perplexity_after": ppl["after"],
                           "tokens_equal": nll["before"][1] == nll["after"][1]}


def quant_part(tokenizer, forget, params):
    import torch

    from stages.common import models
    from stages.evaluate.attacks import bnb_quantized
    from stages.evaluate.probes import greedy_answers

    if models.cpu_has_bf16():
        return None
    model = models.load_model("embedded").eval()
    probes = [p for r in forget for p in r["probes"]]
    answer_tokens = params["evaluate"]["answer-tokens"]
    batch = params["evaluate"]["batch-size"]

    def answers(dtype):
        original = models.bnb_compute_dtype
        models.bnb_compute_dtype = lambda device: dtype
        try:
            with bnb_quantized(model, 4, "nf4"):
                return greedy_answers(model, tokenizer, [p["question"] for p in probes], answer_tokens, batch)
        finally:
            models.bnb_compute_dtype = original

    before, after, out = alternate(lambda: answers(torch.bfloat16), lambda: answers(torch.float32), rounds=1)
    same = sum(a == b for a, b in zip(out["before"], out["after"], strict=True))
    return before, after, {"probes": len(probes), "answers_identical": same}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    from stages.common.models import load_tokenizer

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    full, retain, forget = data(params)
    tokenizer = load_tokenizer("embedded")
    parts = {"finetune": finetune_part(tokenizer, full, params, args.steps),
             "monitor_perplexity": monitor_part(tokenizer, retain, params),
             "bnb_nf4_answers": quant_part(tokenizer, forget, params)}
    extra, baseline, ours = {}, 0.0, 0.0
    for name, part in parts.items():
        if part is None:
            extra[name] = "skipped: this CPU has native bf16, so bitsandbytes computes in bf16 either way"
            continue
        before, after, facts = part
        baseline, ours = baseline + before, ours + after
        extra[name] = {"before_s": round(before, 2), "after_s": round(after, 2), "ratio": round(before / after, 2),
                       **facts}
    write_result("less_work", baseline, ours, "s", {"model": "embedded", "finetune_steps": args.steps,
                                                     "rounds": "A, B, A, B; medians (bnb: one round)"},
                 parts=extra, target="every part faster than the code before it, with the same losses and perplexity "
                                     "(nf4: the same quantized weights)")


if __name__ == "__main__":
    main()
