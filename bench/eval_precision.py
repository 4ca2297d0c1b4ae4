"""Benchmark: evaluate's measurements of the oracle (uncertainty, knowledge probes, membership inference) in float32
vs under bf16 autocast (evaluate --precision bf16, the CPU default; a GPU evaluates a bf16 model), side by side on
the default data. Agreement: the share of probes whose greedy answer is judged alike, the largest difference of a
split's accuracy, of a membership AUC and of the mean entropy. Needs `make run` first (models/oracle-s42).
Writes bench/results/eval_precision.json."""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from record import write_result  # noqa: E402
from scaling import measure_settings  # noqa: E402


def measured(model, tokenizer, sets, settings, bf16):
    import torch

    from stages.evaluate.measurements import measure

    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        run = measure(model, tokenizer, sets, None, settings, attacks=False, progress=lambda _: None)
    return time.perf_counter() - started, run


def main():
    import yaml

    from stages.common.models import load_model, load_tokenizer
    from stages.common.records import read_records
    from stages.evaluate.probes import SPLITS
    from stages.evaluate.world import world_records

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    e, forget, seed = params["evaluate"], params["reference_forget"], params["seeds"][0]
    adapter = ROOT / f"models/oracle-s{seed}"
    if not adapter.is_dir():
        sys.exit(f"{adapter} is missing: run `make run` first.")
    data = ROOT / "dataset"
    sets = {"forget": read_records(data / f"med_synthetic_forget{forget}.json", scored=True),
            "retain": read_records(data / f"med_synthetic_full_minus_forget{forget}.json",
                                   scored=True)[:e["retain-samples"]],
            "holdout": read_records(data / "med_synthetic_holdout.json", scored=True), "world": world_records()}
    settings = measure_settings(e, seed)
    tokenizer = load_tokenizer(params["base_model"])
    model = load_model(params["base_model"], adapter=str(adapter)).eval()
    fp32_s, fp32 = measured(model, tokenizer, sets, settings, bf16=False)
    bf16_s, bf16 = measured(model, tokenizer, sets, settings, bf16=True)
    a, b = fp32["metrics"], bf16["metrics"]
    alike = [x["correct"] == y["correct"] for x, y in zip(fp32["probes"], bf16["probes"], strict=True)]
    accuracy_diff = {s: round(abs(a[f"{s}_qa_accuracy"] - b[f"{s}_qa_accuracy"]), 4) for s in SPLITS}
    auc_diff = {k: round(abs(a[k] - b[k]), 4) for k in a if k.startswith("mia_") and k.endswith("_auc")}
    write_result("eval_precision", fp32_s, bf16_s, "s",
                 {"model": f"embedded + models/oracle-s{seed}", "probes": len(alike), "mia_examples": len(bf16["mia"]),
                  "prompts": len(bf16["per_prompt"]), "batch_size": e["batch-size"]},
                 probes_judged_alike=f"{sum(alike)} of {len(alike)}", accuracy_abs_diff=accuracy_diff,
                 mia_auc_abs_diff=auc_diff, mean_entropy_abs_diff=round(abs(a["mean_entropy"] - b["mean_entropy"]), 4),
                 forget_accuracy={"fp32": a["forget_qa_accuracy"], "bf16": b["forget_qa_accuracy"]},
                 target="ratio > 1 with accuracies and AUCs within their intervals' width")


if __name__ == "__main__":
    main()
