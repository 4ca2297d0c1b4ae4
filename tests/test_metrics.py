"""docs/metrics.md §B-§D metric functions against independent implementations (sklearn, scipy, rouge-score,
naive loops)."""

import math
import zlib

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from stages.evaluate.metrics import (
    contains_answer,
    harmonic_mean,
    mia_scores,
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
    ("She was diagnosed with migraines and prescribed tablets", "migraine; prescribing tablet"),
    ("running fevers", "fever ran"),
])
def test_rouge_l_recall_matches_rouge_score_with_the_stemmer(prediction, reference):
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].recall
    assert rouge_l_recall(prediction, reference) == pytest.approx(expected)
    assert rouge_l_recall(prediction, reference) == pytest.approx(naive_stemmed_rouge_l_recall(prediction, reference))


def naive_stemmed_rouge_l_recall(prediction, reference):
    """TOFU's ROUGE-L recall from scratch: lowercase alphanumeric tokens, nltk's Porter stemmer on tokens longer
    than 3 characters (as rouge-score's tokenizer), LCS by the textbook table."""
    import re

    from nltk.stem.porter import PorterStemmer

    stemmer = PorterStemmer()

    def tokens(text):
        return [stemmer.stem(t) if len(t) > 3 else t for t in re.sub(r"[^a-z0-9]+", " ", text.lower()).split()]

    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return 0.0
    table = [[0] * (len(p) + 1) for _ in range(len(r) + 1)]
    for i in range(len(r)):
        for j in range(len(p)):
            table[i + 1][j + 1] = table[i][j] + 1 if r[i] == p[j] else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1] / len(r)


def test_the_stemmer_counts_inflected_answers():
    assert rouge_l_recall("she has migraines", "migraine") == 1.0


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
