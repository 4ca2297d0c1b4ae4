"""Benchmark: the oracle's fine-tuning recipe. For candidate recipes on the embedded model, the learning curve:
probe accuracy (greedy answer under the chat template with its default system prompt, as `evaluate` asks) on
trained patients and on held-out patients, per fact type, against epochs, tokens and training seconds.

    python bench/oracle_recipe.py --candidate qa-empty-sys-bf16     # one candidate, added to the results file
    python bench/oracle_recipe.py --list

Results accumulate in bench/results/oracle_recipe.json (one entry per candidate, rerun to replace it); `--choose
NAME` records which recipe params.yaml uses and why. Candidates differ in one thing at a time from the first.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "oracle_recipe.json"

BASE = {"notes": False, "system": "", "precision": "bf16", "lr": 2e-3, "rank": 16, "targets": "all-linear",
        "top_layers": 0, "rslora": False, "loraplus": None,
        "batch_size": 4, "epochs": 10, "eval_at": [2, 4, 6, 8, 10], "full": False}
CANDIDATES = {
    "qa-empty-sys-bf16-lr2e-3-8facts": {},  # run with --facts '' (every fact type)
    "qa-empty-sys-bf16-lr5e-3": {"lr": 5e-3},
    "qa-empty-sys-fp32-lr4e-3": {"precision": "fp32", "lr": 4e-3, "eval_at": [4, 7, 10]},
    "qa-empty-sys-bf16-lr1e-3": {"lr": 1e-3, "epochs": 4, "eval_at": [2, 4]},
    "qa-empty-sys-bf16-lr1e-3-16ep": {"lr": 1e-3, "epochs": 16, "eval_at": [8, 12, 16]},
    "qa-empty-sys-fp32-lr1e-3": {"lr": 1e-3, "precision": "fp32", "epochs": 2, "eval_at": [2]},
    "qa-default-sys-bf16-lr1e-3": {"lr": 1e-3, "system": None, "epochs": 4, "eval_at": [2, 4]},
    "notes-qa-empty-sys-bf16-lr1e-3": {"lr": 1e-3, "notes": True, "epochs": 4, "eval_at": [2, 4]},
    "qa-empty-sys-bf16-lr1e-3-top-half": {"lr": 1e-3, "top_layers": 15, "epochs": 4, "eval_at": [2, 4]},
    "qa-empty-sys-bf16-lr1e-3-top-half-12ep": {"lr": 1e-3, "top_layers": 15, "epochs": 12, "eval_at": [8, 12]},
    "qa-empty-sys-bf16-lr1e-3-top-third-12ep": {"lr": 1e-3, "top_layers": 10, "epochs": 12, "eval_at": [8, 12]},
    "qa-empty-sys-bf16-lr2e-3-top-half-b8-12ep": {"lr": 2e-3, "top_layers": 15, "batch_size": 8, "epochs": 12,
                                                  "eval_at": [8, 12]},
    "qa-empty-sys-bf16-b2": {"batch_size": 2, "epochs": 6, "eval_at": [2, 4, 6]},
    "qa-empty-sys-bf16-loraplus": {"loraplus": 16, "lr": 5e-4, "epochs": 4, "eval_at": [2, 4]},
    "qa-default-sys-bf16-full-lr1e-4": {"full": True, "lr": 1e-4, "system": None},
}


def data(n_record, holdout_ratio, seed):
    """Records (with probes) of the full set and the holdout, made by the real generate and prepare-medical."""
    from click.testing import CliRunner

    from stages.cli import main
    from stages.common.io import read_json

    with tempfile.TemporaryDirectory() as tmp:
        for args in (["generate", "--n-record", str(n_record), "--seed", str(seed), "--output", f"{tmp}/n.jsonl"],
                     ["prepare-medical", "-i", f"{tmp}/n.jsonl", "-o", f"{tmp}/d", "--seed", str(seed),
                      "--holdout-ratio", str(holdout_ratio), "--forget-ratios", "0.2"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
        return read_json(f"{tmp}/d/med_synthetic_full.json"), read_json(f"{tmp}/d/med_synthetic_holdout.json")


def model_for(c, seed):
    from peft import get_peft_model

    from stages.common.models import load_model, lora_config
    from stages.common.seeding import seed_everything

    model = load_model("embedded", trainable=True)
    seed_everything(seed)
    if c["full"]:
        return model
    config = lora_config(model, c["rank"], 2 * c["rank"], c["targets"], c["top_layers"])
    config.use_rslora = c["rslora"]
    return get_peft_model(model, config)


def accuracy_by_fact(model, tokenizer, records, system=None):
    """Accuracy as evaluate measures it (greedy answer contains the true one), prompted with `system` (None: the
    template's default, as evaluate prompts)."""
    from stages.common.chat import format_prompt
    from stages.common.measure import greedy_entropy
    from stages.evaluate.metrics import contains_answer

    probes = [p for r in records for p in r["probes"]]
    prompts = [format_prompt(tokenizer, p["question"], system) for p in probes]
    answers = [g["response"] for g in greedy_entropy(model, tokenizer, prompts, 12, 32)]
    correct = [int(contains_answer(a, p["answer"])) for a, p in zip(answers, probes, strict=True)]
    by_fact = {}
    for p, ok in zip(probes, correct, strict=True):
        by_fact.setdefault(p["fact"], []).append(ok)
    return sum(correct) / len(correct), {f: round(sum(v) / len(v), 3) for f, v in by_fact.items()}


def run(name, n_record, holdout_ratio, seed, sample, facts, save=None):
    import torch

    from stages.common.chat import answer_loss, collate, encode_examples, note_answer, note_question
    from stages.common.models import load_tokenizer
    from stages.finetune.train import batch_schedule

    c = {**BASE, **CANDIDATES[name]}
    full, holdout = data(n_record, holdout_ratio, seed)
    if facts:
        full, holdout = ([{**r, "probes": [p for p in r["probes"] if p["fact"] in facts]} for r in records]
                         for records in (full, holdout))
    tokenizer = load_tokenizer("embedded")
    pairs = [(p["question"], p["answer"]) for r in full for p in r["probes"]]
    if c["notes"]:
        pairs += [(note_question(r), note_answer(r)) for r in full]
    examples, _ = encode_examples(tokenizer, pairs, 256, system=c["system"])
    model = model_for(c, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    # LoRA+ (Hayou et al. 2024): the B matrices learn `loraplus` times faster than the A matrices.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = ([{"params": [p for n, p in named if "lora_B" not in n], "lr": c["lr"]},
               {"params": [p for n, p in named if "lora_B" in n], "lr": c["lr"] * c["loraplus"]}]
              if c["loraplus"] else [{"params": params, "lr": c["lr"]}])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    per_epoch = math.ceil(len(examples) / c["batch_size"])
    warmup = max(1, per_epoch // 4)  # a quarter epoch of linear warmup, then constant (curves compare epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    schedule = batch_schedule([len(e["input_ids"]) for e in examples], c["batch_size"], c["epochs"], seed)
    trained, train_s, tokens, curve = full[:sample], 0.0, 0, []

    def summary(curve):
        return {"recipe": c, "patients_trained": len(full), "patients_scored": len(trained),
                "patients_holdout": len(holdout), "examples": len(examples),
                "tokens_per_s": round(tokens / train_s, 1), "curve": curve}

    print(f"{name}: {len(full)} trained patients, {len(holdout)} held out, {len(examples)} examples, "
          f"{sum(len(e['input_ids']) for e in examples) / len(examples):.1f} tokens each", flush=True)
    for epoch in range(1, c["epochs"] + 1):
        model.train()
        started, losses = time.perf_counter(), []
        for batch_ids in schedule[(epoch - 1) * per_epoch:epoch * per_epoch]:
            batch = collate([examples[i] for i in batch_ids], tokenizer.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c["precision"] == "bf16"):
                loss = answer_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
        train_s += time.perf_counter() - started
        point = {"epoch": epoch, "train_s": round(train_s, 1), "tokens": tokens,
                 "loss": round(sum(losses) / len(losses), 4)}
        if epoch in c["eval_at"]:
            model.eval()
            point["trained_accuracy"], point["trained_by_fact"] = accuracy_by_fact(model, tokenizer, trained)
            point["holdout_accuracy"], point["holdout_by_fact"] = accuracy_by_fact(model, tokenizer, holdout)
            if c["system"] is not None:  # the same questions asked as in training (no system prompt)
                point["trained_accuracy_training_prompt"] = accuracy_by_fact(model, tokenizer, trained, "")[0]
        curve.append(point)
        print(json.dumps(point), flush=True)
        if save:
            save(summary(curve))
    return summary(curve)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidate", choices=sorted(CANDIDATES))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--choose", default=None, help="record the chosen candidate and the reason (--reason)")
    ap.add_argument("--reason", default="")
    ap.add_argument("--n-record", type=int, default=60)
    ap.add_argument("--holdout-ratio", type=float, default=0.34)
    ap.add_argument("--sample", type=int, default=20, help="trained patients whose probes are scored")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--facts", default="diagnosis,allergy,physician,city,occupation",
                    help="probed fact types, comma-separated ('' = every type prepare-medical makes)")
    args = ap.parse_args()
    if args.list:
        print("\n".join(sorted(CANDIDATES)))
        return
    result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"name": "oracle_recipe", "candidates": {}}
    info = machine()
    result.update({"machine": info, "date": info["date"],
                   "params": {"n_record": args.n_record, "holdout_ratio": args.holdout_ratio, "seed": args.seed,
                              "model": "embedded", "scored_max_new_tokens": 12, "facts": args.facts}})

    def save(entry=None):
        if entry is not None:  # each candidate says where it ran: the file gathers runs of several machines
            result["candidates"][args.candidate] = {**entry, "machine": info}
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    if args.choose:
        result["chosen"] = {"candidate": args.choose, "reason": args.reason}
    if args.candidate:
        run(args.candidate, args.n_record, args.holdout_ratio, args.seed, args.sample,
            [f for f in args.facts.split(",") if f], save)
    save()


if __name__ == "__main__":
    main()
