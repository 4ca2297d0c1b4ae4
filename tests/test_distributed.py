"""Multi-process training for real, on this CPU: two processes under torch.distributed (gloo, through accelerate's
MULTI_CPU) run finetune as DDP; with the same global batch as one process (2 processes x 1 example vs 1 process x 2
micro-batches of 1) they log the same loss curve and save the same adapter, to float tolerance."""

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

BIN = Path(sys.executable).parent
TOLERANCE = 1e-5  # the gradient all-reduce sums in another order than one process's accumulation


def finetune(out, data, model, *extra, processes=1):
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
              if processes > 1 else [])
    command = [*launch, str(BIN / "unforgotten"), "finetune", "--data-file", str(data), "--base-model", model,
               "--output-dir", str(out), "--num-epochs", "2", "--batch-size", "1", "--learning-rate", "5e-3",
               "--max-seq-length", "96", "--precision", "fp32", "--lora-rank", "4", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_process_ddp_finetune_equals_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir,
                                                                               medical_dir):
    data = medical_dir / "med_synthetic_forget10.json"  # 4 examples x 2 epochs: 8 micro-batches, 4 steps
    one = tmp_path / "one"
    finetune(one, data, tiny_model_dir, "--gradient-accumulation-steps", "2")
    two = tmp_path / "two"
    output = finetune(two, data, tiny_model_dir, "--gradient-accumulation-steps", "1", processes=2)
    assert output.count("finetune: 4 steps") == 1  # each process its half; the main process alone reports
    steps = [json.loads((d / "train_log.json").read_text())["steps"] for d in (one, two)]
    assert len(steps[0]) == len(steps[1]) == 4
    for a, b in zip(*steps, strict=True):
        assert abs(a["loss"] - b["loss"]) <= TOLERANCE * abs(a["loss"]), (a, b)
        assert a["learning_rate"] == b["learning_rate"]
    adapters = [load_file(d / "adapter_model.safetensors") for d in (one, two)]
    assert adapters[0].keys() == adapters[1].keys()
    assert max(float((adapters[0][k] - adapters[1][k]).abs().max()) for k in adapters[0]) <= TOLERANCE
    assert any(float(t.abs().max()) > 0 for k, t in adapters[1].items() if "lora_B" in k)  # it trained
