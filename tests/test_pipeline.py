"""The real CLI chain through the real dvc.yaml, on a micro profile with a tiny model: every stage, the output
layout, DVC metrics, a no-op rerun and a clean `dvc status`."""

import json
import re

import pytest

from tests.micro import FAKE_SECRETS, commit, dvc, git
from tests.verify_keys import verify_keys

RUNS = ["base", "oracle-s42", "retain-f10-s42", "grad_ascent-f10-s42"]


@pytest.fixture(scope="module")
def repo(micro_repo):
    return micro_repo


@pytest.mark.pipeline
def test_repro_runs_every_stage_into_the_documented_layout(repo):
    repo, output = repo
    for stage in ["generate", "prepare-medical", "prepare-wmdp", "prepare-tofu", "finetune-oracle@42",
                  "finetune-retain@10-42", "unlearn@grad_ascent-10-42", "evaluate-base", "evaluate-oracle@42",
                  "evaluate-retain@10-42", "evaluate-unlearned@grad_ascent-10-42", "report"]:
        assert f"Running stage '{stage}'" in output
    assert json.loads((repo / "dataset/tofu/manifest.json").read_text())["skipped"] is True  # no data/tofu here
    # DVC's log reads line by line: the stages' own bars as plain lines, no terminal bar ("  0%|...") redrawn
    assert "%|" not in output
    assert re.search(r"^finetune: (\d+)/\1 step \[.*loss=", output, re.M), output[-3000:]
    assert re.search(r"^unlearn grad_ascent: \d+/2 step \[", output, re.M)
    for path in ["dataset/synthetic_soap_notes.jsonl", "dataset/med_synthetic_full.json",
                 "dataset/med_synthetic_holdout.json", "dataset/med_synthetic_forget01.json",
                 "dataset/med_synthetic_full_minus_forget20.json", "models/oracle-s42/adapter_config.json",
                 "models/retain-f10-s42/adapter_config.json", "models/unlearn/grad_ascent-f10-s42/adapter_config.json",
                 "outputs/unlearn/grad_ascent-f10-s42/trajectory.json",
                 "outputs/report/report.md", "outputs/report/report.csv", "outputs/report/report.png",
                 "outputs/report/training.png", "outputs/report/trajectories.png"]:
        assert (repo / path).is_file(), path
    for run in RUNS:
        assert (repo / f"outputs/eval/{run}/metrics.json").is_file()
        assert (repo / f"outputs/eval/{run}/per_prompt.jsonl").is_file()
    assert json.loads((repo / "dataset/wmdp/manifest.json").read_text())["skipped"] is True
    report = (repo / "outputs/report/report.md").read_text()
    assert all(f"| {run} |" in report for run in RUNS)


@pytest.mark.pipeline
def test_every_unlearned_run_has_every_verify_key_and_a_verdict(repo):
    repo, _ = repo
    for run in [r for r in RUNS if r != "base" and not r.startswith(("oracle-", "retain-"))]:
        metrics = json.loads((repo / f"outputs/eval/{run}/metrics.json").read_text())
        assert verify_keys([0, 2], 2) <= set(metrics), sorted(verify_keys([0, 2], 2) - set(metrics))
        assert metrics["verdict"] in {"REMOVED", "HIDDEN", "PARTIAL", "COLLAPSED", "INCONCLUSIVE"}
        assert metrics["uq_verdict"] in {"COLLAPSED", "HIDING", "PARTIAL", "CANDIDATE"}  # retain-relative UR
    table = (repo / "outputs/report/report.csv").read_text().splitlines()
    assert table[0].startswith("run,method,forget_set,seed,verdict")
    assert "grad_ascent-f10-s42,grad_ascent,10,42," in "\n".join(table)


@pytest.mark.pipeline
def test_dvc_metrics_list_every_run(repo):
    repo, _ = repo
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))
    files = next(iter(metrics.values()))["data"]
    for run in RUNS:
        data = files[f"outputs/eval/{run}/metrics.json"]["data"]
        assert data["run"] == run and data["mean_entropy"] > 0
        # the uncertainty verdict is retain-relative: a run with no retain model to compare with has none
        if run == "base" or run.startswith(("oracle-", "retain-")):
            assert data.get("uq_verdict") in {None, "COLLAPSED"}
        else:
            assert data["uq_verdict"] in {"COLLAPSED", "HIDING", "PARTIAL", "CANDIDATE"}


