"""The report's bookkeeping: runs ordered by their stored identity, grouping, mean and spread across seeds (vs
numpy), each attack's strongest setting from the records; the records' flat keys (stages/common/results.py)."""

import numpy as np
import pytest

from stages.common.results import by_k, flatten, key, records, split_key
from stages.report.cli import across_seeds, run_order, seeds_table


def test_runs_are_ordered_by_their_stored_identity_not_their_names():
    runs = [("x2", "npo", "20", 2), ("x3", "retain", "20", 1), ("x4", "oracle", None, 2), ("x5", "base", None, 42),
            ("x6", "npo", "20", 1), ("x7", "oracle", None, 1), ("x8", "grad_ascent", "05", 1),
            ("x9", "npo", "05", 1)]
    identities = [dict(zip(("run", "method", "forget_set", "seed"), r, strict=True)) for r in runs]
    assert [r["run"] for r in sorted(identities, key=run_order)] == ["x5", "x7", "x4", "x3", "x8", "x9", "x6", "x2"]


def test_flat_keys_and_records_are_each_others_inverse():
    assert key("relearn_recovery", 50) == "relearn_recovery@50" and key("model_utility") == "model_utility"
    assert key("quant_recovery", 4, "fp4") == "quant_recovery@4_fp4" and key("leak", 16, "excess") == "leak@16_excess"
    for flat in ["relearn_recovery@50", "quant_recovery@4_fp4", "leak@16_excess_pvalue", "forget_qa_accuracy", "run"]:
        assert key(*split_key(flat)) == flat
    metrics = {"run": "m", "n_forget_patients": 7, "forget_qa_accuracy": 0.5, "forget_qa_accuracy_ci95": [0.2, 0.8],
               "n_knowable_relearn_patients": 3, "relearn_recovery@0": None, "relearn_recovery@0_ci95": [None, None],
               "relearn_recovery@10": 0.4, "relearn_recovery@10_ci95": [0.1, 0.9], "leak@4": 0.1, "leak@4_ci95": [0, 1],
               "leak@4_excess": 0.0, "leak@4_excess_ci95": [-0.1, 0.1], "verdict": "PARTIAL"}
    rows = records(metrics)
    assert flatten(rows) == metrics and list(flatten(rows)) == list(metrics)
    found = {(r["family"], r["name"], r["k"], r["variant"]): (r["value"], r["ci95"], r["n"]) for r in rows}
    assert found[("probes", "forget_qa_accuracy", None, None)] == (0.5, [0.2, 0.8], 7)
    assert found[("relearn", "relearn_recovery", 10, None)] == (0.4, [0.1, 0.9], 3)  # over knowable patients
    assert found[("leak", "leak", 4, "excess")] == (0.0, [-0.1, 0.1], 7)
    assert found[("verdict", "verdict", None, None)] == ("PARTIAL", None, None)
    assert sorted(by_k(rows, "relearn_recovery")) == [0, 10] and list(by_k(rows, "leak", "excess")) == [4]


def test_across_seeds_gives_each_methods_mean_sd_range_and_verdicts():
    values = {1: 0.2, 2: 0.5, 3: 0.35}
    runs = [{"run": f"npo-f20-s{s}", "method": "npo", "forget_set": "20", "seed": s, "forget_qa_accuracy": v,
             "verdict": "REMOVED" if s != 2 else "INCONCLUSIVE", "model_utility": float("nan")}
            for s, v in values.items()]
    runs.append({"run": "rmu-f20-s1", "method": "rmu", "forget_set": "20", "seed": 1, "forget_qa_accuracy": 0.9,
                 "verdict": "HIDDEN"})
    npo, rmu = across_seeds(runs)
    assert npo["n_seeds"] == 3 and npo["verdicts"] == "s1: REMOVED, s2: INCONCLUSIVE, s3: REMOVED"
    assert npo["forget_qa_accuracy_mean"] == pytest.approx(np.mean(list(values.values())))
    assert npo["forget_qa_accuracy_sd"] == pytest.approx(np.std(list(values.values()), ddof=1))
    assert npo["forget_qa_accuracy_range"] == [0.2, 0.5]
    assert "model_utility_mean" not in npo  # NaN on every seed: nothing to summarize
    assert rmu["n_seeds"] == 1 and rmu["forget_qa_accuracy_sd"] is None
    table = seeds_table([npo, rmu])
    assert "0.350 ± 0.150 [0.200, 0.500]" in table and "0.900 (one seed)" in table


