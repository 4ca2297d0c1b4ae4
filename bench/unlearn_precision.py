"""Benchmark: unlearn in float32 vs bf16 autocast (`unforgotten unlearn --precision bf16`) on this CPU, each method of
params.yaml from the default pipeline's oracle with the default profile's settings for STEPS steps (early stop off,
so both run every step): seconds, and each step's loss side by side (the largest relative difference). Baseline =
float32's seconds, ours = bf16's. Needs `make run` first (models/oracle-s<seed>, the data). Writes
bench/results/unlearn_precision.json."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from record import write_result  # noqa: E402

STEPS = 6


def main():
    import yaml

    from stages.profiles import training_args

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    seed, forget, retain = params["seeds"][0], params["forget_sets"][0], params["reference_forget"]
    oracle = ROOT / f"models/oracle-s{seed}"
    if not oracle.is_dir():
        sys.exit(f"{oracle} is missing: run `make run` first.")
    settings = []
    for key, value in params["unlearn"].items():
        if key not in ("steps", "early-stop") and not isinstance(value, bool):
            settings += [f"--{key}", str(value)]
    seconds, found = {"fp32": 0.0, "bf16": 0.0}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in params["methods"]:
            losses = {}
            for precision in ("fp32", "bf16"):
                out = Path(tmp) / method / precision
                data = ROOT / "dataset"
                command = [str(Path(sys.executable).parent / "unforgotten"), "unlearn", "--oracle", str(oracle),
                           "--method", method, "--forget-file", str(data / f"med_synthetic_forget{forget}.json"),
                           "--retain-file", str(data / f"med_synthetic_full_minus_forget{retain}.json"),
                           "--output-dir", str(out), *settings, *training_args(ROOT / "params.yaml"),
                           "--steps", str(STEPS), "--no-early-stop", "--seed", str(seed), "--precision", precision]
                started = time.perf_counter()
                subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                seconds[precision] += time.perf_counter() - started
                losses[precision] = [e["loss"] for e in json.loads((out / "trajectory.json").read_text())[1:]]
            found[method] = {"loss_fp32": [round(x, 4) for x in losses["fp32"]],
                             "loss_bf16": [round(x, 4) for x in losses["bf16"]],
                             "max_relative_loss_difference": round(max(
                                 abs(a - b) / max(abs(a), 1e-9) for a, b in zip(losses["fp32"], losses["bf16"],
                                                                                 strict=True)), 4)}
    write_result("unlearn_precision", seconds["fp32"], seconds["bf16"], "s",
                 {"model": f"embedded + models/oracle-s{seed}", "forget_set": forget, "steps": STEPS,
                  "methods": params["methods"]}, by_method=found,
                 target="ratio > 1 with every loss within bf16's rounding of float32's: then bf16 is the CPU default")


if __name__ == "__main__":
    main()
