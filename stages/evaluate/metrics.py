"""Pure metric functions of docs/metrics.md §B-§D, on plain numbers and strings (no model in here).

Each is checked against an independent implementation in tests/test_metrics.py (sklearn, scipy, nltk's stemmer).
"""

import functools
import math
import re
import zlib

import numpy as np

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize(text):
    """Lowercase, every run of non-alphanumeric characters becomes one space (so '1958-01-10.' ~ '1958 01 10')."""
    return " ".join(_NON_ALNUM.sub(" ", text.lower()).split())


def contains_answer(response, answer):
    """qa_accuracy's test: the normalized answer occurs in the normalized response as whole words."""
    target = normalize(answer)
    return bool(target) and f" {target} " in f" {normalize(response)} "


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(prediction, reference):
    """ROUGE-L recall of the prediction against the reference: rouge-score with the Porter stemmer, as TOFU and
    open-unlearning compute it (docs/metrics.md §B), so the numbers compare with theirs."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].recall)


def truth_ratio(paraphrased_nll, perturbed_nlls):
    """TOFU's truth ratio from mean-per-token NLLs: geometric-mean likelihood of the perturbed answers over the
    likelihood of the paraphrased answer, exp(nll_paraphrased - mean(nll_perturbed))."""
    return math.exp(paraphrased_nll - float(np.mean(perturbed_nlls)))


def harmonic_mean(values):
    values = [float(v) for v in values]
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def roc_auc(member_scores, nonmember_scores):
    """Area under the ROC curve for 'member' = higher score: the Mann-Whitney U statistic with ties counted half."""
    scores = np.concatenate([np.asarray(member_scores, float), np.asarray(nonmember_scores, float)])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    n_pos, n_neg = len(member_scores), len(nonmember_scores)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mia_scores(token_logprobs, token_means, token_stds, text, k=0.4):
    """Membership scores of one example, all 'higher = more likely a member' (docs/metrics.md §C):
    loss (-mean NLL), zlib (-mean NLL / zlib-compressed length of the text in bytes), Min-K % (mean of the lowest
    k of the token log-probs) and Min-K %++ (the same on log-probs standardized by the mean and std of log p under
    the model's own next-token distribution)."""
    logp = np.asarray(token_logprobs, dtype=np.float64)
    nll = -logp.mean()
    count = max(1, int(len(logp) * k))
    standardized = (logp - np.asarray(token_means, np.float64)) / np.asarray(token_stds, np.float64)
    return {
        "loss": float(-nll),
        "zlib": float(-nll / len(zlib.compress(text.encode("utf-8")))),
        "mink": float(np.sort(logp)[:count].mean()),
        "minkpp": float(np.sort(standardized)[:count].mean()),
    }
