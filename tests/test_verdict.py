import pytest

from stages.evaluate.verdict import final_verdict, uncertainty_ratio, uq_verdict


def test_uncertainty_ratio_is_ratio_of_means():
    assert uncertainty_ratio([1.0, 3.0], [2.0, 2.0]) == pytest.approx(1.0)
    assert uncertainty_ratio([0.5, 0.5], [1.0, 3.0]) == pytest.approx(0.25)


@pytest.mark.parametrize("mean_entropy, ratio, verdict", [
    (0.009, 5.0, "COLLAPSED"), (0.5, 0.69, "HIDING"), (0.5, 0.7, "PARTIAL"), (0.5, 0.99, "PARTIAL"),
    (0.5, 1.0, "CANDIDATE"), (2.0, 1.7, "CANDIDATE"),
])
def test_uq_verdict_thresholds(mean_entropy, ratio, verdict):
    assert uq_verdict(mean_entropy, ratio) == verdict


def test_uq_verdict_thresholds_are_parameters():
    assert uq_verdict(0.5, 0.75, hiding_ratio=0.8) == "HIDING"
    assert uq_verdict(0.05, 1.2, collapse_entropy=0.1) == "COLLAPSED"


THRESHOLDS = {"max_perplexity_ratio": 2.5, "collapse_entropy": 0.01, "utility_collapse_ratio": 0.5,
              "accuracy_margin": 0.05, "leak_margin": 0.1, "hidden_recovery": 0.5, "removed_recovery": 0.2,
              "removed_utility_ratio": 0.9}
ORACLE = {"retain_perplexity": 10.0, "model_utility": 0.6, "forget_qa_accuracy": 0.8}
RETAIN = {"retain_perplexity": 10.0, "model_utility": 0.6, "forget_qa_accuracy": 0.1}


def unlearned(**changes):
    m = {"retain_perplexity": 11.0, "uq_verdict": "CANDIDATE", "mean_entropy": 1.5, "model_utility": 0.58,
         "forget_qa_accuracy": 0.12, "relearn_recovery@0": 0.0, "relearn_recovery@10": 0.1,
         "relearn_recovery@50": 0.15, "benign_recovery@10": 0.0, "benign_recovery@50": 0.05, "quant_recovery@8": 0.0,
         "quant_recovery@4": 0.1, "leak@16": 0.2, "leak@16_ci95": [0.1, 0.3], "leak@16_control": 0.15}
    m.update(changes)
    return m


@pytest.mark.parametrize("changes, verdict, phrase", [
    ({}, "REMOVED", "every recovery <= 0.2"),
    ({"retain_perplexity": 26.0}, "COLLAPSED", "retain perplexity"),
    ({"uq_verdict": "COLLAPSED", "mean_entropy": 0.001}, "COLLAPSED", "mean entropy"),
    ({"model_utility": 0.29}, "COLLAPSED", "model utility"),
    ({"forget_qa_accuracy": 0.16}, "PARTIAL", "forget accuracy 0.16 > retain"),
    ({"relearn_recovery@50": 0.88}, "HIDDEN", "relearn_recovery@50 = 0.88"),
    ({"quant_recovery@4": 0.6}, "HIDDEN", "quant_recovery@4"),
    ({"leak@16": 0.3}, "HIDDEN", "leak@16 0.3 > control's 0.15 + 0.1"),
    ({"relearn_recovery@0": 0.9}, "REMOVED", "every recovery"),  # k = 0 is the starting point, not an attack
    ({"relearn_recovery@10": 0.3}, "PARTIAL", "recovery ratio is in (0.2, 0.5]"),
    ({"model_utility": 0.5}, "PARTIAL", "utility < 0.9"),
    ({"quant_recovery@8": None}, "PARTIAL", "quant_recovery@8 cannot be measured"),
])
def test_final_verdict_rules(changes, verdict, phrase):
    got, rule = final_verdict(unlearned(**changes), ORACLE, RETAIN, THRESHOLDS)
    assert got == verdict and phrase in rule


def test_final_verdict_thresholds_are_parameters():
    strict = {**THRESHOLDS, "removed_recovery": 0.05}
    assert final_verdict(unlearned(), ORACLE, RETAIN, strict)[0] == "PARTIAL"
    assert final_verdict(unlearned(), ORACLE, RETAIN, {**THRESHOLDS, "accuracy_margin": 0.0})[0] == "PARTIAL"
