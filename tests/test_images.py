"""The stage images, built for real by `make test-images` (buildah on a debootstrapped Debian base, CPU torch) and run
with buildah: configuration, every stage's --help, real generate / prepare-medical runs on a mounted directory as a
non-root user, dvc stages run through the stage runner, and a scan of every layer and config for secrets."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages import __version__, table
from tests.micro import dvc, make_micro_repo

pytestmark = pytest.mark.images

BIN = Path(sys.executable).parent
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
STAGES = table.images()
# Passed to the image builds by `make test-images` (as --build-arg HF_TOKEN and in the builder's environment).
BUILD_SECRET = os.environ.get("UNFORGOTTEN_TEST_BUILD_SECRET", "")
RUN_SECRET = "hf_fake_run_time_secret_9f8e7d6c5b4a"


def image(stage):
    return f"localhost/unforgotten-{stage}:{__version__}"


def buildah(*args, **kwargs):
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def containers():
    """One working container per image, reused by the tests of this module and removed at the end."""
    made = {}

    def get(stage):
        if stage not in made:
            result = buildah("from", "--pull=never", "--quiet", image(stage))
            assert result.returncode == 0, f"{image(stage)} is missing: run `make test-images`\n{result.stderr}"
            made[stage] = result.stdout.strip()
        return made[stage]

    yield get
    for container in made.values():
        buildah("rm", container)


def run_in(container, *command, volume=None, user=None):
    flags = ["--isolation", "chroot"]
    if volume:
        flags += ["--volume", volume]
    if user:
        flags += ["--user", user]
    return buildah("run", *flags, container, "--", *command)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_image_has_its_entrypoint_labels_non_root_user_and_cache_volume(stage):
    result = buildah("inspect", "--type", "image", image(stage))
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)["OCIv1"]["config"]
    assert config["Entrypoint"] == ["unforgotten", stage]
    assert config["User"] == "1000"
    assert config["WorkingDir"] == "/work"
    assert "/cache" in config["Volumes"]
    assert "HF_HOME=/cache/huggingface" in config["Env"]
    labels = config["Labels"]
    assert labels["io.unforgotten.stage"] == stage
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.source"] and labels["org.opencontainers.image.revision"]


@pytest.mark.parametrize("stage, image_stage", [(s, s) for s in STAGES]
                         + [("prepare-tofu", "prepare-wmdp"), ("report", "evaluate")])
def test_every_stage_answers_help_inside_its_image(containers, stage, image_stage):
    result = run_in(containers(image_stage), "unforgotten", stage, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: unforgotten {stage}" in result.stdout


def test_each_image_holds_only_its_stage_extras(containers):
    def has(stage, module):
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return run_in(containers(stage), "python3", "-c", code).returncode == 0

    assert has("generate", "tinker") and not has("prepare-medical", "tinker")
    assert has("prepare-wmdp", "datasets") and not has("finetune", "datasets")
    assert has("evaluate", "lm_eval") and has("evaluate", "scipy") and not has("unlearn", "lm_eval")
    assert not any(has(stage, "dvc") for stage in STAGES)
    assert all(has(stage, "torch") and has(stage, "bitsandbytes") for stage in STAGES)  # the core install


def test_generate_and_prepare_medical_run_in_their_images_as_a_non_root_user_on_a_mounted_directory(
        containers, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    volume = f"{shared}:/data"
    whoami = run_in(containers("generate"), "id", "-u", volume=volume)
    assert whoami.stdout.strip() == "1000"
    made = run_in(containers("generate"), "unforgotten", "generate", "--backend", "template", "--n-record", "30",
                  "--seed", "7", "--output", "/data/notes.jsonl", volume=volume)
    assert made.returncode == 0, made.stderr
    prepared = run_in(containers("prepare-medical"), "unforgotten", "prepare-medical", "--seed", "7",
                      "--input-file", "/data/notes.jsonl", "--output-dir", "/data/dataset", volume=volume)
    assert prepared.returncode == 0, prepared.stderr
    outputs = [shared / "notes.jsonl", *sorted((shared / "dataset").iterdir())]
    assert {p.name for p in outputs} >= {"notes.jsonl", "med_synthetic_full.json", "med_synthetic_forget10.json",
                                         "med_synthetic_full_minus_forget10.json", "med_synthetic_holdout.json"}
    assert all(p.stat().st_uid == 1000 for p in outputs)
    assert len((shared / "notes.jsonl").read_text().splitlines()) == 30
    # The same commands in .venv give the same bytes.
    local = tmp_path / "local"
    subprocess.run([str(BIN / "unforgotten"), "generate", "--backend", "template", "--n-record", "30", "--seed", "7",
                    "--output", str(local / "notes.jsonl")], check=True, capture_output=True)
    subprocess.run([str(BIN / "unforgotten"), "prepare-medical", "--seed", "7", "--input-file",
                    str(local / "notes.jsonl"), "--output-dir", str(local / "dataset")], check=True,
                   capture_output=True)
    assert (local / "notes.jsonl").read_bytes() == (shared / "notes.jsonl").read_bytes()
    for path in (shared / "dataset").iterdir():
        assert (local / "dataset" / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.fixture(scope="module")
def runner_repo(tmp_path_factory):
    """The project's pipeline files in a fresh repository, its data stages reproduced in their images."""
    repo = make_micro_repo(tmp_path_factory.mktemp("runner"), model_dir="embedded")
    output = dvc(repo, "repro", "prepare-medical", UNFORGOTTEN_RUNNER="buildah", HF_TOKEN=RUN_SECRET,
                 STORAGE_DRIVER=BUILDAH[2])
    return repo, output


