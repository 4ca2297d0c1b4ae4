"""Benchmark 2: wall time of one unlearned model's whole `evaluate` (every metric and attack) on the default
profile, exactly as dvc.yaml runs it (evaluate-unlearned@<run>), after `make run`. The baseline is the same command on
the code of BASELINE_REV (the evaluate stage before the speed work), checked out with `git worktree` and run in the
same benchmark, side by side; both must give the same metrics. Writes bench/results/verification.json.

    python bench/verification.py [stage name, default evaluate-unlearned@npo-50-42]
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "4d9efdf"  # the last commit before the verification speed work
TOLERANCE = 1e-6


def stage_command(name):
    from dvc.repo import Repo

    (stage,) = [s for s in Repo(str(ROOT)).index.stages if getattr(s, "name", None) == name]
    return shlex.split(stage.cmd)


def baseline_args(args):
    """The command for BASELINE_REV's CLI: without --relearn-precision, which came later (that code trains the
    relearning attacks in float32 only)."""
    args = list(args)
    if "--relearn-precision" in args:
        i = args.index("--relearn-precision")
        del args[i:i + 2]
    return args


def timed_evaluate(code_dir, args, output_dir):
    """`unforgotten evaluate ...` with the package imported from code_dir (python -P: not from the working dir)."""
    args = list(args)
    args[args.index("--output-dir") + 1] = str(output_dir)
    entry = "import sys; from stages.cli import main; sys.argv[0] = 'unforgotten'; main()"
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-P", "-c", entry, *args[1:]], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started, json.loads((Path(output_dir) / "metrics.json").read_text())


def close(x, y):
    """Equal, or numbers within TOLERANCE (lists element by element; NaN equals NaN)."""
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(close(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= TOLERANCE or (x != x and y != y)
    return x == y


def differences(a, b):
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if not close(a.get(k), b.get(k))}


def main(name="evaluate-unlearned@npo-50-42"):
    args = stage_command(name)
    with tempfile.TemporaryDirectory() as tmp:
        baseline_code = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(baseline_code), BASELINE_REV], cwd=ROOT,
                       check=True)
        try:
            baseline_s, baseline_metrics = timed_evaluate(baseline_code, baseline_args(args),
                                                          Path(tmp) / "baseline-out")
            ours_s, ours_metrics = timed_evaluate(ROOT, args, Path(tmp) / "ours-out")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline_code)], cwd=ROOT, check=False)
    changed = differences(baseline_metrics, ours_metrics)
    write_result("verification", baseline_s, ours_s, "s",
                 {"stage": name, "command": " ".join(args), "baseline_rev": BASELINE_REV},
                 same_metrics=not changed, changed_metrics=changed, target="ours <= 180 s on 2 cores")


if __name__ == "__main__":
    main(*sys.argv[1:])
