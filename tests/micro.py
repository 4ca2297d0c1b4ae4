"""The micro profile: the project's real pipeline files in a fresh git repository, with a tiny model and tiny
sizes, so `dvc repro` runs every stage in about a minute. Shared by the pipeline, remote and experiment tests."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Top-level keys, so the tests' stage and run names do not follow the default profile's choices.
MICRO_TOP = {"forget_sets": ["10"], "reference_forget": "20", "seeds": [42], "max_seq_length": 96}
MICRO = {
    "generate": {"n-record": 30},
    "prepare_medical": {"holdout-ratio": 0.10},
    "finetune": {"num-epochs": 1, "batch-size": 4, "learning-rate": 0.005, "lora-top-layers": 1},
    "unlearn": {"steps": 2, "samples-per-step": 2, "batch-size": 2, "monitor-samples": 3, "entropy-prompts": 2,
                "max-new-tokens": 4, "measure-every": 1, "learning-rate": 0.005},
    # float32: test_pipeline recomputes the entropies with an independent float32 loop to 1e-4 (bf16 evaluation:
    # test_evaluate.py)
    "evaluate": {"precision": "fp32", "max-new-tokens": 6, "answer-tokens": 4, "retain-samples": 3,
                 "max-seq-length": 96, "bootstrap": 50},
    "attacks": {"relearn-steps": [0, 2], "leak-samples": 2},
}
# Credentials a stage could see in a real run; fake, so a test can look for them in everything the run left.
FAKE_SECRETS = {"HF_TOKEN": "hf_fake_token_for_the_secret_scan_0123",
                "TINKER_API_KEY": "tml-fake-tinker-key-4f3e2d1c",
                "AWS_ACCESS_KEY_ID": "AKIA_FAKE_KEY_FOR_THE_SCAN",
                "AWS_SECRET_ACCESS_KEY": "fakeSecretKeyForTheScan/abcdefghij0123"}
PIPELINE_FILES = ["dvc.yaml", "data.dvc", ".dvc/config", ".dvc/.gitignore", ".gitignore", ".dvcignore"]


def run(command, cwd, check=True, timeout=900, **extra_env):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra_env}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def dvc(repo, *args, check=True, **extra_env):
    return run([str(BIN / "dvc"), *args], repo, check=check, **extra_env).stdout


def git(repo, *args):
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], repo).stdout


def commit(repo, message, *paths):
    """Stage `paths` (everything when none) and commit them, if anything changed: the session's micro repository is
    shared, and a test earlier in the run may have committed the same files."""
    git(repo, "add", *(paths or ["-A"]))
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode:  # 1: something staged
        git(repo, "commit", "-qm", message)


def make(repo, *args, check=True):
    """The project's Makefile, run in `repo` with the project's .venv."""
    return run(["make", "--no-print-directory", "-C", str(repo), "-f", str(ROOT / "Makefile"),
                f"VENV={BIN.parent}", *args], repo, check=check)


def write_tiny_model(path):
    """A 2-layer Llama with the embedded model's tokenizer and seeded random weights, saved in `path` like any local
    model directory: the micro profile's base model. Returns str(path)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stages.common.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_custom_code_model(path, model_dir):
    """A copy of the model in `model_dir` that ships its own Python code (custom_llama.py, named by config.json's
    auto_map), as hub models with trust_remote_code do. Returns path."""
    import json
    import shutil

    shutil.copytree(model_dir, path)
    (path / "custom_llama.py").write_text(
        "from transformers import LlamaForCausalLM\n\n\nclass CustomLlama(LlamaForCausalLM):\n    custom = True\n")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "custom_llama.CustomLlama"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def make_micro_repo(repo, model_dir):
    for name in PIPELINE_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "profiles", repo / "profiles")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base_model"] = model_dir
    params.update(MICRO_TOP)
    for section, values in MICRO.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "data").mkdir()
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "micro")
    return repo