def test_the_verdict_table_shows_the_relearning_attacks_positive_control_beside_its_recovery():
    from stages.report.cli import headline_keys

    metrics = {f"{name}@{k}": 0.5 for name in ("relearn_recovery", "relearn_taught", "relearn_taught_control")
               for k in (0, 10, 50)}
    keys = headline_keys(records(metrics))
    assert keys.index("relearn_taught@50") == keys.index("relearn_recovery@50") + 1
    assert "relearn_taught@10" not in keys and "relearn_taught_control@50" not in keys


def test_each_attack_is_shown_at_its_strongest_setting():
    from stages.report.cli import headline_keys

    metrics = {"quant_recovery@8": 0.1, "quant_recovery@4": 0.2, "quant_recovery@4_fp4": 0.3, "leak@8": 0.0,
               "leak@16": 0.1, "leak@16_control": 0.0, "leak@16_excess": 0.1, "leak@16_excess_pvalue": 1.0}
    keys = headline_keys(records(metrics))
    assert [k for k in keys if "@" in k] == ["quant_recovery@4", "quant_recovery@4_fp4", "leak@16", "leak@16_control",
                                             "leak@16_excess"]


def test_plot_data_writes_each_curve_under_its_own_name_with_its_interval(tmp_path, capsys):
    """Every curve of the JSON plots carries its own numbers: distinct values per metric and k, so a swapped key or
    curve shows; a reference run (no verdict) and a run without one of the curves get no recovery file."""
    from stages.common.io import read_json, write_json
    from stages.report.cli import RECOVERY, write_plot_data

    metrics = {}
    for i, name in enumerate(RECOVERY):
        for k in (0, 10):
            value = round(0.01 * i + 0.001 * k, 4)
            metrics[f"{name}@{k}"], metrics[f"{name}@{k}_ci95"] = value, [value - 0.005, value + 0.005]
    unlearned = {"run": "npo-f10-s1", "verdict": "FORGOTTEN", "records": records(metrics)}
    reference = {"run": "oracle-s1", "records": records(metrics)}
    partial = {"run": "ga-f10-s1", "verdict": "HIDDEN",
               "records": records({k: v for k, v in metrics.items() if not k.startswith("benign_control")})}
    log = tmp_path / "models/oracle-s1/train_log.json"
    write_json(log, {"steps": [{"step": 1, "loss": 2.5, "learning_rate": 0.1, "tokens_per_s": 9}, {"step": 2,
                                                                                                   "loss": 1.5}]})
    trajectory = tmp_path / "outputs/unlearn/npo-f10-s1/trajectory.json"
    write_json(trajectory, [{"step": 0, "loss": 1.0, "perplexity": 5.0, "entropy": 0.3, "seconds": 1.2},
                            {"step": 1, "loss": -0.5, "perplexity": 6.0}])
    out = tmp_path / "plots"
    write_plot_data([unlearned, reference, partial], {"oracle-s1": read_json(log)["steps"]},
                    {"npo-f10-s1": read_json(trajectory)}, out)
    assert read_json(out / "training/oracle-s1.json") == [{"step": 1, "loss": 2.5, "learning_rate": 0.1},
                                                          {"step": 2, "loss": 1.5, "learning_rate": None}]
    assert read_json(out / "unlearning/npo-f10-s1.json") == [
        {"step": 0, "loss": 1.0, "perplexity": 5.0, "entropy": 0.3},
        {"step": 1, "loss": -0.5, "perplexity": 6.0, "entropy": None}]  # no timing in a tracked file
    assert sorted(p.name for p in (out / "recovery").iterdir()) == ["npo-f10-s1.json"]
    assert "ga-f10-s1 has no recovery curve (its metrics lack benign_control)" in capsys.readouterr().err
    rows = read_json(out / "recovery/npo-f10-s1.json")
    assert [row["k"] for row in rows] == [0, 10]
    for row in rows:
        assert set(row) == {"k", *RECOVERY, *(f"{n}_ci95_{side}" for n in RECOVERY for side in ("low", "high"))}
        for i, name in enumerate(RECOVERY):
            value = round(0.01 * i + 0.001 * row["k"], 4)
            assert (row[name], row[f"{name}_ci95_low"], row[f"{name}_ci95_high"]) == (
                value, value - 0.005, value + 0.005), name
