"""Shared fixtures: a tiny random Llama (real SmolLM2 tokenizer, random weights from a config) and small data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing file must fail fast, never wait on a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

# The image tests need the images that `make test-images` builds first (as root, with buildah); that target sets this.
collect_ignore = [] if os.environ.get("UNFORGOTTEN_TEST_IMAGES") else ["test_images.py"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama with the embedded model's tokenizer, saved like any local model directory."""
    from tests.micro import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def notes_file(tmp_path_factory):
    """40 template notes from the real generate command."""
    from click.testing import CliRunner

    from stages.cli import main

    path = tmp_path_factory.mktemp("notes") / "notes.jsonl"
    result = CliRunner().invoke(main, ["generate", "--n-record", "40", "--seed", "7", "--output", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="session")
def medical_dir(tmp_path_factory, notes_file):
    """prepare-medical's outputs for the 40 notes."""
    from click.testing import CliRunner

    from stages.cli import main

    out = tmp_path_factory.mktemp("dataset")
    result = CliRunner().invoke(main, ["prepare-medical", "-i", str(notes_file), "-o", str(out), "--seed", "7"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def micro_repo(tmp_path_factory, tiny_model_dir):
    """The real dvc.yaml reproduced once on the micro profile, with fake secrets in the environment (which
    test_pipeline then looks for everywhere): (repository, stdout and stderr of `dvc repro`)."""
    from tests.micro import BIN, FAKE_SECRETS, make_micro_repo, run

    repo = make_micro_repo(tmp_path_factory.mktemp("pipeline"), tiny_model_dir)
    result = run([str(BIN / "dvc"), "repro"], repo, **FAKE_SECRETS)
    return repo, result.stdout + result.stderr