@pytest.mark.pipeline
def test_second_repro_does_nothing_and_status_is_clean(repo):
    repo, _ = repo
    again = dvc(repo, "repro")
    assert "Running stage" not in again
    assert "Data and pipelines are up to date." in dvc(repo, "status")


@pytest.mark.pipeline
def test_a_change_to_the_plots_reruns_the_report_and_nothing_that_trains_or_measures(repo):
    repo, _ = repo
    plots = repo / "stages/common/plots.py"
    original = plots.read_text()
    plots.write_text(original + "\n# a change to how figures are drawn\n")
    try:
        status = json.loads(dvc(repo, "status", "--json"))
    finally:
        plots.write_text(original)
    assert set(status) == {"report"}, sorted(status)
    assert "Data and pipelines are up to date." in dvc(repo, "status")


@pytest.mark.pipeline
def test_the_report_writes_each_runs_curves_as_data_series_that_dvc_plots_draws(repo):
    """outputs/report/plots: the fine-tuning losses, the unlearning trajectories and the relearning curves, a JSON
    list per run, equal to the numbers they come from; dvc.yaml's top-level plots give each its x and y fields."""
    repo, _ = repo
    plots = repo / "outputs/report/plots"
    log = json.loads((repo / "models/oracle-s42/train_log.json").read_text())["steps"]
    training = json.loads((plots / "training/oracle-s42.json").read_text())
    assert [(r["step"], r["loss"]) for r in training] == [(s["step"], s["loss"]) for s in log] and len(log) > 1
    assert (plots / "training/retain-f10-s42.json").is_file()
    trajectory = json.loads((repo / "outputs/unlearn/grad_ascent-f10-s42/trajectory.json").read_text())
    unlearning = json.loads((plots / "unlearning/grad_ascent-f10-s42.json").read_text())
    assert [(r["step"], r["perplexity"], r["loss"]) for r in unlearning] == [
        (t["step"], t["perplexity"], t["loss"]) for t in trajectory]
    metrics = json.loads((repo / "outputs/eval/grad_ascent-f10-s42/metrics.json").read_text())
    recovery = json.loads((plots / "recovery/grad_ascent-f10-s42.json").read_text())
    assert [r["k"] for r in recovery] == [0, 2]
    for row in recovery:
        for name in ("relearn_accuracy", "relearn_control", "benign_accuracy", "relearn_recovery"):
            assert row[name] == pytest.approx(metrics[f"{name}@{row['k']}"], nan_ok=True), name
            assert [row[f"{name}_ci95_low"], row[f"{name}_ci95_high"]] == metrics[f"{name}@{row['k']}_ci95"]
    unlearned = sorted(f"{p.parent.name}.json" for p in (repo / "outputs/eval").glob("*/metrics.json")
                       if "verdict" in json.loads(p.read_text()))
    assert sorted(p.name for p in (plots / "recovery").iterdir()) == unlearned  # the references have no curve
    assert "grad_ascent-f10-s42.json" in unlearned
    shown = json.loads(dvc(repo, "plots", "show", "--json"))["data"]
    for path, x, y in [("training/oracle-s42.json", "step", "loss"),
                       ("unlearning/grad_ascent-f10-s42.json", "step", "perplexity"),
                       ("recovery/grad_ascent-f10-s42.json", "k", "relearn_control")]:
        content = shown[f"outputs/report/plots/{path}"][0]["content"]
        assert content["encoding"]["x"]["field"] == x, path
        drawn = {row.get("field") for row in content["data"]["values"]} | {
            layer["encoding"]["y"]["field"] for layer in content["layer"] if "y" in layer.get("encoding", {})}
        assert y in drawn, path  # one y: the layers draw its field; several: each row names its field


