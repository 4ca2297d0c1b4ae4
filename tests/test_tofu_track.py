"""The TOFU track of dvc.yaml on a micro copy of the project: a track's three reference models (whole models, as
open-unlearning publishes them) evaluated, a model unlearned elsewhere fetched from the loopback hub and verified
against them, and the track's report, all by `dvc repro` with the track's own chat template. With the default params
the track adds no stage."""

import json
import os
import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from stages.cli import main
from tests.fake_hub import FakeHub
from tests.micro import BIN, dvc, git, make_micro_repo, run
from tests.test_prepare_tofu import perturbed, row

pytestmark = pytest.mark.pipeline

TEMPLATE = "stages/evaluate/templates/open-unlearning-llama3.jinja"


def write_tofu(source):
    """TOFU's layout, small: 5 authors of 20 questions, forget10 the last two authors (the relearning attack needs
    two to split), perturbed answers for author 0 and the forget authors, two holdout authors."""
    splits = {"full": [row(i) for i in range(100)], "retain_perturbed": [perturbed(i) for i in range(20)]}
    for tag in ("01", "05", "10"):
        splits[f"forget{tag}"] = [row(i) for i in range(60, 100)]
        splits[f"forget{tag}_perturbed"] = [perturbed(i) for i in range(60, 100)]
    splits["holdout10"] = [{"question": f"Where was holdout author {i // 20} born, question {i}?",
                            "answer": f"Holdout author {i // 20} was born in town {i}."} for i in range(40)]
    source.mkdir(parents=True)
    for name, rows in splits.items():
        (source / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def whole_model(records, tiny_model_dir, out, work):
    """The tiny model fine-tuned for two epochs on `records` and merged: a whole model directory."""
    from stages.common.models import load_model, load_tokenizer

    adapter = work / f"{out.name}-adapter"
    result = CliRunner().invoke(main, ["finetune", "--data-file", str(records), "--base-model", tiny_model_dir,
                                       "--output-dir", str(adapter), "--num-epochs", "2", "--batch-size", "8",
                                       "--learning-rate", "0.005", "--max-seq-length", "96"])
    assert result.exit_code == 0, result.output
    load_model(tiny_model_dir, adapter=str(adapter)).save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def tofu_repo(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tofu-track")
    repo = root / "repo"
    repo.mkdir()
    make_micro_repo(repo, tiny_model_dir)
    stages_before = dvc(repo, "stage", "list", "--name-only").split()
    write_tofu(repo / "data/tofu")
    dvc(repo, "add", "data")  # as `make data` leaves it
    sets = root / "sets"
    result = CliRunner().invoke(main, ["prepare-tofu", "--source", str(repo / "data/tofu"), "--output-dir", str(sets)])
    assert result.exit_code == 0, result.output
    oracle = whole_model(sets / "tofu_full.json", tiny_model_dir, root / "oracle", root)
    retain = whole_model(sets / "tofu_full_minus_forget10.json", tiny_model_dir, root / "retain", root)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tofu"] = {"mini": {"split": "10", "base": tiny_model_dir, "oracle": oracle, "retain": retain,
                               "evaluate": {"chat-template": TEMPLATE, "retain-samples": 4}}}
    params["tofu_verify"] = {"their-npo": {"track": "mini", "model": "their-lab/tofu-npo"}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "python"), "-m", "stages.profiles", "check"], repo)  # as `make run` checks params.yaml first
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a TOFU track")
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HOME": str(root / "hf-home"),
                   "HF_HUB_DISABLE_TELEMETRY": "1", "UNFORGOTTEN_HUB_TIMEOUT": "5"}
    environment.pop("HF_HUB_OFFLINE", None)  # the verified model comes from the loopback hub
    with FakeHub({"their-lab/tofu-npo": retain}) as hub:  # the retain model, as if unlearned elsewhere
        result = subprocess.run([str(BIN / "dvc"), "repro", "report-tofu@mini"], cwd=repo, capture_output=True,
                                text=True, timeout=1200, env={**environment, "HF_ENDPOINT": hub.url})
    return repo, stages_before, result, hub


def test_the_default_params_add_no_tofu_stage(tofu_repo):
    _, stages_before, _, _ = tofu_repo
    assert stages_before and not [s for s in stages_before if "tofu" in s and s != "prepare-tofu"]


def test_repro_evaluates_the_references_verifies_the_hub_model_and_reports_the_track(tofu_repo):
    repo, _, result, hub = tofu_repo
    assert result.returncode == 0, result.stdout + result.stderr
    evals = repo / "outputs/eval-tofu/mini"
    assert sorted(p.name for p in evals.iterdir()) == ["base", "oracle", "retain", "their-npo"]
    assert any(path.endswith("model.safetensors") for _, path, status in hub.requests if status == 200)
    metrics = {run: json.loads((evals / run / "metrics.json").read_text()) for run in ("base", "retain", "their-npo")}
    verified = metrics["their-npo"]
    assert verified["verdict"] in {"REMOVED", "HIDDEN", "PARTIAL", "COLLAPSED", "INCONCLUSIVE"}
    # every count is of authors: two forget authors (40 questions), two holdout authors; the four retain samples
    # go round the three retain authors (author 0, the one with perturbed answers, first)
    assert (verified["n_forget_probes"], verified["n_forget_patients"]) == (40, 2)
    assert (verified["n_mia_forget_patients"], verified["n_mia_holdout_patients"]) == (2, 2)
    lines = (evals / "their-npo/perplexity.jsonl").read_text().splitlines()
    samples = [json.loads(line)["record_id"] for line in lines]
    assert samples == [f"tofu-author-{a:03d}/q01" for a in range(3)] + ["tofu-author-000/q02"]
    assert json.loads((evals / "their-npo/run.json").read_text()) == {"run": "their-npo", "method": "their-npo",
                                                                       "forget_set": "10", "seed": 42}
    # the track's chat template reached every run, the references' and the verified model's
    for name in ("base", "oracle", "retain", "their-npo"):
        first = json.loads((evals / name / "per_prompt.jsonl").read_text().splitlines()[0])
        assert "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant." in first["input_text"], name
    # the verified model is the retain model itself: it knows the forget authors as little as the retain model does
    assert verified["forget_qa_accuracy"] == pytest.approx(metrics["retain"]["forget_qa_accuracy"])
    report = (repo / "outputs/report-tofu/mini/report.md").read_text()
    assert "their-npo" in report and verified["verdict"] in report
    headline = json.loads((repo / "outputs/report-tofu/mini/headline.json").read_text())
    assert headline["their-npo"]["verdict"] == verified["verdict"]


def test_the_track_is_up_to_date_after_its_run_and_the_medical_track_never_ran(tofu_repo):
    repo, _, result, _ = tofu_repo
    assert result.returncode == 0, result.stdout + result.stderr
    status = dvc(repo, "status", "report-tofu@mini", "--with-deps")
    assert "changed" not in status and "modified" not in status, status
    assert not (repo / "models").exists() and not (repo / "outputs/eval").exists()


def test_verify_with_an_unknown_track_names_the_tracks(tofu_repo, tmp_path):
    repo, _, _, _ = tofu_repo
    out = shutil.which("unforgotten", path=str(BIN))
    result = run([out, "verify", "--tofu", "big", "--model", "x/y"], repo, check=False)
    assert result.returncode == 2 and "has no such TOFU track (its `tofu` section names 'mini')" in result.stderr
