"""The report's bookkeeping across training seeds: run names, grouping, mean and spread (vs numpy)."""

import numpy as np
import pytest

from stages.report.cli import across_seeds, method_and_ratio, run_order, seeds_table


def test_run_names_carry_method_forget_set_and_seed():
    assert method_and_ratio("npo-f20-s42") == ("npo", 20, 42)
    assert method_and_ratio("grad_ascent-f05") == ("grad_ascent", 5, None)
    assert method_and_ratio("oracle-s7") == ("oracle", None, 7)
    names = ["npo-f20-s2", "retain-f20-s1", "oracle-s2", "base", "npo-f20-s1", "oracle-s1"]
    assert sorted(names, key=run_order) == ["base", "oracle-s1", "oracle-s2", "retain-f20-s1", "npo-f20-s1",
                                            "npo-f20-s2"]


def test_across_seeds_gives_each_methods_mean_sd_range_and_verdicts():
    values = {1: 0.2, 2: 0.5, 3: 0.35}
    runs = [{"run": f"npo-f20-s{s}", "method": "npo", "forget_pct": 20, "seed": s, "forget_qa_accuracy": v,
             "verdict": "REMOVED" if s != 2 else "INCONCLUSIVE", "model_utility": float("nan")}
            for s, v in values.items()]
    runs.append({"run": "rmu-f20-s1", "method": "rmu", "forget_pct": 20, "seed": 1, "forget_qa_accuracy": 0.9,
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
    keys = headline_keys(metrics)
    assert keys.index("relearn_taught@50") == keys.index("relearn_recovery@50") + 1
    assert "relearn_taught@10" not in keys and "relearn_taught_control@50" not in keys
