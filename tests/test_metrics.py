"""VERIFY.md B-D metric functions against independent implementations (sklearn, scipy, rouge-score, naive loops)."""

import math
import zlib

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from stages.evaluate.metrics import (
    bootstrap_ci,
    contains_answer,
    harmonic_mean,
    mia_scores,
    recovery_ratio,
    roc_auc,
    rouge_l_recall,
    truth_ratio,
)


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    members = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float)  # few values: many ties
    others = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float) - seed % 3
    labels = [1] * len(members) + [0] * len(others)
    expected = roc_auc_score(labels, np.concatenate([members, others]))
    assert roc_auc(members, others) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_extremes():
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0 and roc_auc([1], [1]) == 0.5


@pytest.mark.parametrize("prediction, reference", [
    ("The patient was born on 1958-01-10.", "1958-01-10"),
    ("amoxicillin 500 mg twice daily", "amoxicillin 500 mg three times daily"),
    ("sore throat and fever, swollen glands", "sore throat, fever and swollen glands"),
    ("nothing relevant here", "hyperlipidemia"),
    ("a b a b a b", "b a b a"),
    ("", "x"),
])
def test_rouge_l_recall_matches_rouge_score(prediction, reference):
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].recall
    assert rouge_l_recall(prediction, reference) == pytest.approx(expected)


def test_contains_answer_normalizes_and_needs_whole_words():
    assert contains_answer("Born on 1958-01-10.", "1958-01-10")
    assert contains_answer("STREPTOCOCCAL Pharyngitis!", "streptococcal pharyngitis")
    assert not contains_answer("Born on 1958-01-101", "1958-01-10")
    assert not contains_answer("penicillin", "")
    assert not contains_answer("a cold", "cold sore")


def test_truth_ratio_is_geometric_mean_likelihood_ratio():
    para, perturbed = 1.2, [2.0, 0.5, 3.1]
    likelihoods = [math.exp(-n) for n in perturbed]
    expected = math.prod(likelihoods) ** (1 / 3) / math.exp(-para)
    assert truth_ratio(para, perturbed) == pytest.approx(expected)


def test_harmonic_mean_matches_scipy():
    values = [0.3, 0.8, 0.55]
    assert harmonic_mean(values) == pytest.approx(hmean(values))
    assert harmonic_mean([0.0, 0.5]) == 0.0


def test_mia_scores_match_a_naive_computation_from_logits():
    torch.manual_seed(3)
    logits = torch.randn(7, 50) * 3
    targets = torch.randint(0, 50, (7,))
    logp = torch.log_softmax(logits.double(), -1)
    token_logp = [float(logp[i, targets[i]]) for i in range(7)]
    means = [float(sum(math.exp(v) * v for v in logp[i].tolist())) for i in range(7)]
    stds = [math.sqrt(sum(math.exp(v) * v * v for v in logp[i].tolist()) - means[i] ** 2) for i in range(7)]
    text = "Subjective: cough for three days."
    scores = mia_scores(token_logp, means, stds, text, k=0.4)
    lowest = sorted(token_logp)[:2]  # int(7 * 0.4) = 2
    z = sorted((v - m) / s for v, m, s in zip(token_logp, means, stds, strict=True))[:2]
    assert scores["loss"] == pytest.approx(sum(token_logp) / 7)
    assert scores["zlib"] == pytest.approx(sum(token_logp) / 7 / len(zlib.compress(text.encode())))
    assert scores["mink"] == pytest.approx(sum(lowest) / 2)
    assert scores["minkpp"] == pytest.approx(sum(z) / 2)


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    low, high = bootstrap_ci(values, resamples=2000, seed=1)
    assert low < np.mean(values) < high and 0 <= low and high <= 1
    assert bootstrap_ci(values, 2000, 1) == [low, high]
    assert bootstrap_ci([1, 1, 1], 100, 0) == [1.0, 1.0]


def test_recovery_ratio_is_undefined_without_a_gap():
    assert recovery_ratio(0.3, 0.6) == pytest.approx(0.5)
    assert recovery_ratio(0.3, 0.0) is None and recovery_ratio(0.3, -0.1) is None
