"""`unforgotten verify`: a model unlearned elsewhere, evaluated against the micro pipeline's references exactly as
the pipeline evaluates its own unlearned runs; a model the test writes, and a PEFT adapter served by the loopback
hub (tests/fake_hub.py)."""

import csv
import json
import os
import shutil
import subprocess

import pytest

from tests.fake_hub import FakeHub
from tests.micro import BIN

pytestmark = pytest.mark.pipeline


def verify(repo, *args, **env):
    environment = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    result = subprocess.run([str(BIN / "unforgotten"), "verify", *args], cwd=repo, env=environment,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def results(run):
    """Every number of an evaluation (its metrics.json) but its run name."""
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k != "run"}


@pytest.fixture(scope="module")
def references(micro_repo, tmp_path_factory):
    """A copy of the micro pipeline's evaluations, so the runs verify adds stay out of the shared repository."""
    repo, _ = micro_repo
    evals = tmp_path_factory.mktemp("verify") / "eval"
    shutil.copytree(repo / "outputs/eval", evals)
    return repo, evals


def test_a_model_the_test_writes_gets_the_pipelines_numbers_and_verdict(references, tmp_path, tiny_model_dir):
    """A whole model written here: the micro pipeline's grad_ascent adapter merged into the base and saved. verify
    gives it the metrics and verdict the pipeline's own evaluation gave that adapter, number for number."""
    from stages.common.models import load_model, load_tokenizer

    repo, evals = references
    written = tmp_path / "merged-grad-ascent"
    load_model(tiny_model_dir, adapter=str(repo / "models/unlearn/grad_ascent-f10-s42")).save_pretrained(written)
    load_tokenizer(tiny_model_dir).save_pretrained(written)  # a whole model directory carries its tokenizer
    out = verify(repo, "--model", str(written), "--eval-dir", str(evals))
    run = evals / "merged-grad-ascent"
    assert "evaluate merged-grad-ascent:" in out and "->" in out
    metrics = json.loads((run / "metrics.json").read_text())
    pipeline = json.loads((evals / "grad_ascent-f10-s42/metrics.json").read_text())
    assert metrics["verdict"] == pipeline["verdict"] and metrics["verdict_rule"] == pipeline["verdict_rule"]
    mine, theirs = results(run), results(evals / "grad_ascent-f10-s42")
    assert sorted(mine) == sorted(theirs) and len(mine) > 100
    for key, value in mine.items():  # merged and saved: the same weights, up to float rounding
        if isinstance(value, float):
            assert value == pytest.approx(theirs[key], rel=1e-4, abs=1e-6, nan_ok=True), key
        else:
            assert value == theirs[key], key
    assert json.loads((run / "run.json").read_text()) == {"run": "merged-grad-ascent", "method": "merged-grad-ascent",
                                                           "forget_set": "10", "seed": 42}


def test_a_peft_adapter_on_the_hub_is_fetched_verified_and_reported(references, tmp_path):
    repo, evals = references
    adapter = repo / "models/unlearn/npo-f10-s42"
    environment = {"HF_ENDPOINT": "", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": None,
                   "HF_HUB_DISABLE_TELEMETRY": "1", "UNFORGOTTEN_HUB_TIMEOUT": "5"}
    with FakeHub({"their-lab/npo-adapter": adapter}) as hub:
        environment["HF_ENDPOINT"] = hub.url
        out = verify(repo, "--model", "their-lab/npo-adapter", "--name", "their-npo", "--method", "their-npo",
                     "--eval-dir", str(evals), **environment)
    assert any(path.endswith("adapter_model.safetensors") for _, path, status in hub.requests if status == 200)
    assert "evaluate their-npo:" in out
    verdict = json.loads((evals / "their-npo/metrics.json").read_text())["verdict"]
    pipeline = json.loads((evals / "npo-f10-s42/metrics.json").read_text())["verdict"]
    assert verdict == pipeline  # the same adapter, the same verdict
    assert results(evals / "their-npo") == results(evals / "npo-f10-s42")  # number for number
    subprocess.run([str(BIN / "unforgotten"), "report", "--eval-dir", str(evals), "--models-dir", str(repo / "models"),
                    "--unlearn-dir", str(repo / "outputs/unlearn"), "--output-dir", str(tmp_path / "report")],
                   check=True, capture_output=True, text=True, timeout=600)
    with open(tmp_path / "report/report.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert rows["their-npo"]["verdict"] == verdict and rows["their-npo"]["method"] == "their-npo"


def test_verify_without_the_pipelines_references_says_what_is_missing(micro_repo, tmp_path):
    repo, _ = micro_repo
    result = subprocess.run([str(BIN / "unforgotten"), "verify", "--model", str(repo / "models/unlearn/npo-f10-s42"),
                             "--eval-dir", str(tmp_path / "nothing")], cwd=repo, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert "nothing/base: not found; verify needs the pipeline's reference" in result.stderr
    assert not (tmp_path / "nothing").exists()
