import pytest

from stages.evaluate.verdict import uncertainty_ratio, uq_verdict


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
