"""`make gpu-check` (bench/gpu_check.py) is ready for a GPU: its parts run here at toy sizes (--smoke), and its MFU
is the stated formula, checked by hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_every_part_runs_at_toy_sizes_on_this_machine(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--output", str(out)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    toy = found["lora_throughput"]["toy"]
    assert toy["tokens_per_s"] > 0 and toy["params_lora"] > 0 and toy["params_frozen"] > toy["params_lora"]
    qlora = found["qlora_step"]
    assert qlora["lora_finite"] and qlora["layers_4bit"] == 2 * 7  # q, k, v, o, gate, up, down in each layer
    assert found["evaluate"]["tokens_per_s"] > 0 and found["evaluate"]["probes"] == 8


def test_without_a_gpu_the_full_check_is_one_sentence():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and result.stderr.strip().endswith("runs toy sizes anywhere).")


def test_mfu_is_the_stated_formula_and_the_peak_comes_from_the_device_name():
    from gpu_check import mfu, peak_of

    # 8B shape: 32 layers, hidden 4096; 1000 tokens/s at sequence 1024 on a 989 TFLOP/s part
    expected = 1000 * (4 * 7.5e9 + 6 * 2e7 + 12 * 32 * 4096 * 1024) / 989e12
    assert mfu(1000, 7.5e9, 2e7, "8b", 1024, 989.0) == pytest.approx(expected)
    assert peak_of("NVIDIA H100 80GB HBM3") == 989.0 and peak_of("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_of("cpu") is None and mfu(1000, 1, 1, "8b", 1024, None) is None
