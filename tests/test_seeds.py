"""Two training seeds through the real dvc.yaml on the micro profile: a second seed reruns only its own models and
evaluations (the first seed's come from the cache), the seeds train different models, and the report's across-seeds
summary equals numpy's mean and sample sd of the two runs' metrics."""

import json
import shutil

import numpy as np
import pytest
import yaml

from tests.micro import BIN, run


@pytest.fixture(scope="module")
def two_seeds(micro_repo, tmp_path_factory):
    repo, _ = micro_repo
    copy = tmp_path_factory.mktemp("seeds") / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["seeds"] = [42, 43]
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run([str(BIN / "dvc"), "repro"], copy)
    return copy, result.stdout + result.stderr


@pytest.mark.pipeline
def test_a_second_seed_runs_only_its_own_stages(two_seeds):
    repo, output = two_seeds
    for stage in ["finetune-oracle@43", "finetune-retain@10-43", "unlearn@grad_ascent-10-43", "evaluate-oracle@43",
                  "evaluate-retain@10-43", "evaluate-unlearned@grad_ascent-10-43", "report"]:
        assert f"Running stage '{stage}'" in output, stage
    for stage in ["generate", "prepare-medical", "finetune-oracle@42", "unlearn@grad_ascent-10-42", "evaluate-base",
                  "evaluate-unlearned@grad_ascent-10-42"]:
        assert f"Running stage '{stage}'" not in output, stage
    from safetensors.numpy import load_file

    first, second = (load_file(repo / f"models/oracle-s{s}/adapter_model.safetensors") for s in (42, 43))
    assert first.keys() == second.keys()
    assert any(not np.array_equal(first[k], second[k]) for k in first)  # the seed trains a different model


@pytest.mark.pipeline
def test_the_report_summarizes_the_seeds_with_mean_and_sample_sd(two_seeds):
    repo, _ = two_seeds
    runs = [json.loads((repo / f"outputs/eval/grad_ascent-f10-s{s}/metrics.json").read_text()) for s in (42, 43)]
    headline = json.loads((repo / "outputs/report/headline.json").read_text())
    summary = headline["grad_ascent-f10"]
    assert summary["n_seeds"] == 2 and {"grad_ascent-f10-s42", "grad_ascent-f10-s43"} <= set(headline)
    for key in ("forget_qa_accuracy", "retain_perplexity", "model_utility"):
        values = [r[key] for r in runs]
        assert summary[f"{key}_mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert summary[f"{key}_sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    report = (repo / "outputs/report/report.md").read_text()
    seeds_section = report.split("## Across training seeds", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in seeds_section.splitlines() if line.startswith("| grad_ascent |"))
    assert f"s42: {runs[0]['verdict']}, s43: {runs[1]['verdict']}" in row and "| 2 |" in row