def test_the_runner_runs_dvc_stages_in_their_images_and_switching_it_keeps_the_cache(runner_repo):
    repo, output = runner_repo
    assert "Running stage 'generate'" in output and "Running stage 'prepare-medical'" in output
    notes = repo / "dataset/synthetic_soap_notes.jsonl"
    assert len(notes.read_text().splitlines()) == 30
    lock = (repo / "dvc.lock").read_text()
    # Back to .venv: nothing to do, and a forced local rerun reproduces the same outputs, so the same lock.
    assert "generate" not in dvc(repo, "status", "prepare-medical")
    assert "Running stage" not in dvc(repo, "repro", "prepare-medical")
    dvc(repo, "repro", "--force", "prepare-medical", UNFORGOTTEN_RUNNER="local")
    assert (repo / "dvc.lock").read_text() == lock


def scan_blob(blob, needles, found):
    """Fail if any needle is in the blob (read gunzipped when it is gzip), counting the known strings seen."""
    with open(blob, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(blob, "rb") as f:
        tail = b""
        while chunk := f.read(1 << 24):
            window = tail + chunk
            assert not any(n in window for n in needles), f"secret in blob {blob.name}"
            for known in found:
                found[known] += known in window
            tail = window[-64:]


def test_no_image_layer_or_config_contains_a_secret_passed_at_build_or_run_time(runner_repo, tmp_path):
    assert BUILD_SECRET, "make test-images passes UNFORGOTTEN_TEST_BUILD_SECRET to the builds and to this test"
    needles = [BUILD_SECRET.encode(), RUN_SECRET.encode()]
    # The scan reads what it should: the stage labels (configs) and the project's code (layers) are found.
    found = {b"io.unforgotten.stage": 0, b"def run_in_buildah": 0}
    scanned = set()
    for stage in STAGES:  # one image at a time (disk: one uncompressed copy); shared layers are scanned once
        layout = tmp_path / f"oci-{stage}"
        result = buildah("push", "--quiet", "--disable-compression", image(stage), f"oci:{layout}:{stage}")
        assert result.returncode == 0, result.stderr
        blobs = [b for b in sorted((layout / "blobs/sha256").iterdir()) if b.name not in scanned]
        assert blobs or scanned, f"nothing to scan in {image(stage)}"
        for blob in blobs:
            scan_blob(blob, needles, found)
            scanned.add(blob.name)
        shutil.rmtree(layout)
    assert len(scanned) > 2 * len(STAGES)  # manifests, configs and layers
    assert all(found.values()), found
    # Nor in what the runner's stages wrote.
    repo, _ = runner_repo
    for path in [repo / "dvc.lock", *(repo / "dataset").rglob("*")]:
        if path.is_file():
            assert RUN_SECRET.encode() not in path.read_bytes(), path
