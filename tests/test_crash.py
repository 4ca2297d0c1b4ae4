"""`kill -9` in the middle of unlearn and evaluate (real processes): the earlier outputs stay exactly as they were,
and a rerun completes with the results of a run that was never interrupted. (generate: tests/test_generate.py;
finetune, which resumes from its checkpoint: tests/test_finetune.py.)"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_evaluate import random_adapter

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def kill_when(command, pattern, timeout=300, terminal=False):
    """Start `command`, SIGKILL its process group once its output matches `pattern`; returns that output. Fails if
    the process ended by itself first (then it was not killed in the middle). terminal: its output goes to a
    pseudo-terminal, where a stage's progress bar redraws every step (in a pipe it writes a line every 30 s)."""
    if terminal:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # tqdm draws nothing in 0 columns
        process = subprocess.Popen(command, env=ENV, start_new_session=True, stdout=slave, stderr=slave)
        os.close(slave)

        def read():
            try:
                return os.read(master, 256)
            except OSError:  # the terminal is gone with the process
                return b""
    else:
        process = subprocess.Popen(command, env=ENV, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)

        def read():
            return process.stdout.read1(256)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(read, b"")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while not re.search(pattern, b"".join(seen).decode(errors="replace")):
        assert process.poll() is None, b"".join(seen).decode(errors="replace")
        assert time.time() < deadline, "the pattern never appeared"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    reader.join(5)
    return b"".join(seen).decode(errors="replace")


def files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def earlier_output(directory):
    """What an earlier run left in `directory`, which a killed run must not touch."""
    directory.mkdir(parents=True)
    (directory / "earlier.json").write_text('{"from": "an earlier run"}\n')
    return files(directory.parent)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, tiny_model_dir):
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("crash") / "oracle", 5)


def test_unlearn_killed_midway_leaves_earlier_outputs_and_a_rerun_matches_an_unbroken_run(
        tmp_path, tiny_model_dir, medical_dir, oracle):
    def command(name):
        return [str(BIN / "unforgotten"), "unlearn", "--base-model", tiny_model_dir, "--oracle", oracle,
                "--method", "grad_diff", "--forget-file", str(medical_dir / "med_synthetic_forget10.json"),
                "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget10.json"),
                "--output-dir", str(tmp_path / name / "model"), "--trajectory-dir", str(tmp_path / name / "traj"),
                "--steps", "30", "--samples-per-step", "2", "--batch-size", "2", "--monitor-samples", "2",
                "--entropy-prompts", "2", "--max-new-tokens", "4", "--max-seq-length", "96", "--measure-every",
                "10", "--no-early-stop", "--learning-rate", "1e-4"]

    before = earlier_output(tmp_path / "broken" / "model")
    output = kill_when(command("broken"), r"unlearn grad_diff:\s+\d+%.*\| ?[1-9]\d*/30", terminal=True)
    assert "Traceback" not in output
    assert files(tmp_path / "broken") == before  # no half-written model or trajectory, the earlier file intact
    rerun = subprocess.run(command("broken"), env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    subprocess.run(command("unbroken"), env=ENV, capture_output=True, check=True, timeout=600)
    a = load_file(tmp_path / "broken/model/adapter_model.safetensors")
    b = load_file(tmp_path / "unbroken/model/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "broken/model/earlier.json").exists()  # replaced as a whole, not merged
    assert [p.name for p in (tmp_path / "broken").iterdir() if p.name.startswith(".")] == []
    trajectory = json.loads((tmp_path / "broken/traj/trajectory.json").read_text())
    assert trajectory == json.loads((tmp_path / "unbroken/traj/trajectory.json").read_text())


def test_evaluate_killed_midway_leaves_earlier_outputs_and_a_rerun_matches_an_unbroken_run(
        tmp_path, tiny_model_dir, medical_dir, oracle):
    def command(name):
        return [str(BIN / "unforgotten"), "evaluate", "--base-model", tiny_model_dir, "--adapter", oracle,
                "--run-name", "oracle", "--forget-file", str(medical_dir / "med_synthetic_forget20.json"),
                "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget20.json"),
                "--holdout-file", str(medical_dir / "med_synthetic_holdout.json"), "--output-dir",
                str(tmp_path / name / "eval"), "--max-new-tokens", "6", "--answer-tokens", "5", "--retain-samples",
                "4", "--max-seq-length", "96", "--batch-size", "4", "--leak-samples", "2", "--bootstrap", "50",
                "--attacks", "--relearn-steps", "0", "--relearn-steps", "20", "--relearn-learning-rate", "0.01"]

    before = earlier_output(tmp_path / "broken" / "eval")
    output = kill_when(command("broken"), r"knowledge probes: \d+")
    assert "Traceback" not in output
    assert files(tmp_path / "broken") == before
    rerun = subprocess.run(command("broken"), env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    subprocess.run(command("unbroken"), env=ENV, capture_output=True, check=True, timeout=600)
    assert files(tmp_path / "broken/eval") == files(tmp_path / "unbroken/eval")
