"""Benchmark 4: `make run` on a fresh clone of this commit (set-up, every stage of the default profile on the
embedded model), then `make run` again, which must find everything cached. Baseline = the first run, ours = the
no-op rerun, both wall-clock seconds. Also records that the clone's headline metrics equal this checkout's and that
`dvc status` and `git status` are clean afterwards, and each stage's seconds (from its outputs' modification times).
Writes bench/results/pipeline.json.

    python bench/pipeline.py [--keep DIR]    (about 45 min on 2 cores; --keep leaves the clone in DIR)
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = "outputs/report/headline.json"


def timed(cmd, cwd, log):
    started = time.perf_counter()
    with open(log, "a") as out:
        subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def stage_seconds(clone, started):
    """Each stage's seconds, from its outputs' modification times (dvc.lock lists them): a stage ends when its
    last output is written and starts when the one before it ended (the first: when `dvc repro` started)."""
    import yaml

    lock = yaml.safe_load((Path(clone) / "dvc.lock").read_text())["stages"]
    ends = {}
    for name, stage in lock.items():
        paths = [Path(clone) / out["path"] for out in stage.get("outs", [])]
        files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
        if files:
            ends[name] = max(f.stat().st_mtime for f in files)
    seconds, previous = {}, started
    for name, end in sorted(ends.items(), key=lambda kv: kv[1]):
        seconds[name] = round(end - previous, 1)
        previous = end
    return seconds


def main(keep=None):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="unforgotten-pipeline-"))
    try:
        clone, log = tmp / "clone", tmp / "make-run.log"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        first = timed(["make", "run"], clone, log)
        started = (clone / ".venv/.installed").stat().st_mtime  # make run's set-up ends, dvc repro starts
        stages = stage_seconds(clone, started)
        again = timed(["make", "run"], clone, log)
        status = subprocess.run([str(clone / ".venv/bin/dvc"), "status", "--quiet"], cwd=clone,
                                env={**os.environ, "PATH": f"{clone / '.venv/bin'}:{os.environ['PATH']}"})
        # the committed lock reproduced: nothing for git to see (False when this run records a new lock)
        git_clean = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True,
                                   check=True).stdout == ""
        ours_headline = (ROOT / HEADLINE).read_bytes() if (ROOT / HEADLINE).exists() else None
        same = None if ours_headline is None else ours_headline == (clone / HEADLINE).read_bytes()  # None: none here
    except subprocess.CalledProcessError:
        print(f"make run failed on the fresh clone; its log: {log}", file=sys.stderr)
        raise
    else:
        if keep:
            shutil.move(str(clone), keep)
        shutil.rmtree(tmp, ignore_errors=True)
    write_result("pipeline", first, again, "s", {"commit": commit, "command": "make run", "profile": "default"},
                 fresh_run_s=round(first, 1), noop_rerun_s=round(again, 2), dvc_status_clean=status.returncode == 0,
                 git_status_clean=git_clean,
                 headline_equals_checkout=same, stage_s=stages,
                 setup_s=round(first - sum(stages.values()), 1),
                 stage_s_source="each stage's last output's modification time (bench/pipeline.py stage_seconds)")


if __name__ == "__main__":
    main(sys.argv[2] if sys.argv[1:2] == ["--keep"] else None)