@pytest.mark.pipeline
def test_a_fresh_clone_shows_the_numbers_from_git_and_reproduces_the_committed_lock_with_git_status_clean(
        repo, tmp_path):
    """What a teammate gets: the lock and the numbers (cache: false) committed after one run. A clone without DVC's
    cache has every metrics.json, summary, trajectory and the report's tables from git alone (`dvc metrics show`
    reads them); `dvc repro` there recomputes every stage and writes the same dvc.lock and numbers byte for byte
    (no timing in a tracked output)."""
    repo, _ = repo
    commit(repo, "the lock and the numbers of the first run")
    in_git = set(git(repo, "ls-files", "outputs").split())
    numbers = {str(p.relative_to(repo)) for pattern in ["outputs/eval/*/metrics.json", "outputs/unlearn/*/*.json",
                                                         "outputs/report/*.json", "outputs/report/*.md",
                                                         "outputs/report/*.csv", "outputs/report/plots/*/*.json"]
               for p in repo.glob(pattern)}
    assert "outputs/report/headline.json" in numbers and "outputs/report/plots/training/oracle-s42.json" in numbers
    assert len(numbers) >= 12
    assert in_git == numbers  # the numbers and nothing else of outputs/ (no per-example rows, no figures)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    (clone / "data").mkdir()
    assert not (clone / "models").exists() and not (clone / ".dvc/cache").exists()
    for path in numbers:
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    assert not (clone / "outputs/eval/base/probes.jsonl").exists()
    shown = json.loads(dvc(clone, "metrics", "show", "--json"))
    metrics = next(iter(shown.values()))["data"]
    assert "outputs/report/headline.json" in metrics and "outputs/eval/grad_ascent-f10-s42/metrics.json" in metrics
    assert metrics["outputs/eval/grad_ascent-f10-s42/metrics.json"]["data"]["verdict"]
    output = dvc(clone, "repro")
    assert "Running stage 'finetune-oracle@42'" in output and "Running stage 'report'" in output
    assert (clone / "dvc.lock").read_bytes() == (repo / "dvc.lock").read_bytes()
    assert git(clone, "status", "--porcelain") == ""  # the recomputed numbers are the committed ones
    assert (clone / "models/oracle-s42.timings.json").is_file()  # the timings are there, untracked


@pytest.mark.pipeline
def test_unlearned_entropies_reproduce_with_an_independent_loop(repo, tiny_model_dir):
    import torch

    from stages.common.models import load_model, load_tokenizer

    repo, _ = repo
    model = load_model(tiny_model_dir, adapter=str(repo / "models/unlearn/grad_ascent-f10-s42"))
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [json.loads(line) for line in (repo / "outputs/eval/grad_ascent-f10-s42/per_prompt.jsonl").open()]
    assert rows
    for row in rows:
        ids = tokenizer(row["input_text"], return_tensors="pt", add_special_tokens=False)["input_ids"]
        entropies, tokens = [], []
        for _ in range(6):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
            entropies.append(float(-(logp.exp() * logp).sum()))
            tokens.append(int(logp.argmax()))
            if tokens[-1] == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
        assert row["num_tokens"] == len(tokens)
        assert row["response"] == tokenizer.decode(tokens, skip_special_tokens=True)
        assert abs(row["mean_entropy"] - sum(entropies) / len(entropies)) < 1e-4
        assert abs(row["max_entropy"] - max(entropies)) < 1e-4


@pytest.mark.pipeline
def test_no_secret_in_the_environment_reaches_an_output_log_lock_plot_or_cache(repo):
    """The repro ran with fake HF_TOKEN, TINKER_API_KEY and AWS keys set: none is in any file of the repository
    (outputs, plots, dvc.lock, DVC's cache and temporary files, git) or in what the stages printed."""
    repo, output = repo
    needles = [secret.encode() for secret in FAKE_SECRETS.values()]
    scanned = [path for path in repo.rglob("*") if path.is_file()]
    for path in scanned:
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), path
    assert not any(secret in output for secret in FAKE_SECRETS.values())
    # The scan covered what it should: the lock, plots, adapters and the DVC cache.
    names = {p.name for p in scanned}
    assert {"dvc.lock", "report.png", "trajectories.png", "adapter_model.safetensors"} <= names
    assert any(".dvc/cache" in str(p) for p in scanned)
