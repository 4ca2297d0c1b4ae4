"""Dockerfile lint and the stage runner's command lines (a recording stand-in for the engine). The images themselves
are built and run for real by `make test-images` (tests/test_images.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "hf_fake_runner_secret_0123456789"


def test_hadolint_passes_on_every_dockerfile_at_warning_level():
    dockerfiles = sorted((ROOT / "docker").glob("*Dockerfile*"))
    assert dockerfiles
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning", *map(str, dockerfiles)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_is_justified_by_the_comment_above_it():
    lines = (ROOT / "docker/Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert lines[i - 1].startswith("#") and not lines[i - 1].startswith("# hadolint"), i + 1


def test_every_stage_target_ends_in_its_own_entrypoint():
    text = (ROOT / "docker/Dockerfile").read_text()
    for stage in ["generate", "prepare-medical", "prepare-wmdp", "finetune", "unlearn", "evaluate"]:
        block = text.split(f"FROM ${{STAGE_BASE}} AS {stage}\n")[1].split("\nFROM ")[0]
        assert block.rstrip().endswith(f'ENTRYPOINT ["unforgotten", "{stage}"]')
        assert "USER 1000" in block and f'io.unforgotten.stage="{stage}"' in block


@pytest.fixture
def engine(tmp_path):
    """Stand-ins for docker / podman / nvidia-smi that record their command line and whether HF_TOKEN reached them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls.jsonl"
    for name in ("docker", "podman"):
        script = bin_dir / name
        script.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(record)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "hf_token": os.environ.get("HF_TOKEN")}}) + "\\n")
