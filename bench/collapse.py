"""The prototype's v1 -> v2 finding on the embedded model: gradient ascent without a stopping rule collapses; with the
retain-perplexity monitor it stops before collapse. Needs the default pipeline's oracle (`make run`).
Writes bench/results/collapse.json and the two trajectory plots."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
from machine import machine  # noqa: E402

from stages.common.plots import trajectories_plot  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SETTINGS = {"method": "grad_ascent", "steps": 15, "learning-rate": 2e-3, "samples-per-step": 8, "batch-size": 8,
            "measure-every": 3, "monitor-samples": 16, "entropy-prompts": 9, "max-seq-length": 192,
            "stop-perplexity-ratio": 2.5}


def run(name, extra, tmp):
    args = [str(Path(sys.executable).parent / "unforgotten"), "unlearn", "--model", str(ROOT / "models/oracle-s42"),
            "--forget-file", str(ROOT / "dataset/med_synthetic_forget50.json"),
            "--retain-file", str(ROOT / "dataset/med_synthetic_full_minus_forget50.json"),
            "--output-dir", str(tmp / name), *extra]
    for key, value in SETTINGS.items():
        args += [f"--{key}", str(value)]
    subprocess.run(args, check=True)
    trajectory = json.loads((tmp / name / "trajectory.json").read_text())
    summary = json.loads((tmp / name / "summary.json").read_text())
    trajectories_plot({name: (trajectory, summary)}, RESULTS / f"collapse_{name}.png")
    final = trajectory[-2] if summary["stopped_early"] else trajectory[-1]
    entropies = [t["entropy"] for t in trajectory if t["entropy"] is not None]
    return {"steps_run": summary["steps_run"], "stop_reason": summary["stop_reason"],
            "start_perplexity": trajectory[0]["perplexity"], "max_perplexity": max(t["perplexity"] for t in trajectory),
            "kept_model_perplexity": final["perplexity"], "start_entropy": entropies[0],
            "min_entropy": min(entropies), "last_entropy": entropies[-1], "base_entropy": summary["base_entropy"],
            "trajectory": trajectory}


def main():
    with tempfile.TemporaryDirectory() as tmp:
        v1 = run("v1_no_early_stop", ["--no-early-stop"], Path(tmp))
        v2 = run("v2_monitored", [], Path(tmp))
    result = {"name": "collapse", "model": "embedded SmolLM2-135M-Instruct, LoRA oracle of `make run`",
              "params": SETTINGS, "v1_no_early_stop": v1, "v2_monitored": v2, "machine": machine()}
    (RESULTS / "collapse.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in (("v1 (no early stop)", v1), ("v2 (monitored)", v2)):
        print(f"{name}: {r['steps_run']} steps, perplexity {r['start_perplexity']:.2f} -> max "
              f"{r['max_perplexity']:.2f} (kept model {r['kept_model_perplexity']:.2f}), forget entropy "
              f"{r['start_entropy']:.3f} -> {r['last_entropy']:.3f}; {r['stop_reason'] or 'ran all steps'}")


if __name__ == "__main__":
    main()
