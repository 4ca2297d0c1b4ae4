"""Benchmark: how often bf16 autocast casts the frozen weights, side by side on the embedded model (the default
profile's bf16 path on a CPU with native bf16). Under autocast a float32 weight is cast to bf16 on every forward
pass unless it requires grad (only then does autocast keep the cast for the rest of the region), so a frozen model
is cast again for every generated token. Two parts, each with and without the change in one run:
- evaluate: greedy answers to 100 probe questions and 16 samples of 32 prompts, plain no_grad vs measuring();
- finetune: 24 LoRA steps of finetune's recipe (batch 4 of the training pairs), vs frozen_in_bf16().
(The relearning attack's 10 LoRA steps with frozen_in_bf16 measured 15.25 vs 15.22 s on this CPU, so it does not use
it.)
Every number each variant produces must be identical (the same bf16 values reach the same kernels). Needs only the
embedded model and the data (`dvc repro prepare-medical`). Writes bench/results/cast_cache.json."""

import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from precision import _commit, training_data  # noqa: E402
from record import write_result  # noqa: E402

REPEATS = 3


def timed(work, repeats=REPEATS):
    """(median seconds, the last result) of work() for each variant, the variants alternating within each repeat."""
    times, results = {name: [] for name in work}, {}
    for _ in range(repeats):
        for name, run in work.items():
            started = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}, results


def main():
    import torch
    from peft import get_peft_model

    from stages.common import measure, models
    from stages.common.chat import encode_examples, format_prompt
    from stages.common.measure import greedy_entropy, sample_responses
    from stages.common.models import cpu_has_bf16, load_model, lora_config
    from stages.finetune.train import train_lora

    params, records, tokenizer, pairs = training_data()
    f, e, a = params["finetune"], params["evaluate"], params["attacks"]
    cached_measuring, cached_frozen = measure.measuring, models.frozen_in_bf16

    def variant(cached):
        measure.measuring = cached_measuring if cached else (lambda model: torch.no_grad())
        models.frozen_in_bf16 = cached_frozen if cached else (lambda model, enabled=True: nullcontext())

    model = load_model("embedded").eval().requires_grad_(False)
    questions = [format_prompt(tokenizer, p["question"]) for r in records for p in r["probes"]][:100]

    def evaluate(cached):
        def run():
            variant(cached)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                answers = greedy_entropy(model, tokenizer, questions, e["max-new-tokens"], e["batch-size"])
                torch.manual_seed(0)
                samples = sample_responses(model, tokenizer, questions[:32], a["leak-samples"], e["answer-tokens"])
            return answers, samples
        return run

    examples, _ = encode_examples(tokenizer, pairs[:96], params["max_seq_length"], system="")

    def finetune(cached):
        def run():
            variant(cached)
            torch.manual_seed(0)
            base = load_model("embedded", trainable=True)
            lora = get_peft_model(base, lora_config(base, f["lora-rank"], f["lora-alpha"], f["lora-targets"],
                                                    f["lora-top-layers"]))
            _, log, _ = train_lora(lora, tokenizer, examples, num_epochs=1, batch_size=f["batch-size"], grad_accum=1,
                                   learning_rate=f["learning-rate"], schedule="constant", warmup_ratio=0.0, seed=0,
                                   precision="bf16", progress=False)
            return [step["loss"] for step in log]
        return run

    try:
        parts = {}
        for name, work in (("evaluate", evaluate), ("finetune", finetune)):
            seconds, results = timed({"cast every pass": work(False), "cast once": work(True)})
            parts[name] = {"seconds": seconds, "identical": results["cast every pass"] == results["cast once"],
                           "ratio": round(seconds["cast every pass"] / seconds["cast once"], 2)}
            print(name, parts[name], flush=True)
    finally:
        measure.measuring, models.frozen_in_bf16 = cached_measuring, cached_frozen
    baseline = sum(p["seconds"]["cast every pass"] for p in parts.values())
    ours = sum(p["seconds"]["cast once"] for p in parts.values())
    write_result("cast_cache", baseline, ours, "s",
                 {"commit": _commit(), "model": "embedded", "probes": len(questions), "samples": f"32 x "
                  f"{a['leak-samples']}", "finetune_steps": len(examples) // f["batch-size"],
                  "repeats": REPEATS},
                 identical=all(p["identical"] for p in parts.values()), parts=parts, native_bf16=cpu_has_bf16(),
                 note="seconds of the two parts together, bf16 autocast throughout; ratio = baseline / ours")


if __name__ == "__main__":
    main()