sys.exit(3)
""")
        script.chmod(0o755)
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "sub").mkdir()

    def run(*args, runner="docker", gpus=False, **extra):
        path = f"{bin_dir}:{BIN}:/usr/bin:/bin"
        if gpus:
            gpu_dir = tmp_path / "gpu"
            gpu_dir.mkdir(exist_ok=True)
            (gpu_dir / "nvidia-smi").write_text("#!/bin/sh\n")
            (gpu_dir / "nvidia-smi").chmod(0o755)
            path = f"{gpu_dir}:{path}"
        env = {"PATH": path, "HOME": str(tmp_path), "UNFORGOTTEN_RUNNER": runner, "HF_TOKEN": SECRET, **extra}
        result = subprocess.run([str(BIN / "unforgotten"), *args], cwd=repo / "sub", env=env, capture_output=True,
                                text=True)
        calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        record.unlink(missing_ok=True)
        return result, calls

    return run, repo


def test_docker_runner_mounts_the_repository_at_its_path_and_runs_as_the_caller(engine):
    run, repo = engine
    result, calls = run("prepare-medical", "--input-file", "notes.jsonl", "--output-dir", "out")
    assert result.returncode == 3  # the engine's exit code is the stage's
    (call,) = calls
    argv = call["argv"][1:]
    assert argv[:2] == ["run", "--rm"]
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert argv[argv.index("--volume") + 1] == f"{repo}:{repo}"
    assert argv[argv.index("--workdir") + 1] == str(repo / "sub")
    image = argv.index("--entrypoint")
    assert argv[image:] == ["--entrypoint", "unforgotten", "unforgotten-prepare-medical:0.1.0", "prepare-medical",
                            "--input-file", "notes.jsonl", "--output-dir", "out"]


def test_secrets_reach_the_engine_by_name_and_never_appear_on_its_command_line(engine):
    run, _ = engine
    _, (call,) = run("generate", "--backend", "tinker")
    argv = call["argv"]
    assert argv[argv.index("--env") + 1] == "HF_TOKEN"
    assert not any(SECRET in a for a in argv)
    assert call["hf_token"] == SECRET


def test_gpu_flags_follow_the_host_and_the_engine(engine):
    run, _ = engine
    _, (plain,) = run("finetune")
    assert "--gpus" not in plain["argv"] and "--ipc=host" not in plain["argv"]
    _, (docker,) = run("finetune", gpus=True)
    assert docker["argv"][docker["argv"].index("--gpus") + 1] == "all" and "--ipc=host" in docker["argv"]
    _, (podman,) = run("finetune", runner="podman", gpus=True)
    assert "nvidia.com/gpu=all" in podman["argv"] and "--ipc=host" in podman["argv"]
    _, (off,) = run("finetune", gpus=True, UNFORGOTTEN_GPUS="none")
    assert "--gpus" not in off["argv"]


def test_a_jobs_visible_gpus_are_the_only_ones_its_container_gets(engine):
    """A scheduler (SkyPilot's job queue) gives each job its GPUs in CUDA_VISIBLE_DEVICES: the engine gets exactly
    those, so parallel stages on one multi-GPU host do not all land on GPU 0."""
    run, _ = engine
    _, (one,) = run("unlearn", gpus=True, CUDA_VISIBLE_DEVICES="3")
    assert one["argv"][one["argv"].index("--gpus") + 1] == '"device=3"'
    _, (two,) = run("evaluate", gpus=True, CUDA_VISIBLE_DEVICES="1,GPU-8f2a")
    assert two["argv"][two["argv"].index("--gpus") + 1] == '"device=1,GPU-8f2a"'
    _, (podman,) = run("evaluate", runner="podman", gpus=True, CUDA_VISIBLE_DEVICES="5,6")
    devices = [podman["argv"][i + 1] for i, a in enumerate(podman["argv"]) if a == "--device"]
    assert devices == ["nvidia.com/gpu=5", "nvidia.com/gpu=6"] and "nvidia.com/gpu=all" not in podman["argv"]
    for hidden in ("", "-1"):  # no GPU for this job
        _, (none,) = run("evaluate", gpus=True, CUDA_VISIBLE_DEVICES=hidden)
        assert "--gpus" not in none["argv"] and "--ipc=host" not in none["argv"]
    assert not any("CUDA_VISIBLE_DEVICES" in a for a in one["argv"])  # inside, the pinned GPU is device 0


def test_the_checkpoint_root_of_a_cloud_job_is_mounted_and_named_to_the_stage(engine):
    run, _ = engine
    _, (call,) = run("finetune", UNFORGOTTEN_CHECKPOINT_ROOT="/checkpoints")
    argv = call["argv"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"][1] == "/checkpoints:/checkpoints"
    assert argv[argv.index("UNFORGOTTEN_CHECKPOINT_ROOT") - 1] == "--env"
    _, (plain,) = run("finetune")
    assert not any("checkpoints" in a for a in plain["argv"])


def test_report_and_prepare_tofu_run_in_the_images_they_share_and_the_image_name_is_configurable(engine):
    run, _ = engine
    _, (report,) = run("report", "--eval-dir", "e")
    assert "unforgotten-evaluate:0.1.0" in report["argv"] and report["argv"][-3:] == ["report", "--eval-dir", "e"]
    _, (tofu,) = run("prepare-tofu", UNFORGOTTEN_IMAGE="ghcr.io/lab/unforgotten-{stage}:{version}")
    assert "ghcr.io/lab/unforgotten-prepare-wmdp:0.1.0" in tofu["argv"]


def test_inside_an_image_and_for_help_the_stage_runs_here(engine):
    run, _ = engine
    result, calls = run("prepare-medical", "--help", UNFORGOTTEN_IN_IMAGE="1")
    assert result.returncode == 0 and "--input-file" in result.stdout and calls == []
    result, calls = run("--version")
    assert result.returncode == 0 and "0.1.0" in result.stdout and calls == []


def test_an_unknown_runner_is_one_sentence_and_runs_nothing(engine):
    run, _ = engine
    result, calls = run("generate", runner="kubernetes")
    assert result.returncode != 0 and calls == []
    expected = "Error: UNFORGOTTEN_RUNNER='kubernetes' is not one of local, docker, podman, buildah."
    assert result.stderr.strip() == expected


def test_dockerignore_keeps_data_models_venv_and_the_dvc_cache_out_of_the_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"data", "dataset", "models", "outputs", ".venv", ".dvc/cache", ".git"} <= ignored


def test_the_images_install_the_torch_version_the_tests_run():
    """One torch version everywhere: the Dockerfile's default TORCH_SPEC and the Makefile's TORCH (the .venv the tests
    run in) name the same release, and the base image brings no torch of its own."""
    import re

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    image = re.search(r"^ARG TORCH_SPEC=torch==(\S+)$", dockerfile, flags=re.M).group(1)
    tests = re.search(r"^TORCH \?= torch==(\S+)$", makefile, flags=re.M).group(1)
    assert image == tests
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.M).group(1)
    assert "pytorch" not in base and "torch" not in base
    assert re.search(r"^TORCH_SPEC \?= \$\(TORCH\)$", makefile, flags=re.M)
