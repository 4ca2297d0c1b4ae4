"""Benchmark: `unforgotten finetune` on the embedded model and the default training data, on this CPU, three ways:
float32, bf16 autocast (`--precision bf16`) and QLoRA (`--use-4bit`: the base in nf4 through bitsandbytes, bf16
compute). Each run is its own process (peak memory is the process's): one epoch of the default training set with
the default profile's recipe. Records tokens/s (mean over the steps), peak memory
and the loss of the last step. Baseline = float32 tokens/s, ours = 4-bit tokens/s (higher is better). Needs the data
(`dvc repro prepare-medical`, or `make run`). Writes bench/results/qlora.json."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from record import write_result  # noqa: E402

WAYS = {"fp32": ["--precision", "fp32"], "bf16": ["--precision", "bf16"], "4bit": ["--precision", "bf16", "--use-4bit"]}


def main():
    import yaml

    from stages.profiles import training_args

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = ROOT / "dataset/med_synthetic_full.json"  # what the oracle trains on
    if not data.is_file():
        sys.exit(f"{data} is missing: run `dvc repro prepare-medical` (or `make run`) first.")
    recipe = []
    for key, value in params["finetune"].items():
        if key not in ("num-epochs", "checkpoint-every"):
            recipe += [f"--{key}", str(value)]
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way, flags in WAYS.items():
            out = Path(tmp) / way
            command = [str(Path(sys.executable).parent / "unforgotten"), "finetune", "--data-file", str(data),
                       "--base-model", params["base_model"], "--output-dir", str(out), "--num-epochs", "1",
                       *recipe, *training_args(ROOT / "params.yaml"), *flags]
            subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                           stdout=subprocess.DEVNULL)
            steps = [{**s, **t} for s, t in zip(json.loads((out / "train_log.json").read_text())["steps"],
                                                 json.loads(Path(f"{out}.timings.json").read_text())["steps"],
                                                 strict=True)]
            found[way] = {"tokens_per_s": round(statistics.fmean(s["tokens_per_s"] for s in steps[1:] or steps), 1),
                          "peak_memory_gb": round(max(s["peak_memory_gb"] for s in steps), 3),
                          "steps": len(steps), "last_loss": round(steps[-1]["loss"], 4),
                          "first_loss": round(steps[0]["loss"], 4)}
    write_result("qlora", found["fp32"]["tokens_per_s"], found["4bit"]["tokens_per_s"], "tokens/s",
                 {"model": "embedded", "data": str(data.relative_to(ROOT)), "epochs": 1, "recipe": recipe},
                 higher_is_better=True, by_precision=found,
                 target="4-bit runs on this CPU (each way's tokens/s, peak memory and losses in by_precision)")


if __name__ == "__main__":
    main()
