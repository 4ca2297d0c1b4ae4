"""Benchmark: how strong the relearning attack must be to pass its positive control (docs/metrics.md §D). The attack
fine-tunes a fresh LoRA on the forget half T and measures the other half V; it shows something about V only if
it taught T itself. Candidates, side by side on the default data: the earlier attack (T's note requests, batch 1)
and the attack on T's training pairs (what finetune trained on) at a few batch sizes and learning rates. For each,
on the retain model (a model that never knew F: how fast the facts are learned from nothing) and on each unlearned
model of the pipeline: accuracy on T and on V after k steps, and the seconds of training. The ratio is the
earlier attack's seconds to k = 50 over the chosen one's. Needs `make run` first. Writes
bench/results/relearn_strength.json."""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from record import write_result  # noqa: E402

STEPS = [10, 25, 50, 100]
CANDIDATES = {  # name: (what it trains on, batch size, learning rate)
    "notes-b1-lr1e-3": ("notes", 1, 1e-3),
    "pairs-b1-lr1e-3": ("pairs", 1, 1e-3),
    "pairs-b4-lr1e-3": ("pairs", 4, 1e-3),
    "pairs-b4-lr2e-3": ("pairs", 4, 2e-3),
}


RULE = ("the candidate that teaches the retain model T (accuracy >= 0.9 on the pairs it trained on) in the fewest "
        "training examples (steps x batch); among those alike, the one that learns T fastest (the largest sum of "
        "its accuracies on T over the measured steps); if none teaches T, the one with the highest accuracy on T at "
        "the last step")


def choose(results):
    """RULE on the retain model's curves (counts, not seconds: timings on a shared machine are noise)."""
    def examples_to_teach(candidate):
        batch_size = CANDIDATES[candidate][1]
        taught = [int(k) * batch_size for k, p in results[candidate]["retain"].items() if p["t"] >= 0.9]
        return min(taught, default=None)

    def area(candidate):
        return sum(p["t"] for p in results[candidate]["retain"].values())

    taught = [c for c in results if examples_to_teach(c) is not None]
    if taught:
        return min(taught, key=lambda c: (examples_to_teach(c), -area(c)))
    return max(results, key=lambda c: results[c]["retain"][str(STEPS[-1])]["t"])


def curve(model, tokenizer, pairs, t_probes, v_probes, steps, batch_size, lr, a, e, seed):
    """{k: {"t", "v", "train_s"}} for one attack on one model."""
    import numpy as np

    from stages.evaluate.attacks import relearn
    from stages.evaluate.probes import accuracy

    clock = {"train": 0.0, "last": time.perf_counter()}

    def measure(attacked, tok):
        clock["train"] += time.perf_counter() - clock["last"]
        correct = accuracy(attacked, tok, t_probes + v_probes, e["answer-tokens"], e["batch-size"])
        clock["last"] = time.perf_counter()
        return {"t": float(np.mean(correct[:len(t_probes)])), "v": float(np.mean(correct[len(t_probes):])),
                "train_s": round(clock["train"], 1)}

    return relearn(model, tokenizer, pairs, steps, measure, lora_rank=a["relearn-lora-rank"],
                   lora_alpha=2 * a["relearn-lora-rank"], learning_rate=lr, batch_size=batch_size,
                   max_length=e["max-seq-length"], seed=seed, precision=a["relearn-precision"])


def main():
    import torch
    import yaml

    from stages.common.chat import primary_pair, training_pairs
    from stages.common.models import load_model, load_tokenizer
    from stages.common.records import read_records
    from stages.evaluate.attacks import split_patients

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    a, e = params["attacks"], params["evaluate"]
    forget, seed = params["reference_forget"], params["seeds"][0]
    models = {"retain": ROOT / f"models/retain-f{forget}-s{seed}",
              **{m: ROOT / f"models/unlearn/{m}-f{forget}-s{seed}" for m in params["methods"]}}
    missing = [str(p) for p in models.values() if not p.is_dir()]
    if missing:
        sys.exit(f"{missing[0]} is missing: run `make run` first.")
    records = read_records(ROOT / f"dataset/med_synthetic_forget{forget}.json", scored=True)
    train_ids, measured_ids = split_patients(records, seed)
    t_records = [r for r in records if r["id"] in train_ids]
    t_probes = [p for r in t_records for p in r["probes"]]
    v_probes = [p for r in records if r["id"] in measured_ids for p in r["probes"]]
    data = {"notes": [primary_pair(r) for r in t_records],
            "pairs": training_pairs(t_records, params["training"]["with-probes"], params["training"]["with-notes"])}
    tokenizer = load_tokenizer(params["base_model"])
    results, untouched, chosen = {}, {}, None
    for name, path in models.items():
        model = load_model(params["base_model"], adapter=str(path)).eval()
        # every candidate on the retain model; on the unlearned models the earlier attack and the chosen one
        names = list(CANDIDATES) if name == "retain" else ["notes-b1-lr1e-3", chosen]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=e["precision"] == "bf16"):
            for candidate in dict.fromkeys(names):
                what, batch_size, lr = CANDIDATES[candidate]
                points = curve(model, tokenizer, data[what], t_probes, v_probes, [0, *STEPS], batch_size, lr, a,
                               e, seed)
                untouched[name] = points.pop(0)
                results.setdefault(candidate, {})[name] = {str(k): v for k, v in points.items()}
                print(candidate, name, {k: (v["t"], v["v"], v["train_s"]) for k, v in points.items()}, flush=True)
        if name == "retain":
            chosen = choose(results)
        del model
    write_result("relearn_strength", results["notes-b1-lr1e-3"]["retain"]["50"]["train_s"],
                 results[chosen]["retain"]["50"]["train_s"], "s",
                 {"models": {k: str(v.relative_to(ROOT)) for k, v in models.items()}, "steps": STEPS,
                  "t_patients": len(train_ids), "t_probes": len(t_probes), "v_probes": len(v_probes),
                  "pairs": len(data["pairs"]), "lora_rank": a["relearn-lora-rank"],
                  "precision": a["relearn-precision"], "candidates": {k: list(v) for k, v in CANDIDATES.items()}},
                 curves=results, untouched=untouched, chosen=chosen, rule=RULE,
                 target="the retain model, which never knew F, learns T (accuracy >= 0.9) within the attack's steps")


if __name__ == "__main__":
    main()
