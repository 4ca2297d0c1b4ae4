"""Benchmark: the quantization attack's two methods side by side on the embedded model, on the default pipeline's
unlearned models (after `make run`): bitsandbytes' own layers in memory (evaluate --quant-method bitsandbytes, the
default: LLM.int8, nf4, fp4) against round-to-nearest group-wise weights (--quant-method rtn: 8 and 4 bits).
For each unlearned model and format: accuracy on the forget probes F, the answers the quantization brings back (wrong
unquantized, right quantized), and the seconds it takes. Baseline = rtn's total time, ours = bitsandbytes'.
Writes bench/results/quant_methods.json."""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from record import write_result  # noqa: E402

FORMATS = [("rtn", 8, None), ("rtn", 4, None), ("bitsandbytes", 8, None), ("bitsandbytes", 4, "nf4"),
           ("bitsandbytes", 4, "fp4")]


def main():
    import torch
    import yaml

    from stages.common.models import load_model, load_tokenizer, pick_device, resolve_precision
    from stages.common.records import read_records
    from stages.evaluate.attacks import bnb_quantized_accuracy, quantized_accuracy
    from stages.evaluate.probes import accuracy

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    e, seed = params["evaluate"], params["seeds"][0]
    runs = [f"{m}-f{f}-s{seed}" for m in params["methods"] for f in params["forget_sets"]]
    missing = [r for r in runs if not (ROOT / "models/unlearn" / r).is_dir()]
    if missing:
        sys.exit(f"models/unlearn/{missing[0]} is missing: run `make run` first.")
    tokenizer = load_tokenizer(params["base_model"])
    precision = resolve_precision(e.get("precision", "auto"), pick_device()[0])
    found, seconds = {}, {"rtn": 0.0, "bitsandbytes": 0.0}
    for run in runs:
        forget = run.split("-f")[1].split("-s")[0]
        probes = [p for r in read_records(ROOT / f"dataset/med_synthetic_forget{forget}.json", scored=True)
                  for p in r["probes"]]
        model = load_model(params["base_model"], adapter=str(ROOT / "models/unlearn" / run)).eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            plain = accuracy(model, tokenizer, probes, e["answer-tokens"], e["batch-size"])
            rows = {"unquantized": {"accuracy": round(sum(plain) / len(plain), 4)}}
            for method, bits, kind in FORMATS:
                started = time.perf_counter()
                if method == "rtn":
                    correct = quantized_accuracy(model, tokenizer, probes, bits, e["answer-tokens"],
                                                 e.get("quant-group-size", 64), e["batch-size"])
                else:
                    correct = bnb_quantized_accuracy(model, tokenizer, probes, bits, e["answer-tokens"],
                                                     kind or "nf4", e["batch-size"])
                took = time.perf_counter() - started
                seconds[method] += took
                rows[f"{method} {bits}-bit" + (f" {kind}" if kind else "")] = {
                    "accuracy": round(sum(correct) / len(correct), 4),
                    "answers_recovered": sum(c and not p for c, p in zip(correct, plain, strict=True)),
                    "answers_lost": sum(p and not c for c, p in zip(correct, plain, strict=True)),
                    "seconds": round(took, 1)}
        found[run] = {"probes": len(probes), **rows}
    write_result("quant_methods", seconds["rtn"], seconds["bitsandbytes"], "s",
                 {"model": "embedded", "runs": runs, "precision": precision, "answer_tokens": e["answer-tokens"],
                  "batch_size": e["batch-size"], "rtn_group_size": e.get("quant-group-size", 64)},
                 by_run=found, target="bitsandbytes (three formats: int8, nf4, fp4) against rtn (two: 8 and 4 bits); "
                                      "time ratio < 1 means bitsandbytes takes longer")


if __name__ == "__main__":
    main()
