"""docs/metrics.md §0: the patient-level bootstrap against plain loops over resampled patients, Wilson against scipy and
its closed form, and the joint intervals of comparisons."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from stages.evaluate import intervals as interval


def clustered(seed, patients=7, per_patient=(1, 6)):
    """Rows of a few patients with a varying number of 0/1 facts each (correlated within a patient)."""
    rng = np.random.default_rng(seed)
    clusters, values = [], []
    for p in range(patients):
        knows = rng.random()
        for _ in range(rng.integers(*per_patient)):
            clusters.append(f"patient-{p}")
            values.append(int(rng.random() < knows))
    return clusters, np.array(values, dtype=float)


def plain_resamples(clusters, resamples, seed, strata=None):
    """The spec as a loop: per resample, per stratum, draw that stratum's patients with replacement and keep every
    row of each drawn patient (as often as it was drawn). Returns a list of row-index lists."""
    strata = [None] * len(clusters) if strata is None else strata
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        rows = []
        for stratum in dict.fromkeys(strata):
            patients = list(dict.fromkeys(c for c, s in zip(clusters, strata, strict=True) if s == stratum))
            for drawn in rng.integers(0, len(patients), len(patients)):
                rows += [i for i, (c, s) in enumerate(zip(clusters, strata, strict=True))
                         if s == stratum and c == patients[drawn]]
        out.append(rows)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_cluster_bootstrap_means_equal_a_plain_loop_over_resampled_patients(seed):
    clusters, values = clustered(seed)
    weights = interval.resample_weights(clusters, 200, seed)
    loop = [values[rows].mean() for rows in plain_resamples(clusters, 200, seed)]
    assert interval.weighted_means(weights, values) == pytest.approx(loop, abs=1e-12)
    tail = [float(np.percentile(loop, 2.5)), float(np.percentile(loop, 97.5))]
    assert interval.percentile_interval(interval.weighted_means(weights, values)) == pytest.approx(tail)


def test_strata_are_resampled_separately_and_keep_their_sizes():
    clusters = ["a", "a", "b", "c", "c", "c", "x", "y"]
    strata = ["forget"] * 6 + ["holdout"] * 2
    weights = interval.resample_weights(clusters, 300, 5, strata)
    loops = plain_resamples(clusters, 300, 5, strata)
    for w, rows in zip(weights, loops, strict=True):
        assert list(w) == [rows.count(i) for i in range(len(clusters))]
        assert w[6:].sum() == 2  # two holdout patients of one row each, always two drawn
    assert (weights[:, 0] == weights[:, 1]).all()  # a patient's rows are drawn together


def test_correlated_facts_widen_the_interval_beyond_independent_resampling():
    # 10 patients, 5 facts each, all of a patient's facts alike: worth 10 trials, not 50
    clusters = [f"p{i}" for i in range(10) for _ in range(5)]
    values = np.array([1.0 if i < 4 else 0.0 for i in range(10) for _ in range(5)])
    clustered_ci = interval.proportion(values, interval.resample_weights(clusters, 2000, 0))[1]
    independent_ci = interval.proportion(values, interval.resample_weights(range(50), 2000, 0))[1]
    assert clustered_ci[1] - clustered_ci[0] > 1.7 * (independent_ci[1] - independent_ci[0])
    n_eff = interval.effective_size(values, interval.resample_weights(clusters, 4000, 0))
    assert 8 < n_eff < 13


@pytest.mark.parametrize("successes, n", [(0, 20), (1, 20), (7, 20), (20, 20), (3, 11)])
def test_wilson_matches_scipy_and_the_closed_form(successes, n):
    expected = binomtest(successes, n).proportion_ci(method="wilson")
    assert interval.wilson(successes / n, n) == pytest.approx([expected.low, expected.high], abs=1e-9)
    p, z = successes / n, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert interval.wilson(p, n) == pytest.approx([max(0, centre - half), min(1, centre + half)])


def test_no_success_does_not_collapse_the_interval_and_counts_patients_not_facts():
    # 0 of 20 facts from 4 patients: the data cannot show how alike a patient's facts are, so the floor is Wilson on
    # the 4 patients (the fraction of facts is never above the fraction of patients with one), not on 20 facts
    clusters = [f"p{i // 5}" for i in range(20)]
    value, ci = interval.proportion(np.zeros(20), interval.resample_weights(clusters, 500, 0))
    assert value == 0 and ci[0] == 0 and ci[1] == pytest.approx(interval.wilson(0, 4)[1])
    value, ci = interval.proportion(np.ones(20), interval.resample_weights(clusters, 500, 0))
    assert value == 1 and ci[1] == 1 and ci[0] == pytest.approx(interval.wilson(1, 4)[0])
    # independent facts (one each) are worth their number
    _, ci = interval.proportion(np.zeros(20), interval.resample_weights(range(20), 500, 0))
    assert ci[1] == pytest.approx(interval.wilson(0, 20)[1])


def test_one_patient_cannot_make_a_recovery_certain():
    weights = interval.resample_weights(["p"] * 8, 1000, 0)
    ones, zeros = np.ones(8), np.zeros(8)
    value, ci = interval.ratio_of_differences(ones, zeros, ones, zeros, weights)
    assert value == 1 and ci[0] < 0 and ci[1] >= 1  # eight facts of one patient are one observation


def test_paired_difference_is_joint_and_floored():
    clusters, a = clustered(1)
    b = np.roll(a, 3)
    weights = interval.resample_weights(clusters, 300, 2)
    value, ci = interval.paired_difference(a, b, weights)
    loop = [a[rows].mean() - b[rows].mean() for rows in plain_resamples(clusters, 300, 2)]
    boot = [np.percentile(loop, 2.5), np.percentile(loop, 97.5)]
    assert value == pytest.approx(a.mean() - b.mean())
    assert ci[0] <= boot[0] + 1e-12 and ci[1] >= boot[1] - 1e-12
    zero = np.zeros(len(a))
    _, ci = interval.paired_difference(zero, zero, weights)
    assert ci[0] < -0.05 and ci[1] > 0.05  # 0 of n against 0 of n is not "exactly no difference"


def test_perplexity_and_its_ratio_are_bootstrapped_over_patients_like_a_hand_loop():
    # one retain text per patient: summed answer NLL and its token count, for a model and the oracle on the same texts
    rng = np.random.default_rng(3)
    patients = [f"patient-{p}" for p in range(9)]
    tokens = rng.integers(40, 200, len(patients)).astype(float)
    nll, reference = tokens * rng.uniform(2, 4, len(patients)), tokens * rng.uniform(1, 3, len(patients))
    weights = interval.resample_weights(patients, 400, 7)
    loop_ppl, loop_ratio = [], []  # the mean NLL per resample, and its difference to the oracle's (log scale)
    for rows in plain_resamples(patients, 400, 7):
        loop_ppl.append(sum(nll[rows]) / sum(tokens[rows]))
        loop_ratio.append(loop_ppl[-1] - sum(reference[rows]) / sum(tokens[rows]))

    def exp_percentiles(values):
        return [math.exp(np.percentile(values, 2.5)), math.exp(np.percentile(values, 97.5))]

    value, ci = interval.perplexity(nll, tokens, weights)
    assert value == pytest.approx(math.exp(nll.sum() / tokens.sum()))
    assert ci == pytest.approx(exp_percentiles(loop_ppl))
    value, ci = interval.perplexity_ratio(nll, tokens, reference, tokens, weights)
    assert value == pytest.approx(math.exp(nll.sum() / tokens.sum()) / math.exp(reference.sum() / tokens.sum()))
    assert ci == pytest.approx(exp_percentiles(loop_ratio))
    assert ci[0] < value < ci[1]
    assert interval.perplexity([], [], weights[:, :0]) == (None, [None, None])


def test_a_broken_models_infinite_perplexity_is_a_collapse_not_a_crash_or_a_dropped_resample():
    # one text with an infinite (or NaN) NLL: the ratio is infinite, and so is every resample that draws it, which
    # puts the upper bound at infinity; far past float range, no OverflowError
    patients = [f"patient-{p}" for p in range(6)]
    tokens = np.full(6, 100.0)
    reference = np.full(6, 200.0)
    weights = interval.resample_weights(patients, 300, 1)
    for broken in (np.inf, np.nan):
        nll = np.array([300.0] * 5 + [broken])
        value, ci = interval.perplexity_ratio(nll, tokens, reference, tokens, weights)
        assert value == math.inf and ci[1] == math.inf and ci[0] == pytest.approx(math.e)
    value, ci = interval.perplexity_ratio(np.full(6, 1e6), tokens, reference, tokens, weights)  # exp(9998)
    assert value == math.inf and ci == [math.inf, math.inf]


def test_the_paired_floor_keeps_the_pairing():
    # two models that answer 200 independent probes alike (10 % right): no disagreement, a narrow interval; the
    # same accuracies unpaired (Newcombe on the two proportions) would be about three times as wide
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.1).astype(float)
    weights = interval.resample_weights(range(200), 500, 0)
    value, ci = interval.paired_difference(a, a.copy(), weights)
    assert value == 0 and ci == pytest.approx([-interval.wilson(0, 200)[1], interval.wilson(0, 200)[1]])
    (p, i) = interval.proportion(a, weights)
    unpaired = interval.newcombe(p, i, p, i)
    assert unpaired[1] > 2.5 * ci[1]
    # discordant pairs one way: the floor is Newcombe's on the discordant rates
    b = a.copy()
    b[np.flatnonzero(a)[:5]] = 0
    value, ci = interval.paired_difference(a, b, weights)
    assert value == pytest.approx(5 / 200) and ci[0] > -0.01 and ci[1] < 0.07


def test_recovery_ratio_is_bootstrapped_jointly_like_a_hand_loop():
    rng = np.random.default_rng(3)
    clusters = [f"p{i // 4}" for i in range(40)]
    oracle = (rng.random(40) < 0.8).astype(float)
    retain = (rng.random(40) < 0.1).astype(float)
    attacked = (rng.random(40) < 0.5).astype(float)
    control = (rng.random(40) < 0.2).astype(float)
    weights = interval.resample_weights(clusters, 400, 9)
    value, ci = interval.ratio_of_differences(attacked, control, oracle, retain, weights)
    assert value == pytest.approx((attacked.mean() - control.mean()) / (oracle.mean() - retain.mean()))
    loop = []
    for rows in plain_resamples(clusters, 400, 9):
        gap = oracle[rows].mean() - retain[rows].mean()
        loop.append((attacked[rows].mean() - control[rows].mean()) / gap if gap > 0 else np.nan)
    np.testing.assert_allclose(interval.ratio_resamples(attacked, control, oracle, retain, weights), loop,
                               atol=1e-12)
    loop = np.array(loop)[np.isfinite(loop)]
    assert ci[0] <= np.percentile(loop, 2.5) + 1e-12 and ci[1] >= np.percentile(loop, 97.5) - 1e-12
    assert interval.ratio_of_differences(attacked, control, retain, retain, weights) == (None, [None, None])


def test_a_ratio_whose_denominator_often_vanishes_has_no_interval():
    # the oracle knows 1 fact of 10 patients' more than the unlearned model: most resamples have nothing to recover
    o = np.array([1.0] + [0.0] * 9)
    value, ci = interval.ratio_of_differences(o, np.zeros(10), o, np.zeros(10), interval.resample_weights(range(10),
                                                                                                        400, 0))
    assert value == 1 and ci == [None, None]


def test_weighted_aucs_equal_sklearn_on_each_expanded_resample():
    rng = np.random.default_rng(4)
    members, others = rng.integers(0, 5, 12).astype(float), rng.integers(0, 5, 9).astype(float) - 1
    clusters = [f"m{i // 3}" for i in range(12)] + [f"h{i // 3}" for i in range(9)]
    strata = ["forget"] * 12 + ["holdout"] * 9
    weights = interval.resample_weights(clusters, 50, 1, strata)
    aucs = interval.weighted_aucs(members, others, weights[:, :12], weights[:, 12:])
    scores = np.concatenate([members, others])
    for auc, rows in zip(aucs, plain_resamples(clusters, 50, 1, strata), strict=True):
        labels = [1 if i < 12 else 0 for i in rows]
        assert auc == pytest.approx(roc_auc_score(labels, scores[rows]))


def test_mcnemar_exact_is_a_binomial_test_on_discordant_pairs():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0])
    b = np.array([0, 0, 0, 1, 0, 1, 1, 0])
    assert interval.mcnemar_exact(a, b) == pytest.approx(binomtest(3, 4, 0.5).pvalue)
    assert interval.mcnemar_exact(a, a) == 1.0


def test_patients_to_settle_scales_the_half_width_as_one_over_root_n():
    # half-width 0.2 from 10 patients, 0.1 from the threshold: 4x the patients, 30 more
    assert interval.patients_to_settle(0.3, [0.1, 0.5], 0.2, 10) == 30
    assert interval.patients_to_settle(0.3, [0.1, 0.5], 0.3, 10) is None


def test_more_patients_recomputes_the_interval_on_copies_of_the_patients():
    # 0 of 20 against 0 of 20 (4 patients): the paired floor is +-Wilson(0, patients), which is <= 0.05 from
    # 73 patients on (1.96^2 / (n + 1.96^2) <= 0.05): 69 more; the 1 / sqrt(n) estimate would say 380
    clusters = [f"p{i // 5}" for i in range(20)]
    zero = np.zeros(20)

    def measure(rows, weights):
        return interval.paired_difference(zero[rows], zero[rows], weights)

    assert interval.more_patients(measure, clusters, 0.05, 200, 0) == 69
    _, ci = measure(np.arange(20), interval.resample_weights(clusters, 200, 0))
    assert interval.patients_to_settle(0.0, ci, 0.05, 4) > 300
    # a measurement that no number of patients settles
    assert interval.more_patients(measure, clusters, 0.0, 200, 0, limit=8) is None


def test_records_of_one_subject_are_drawn_together_and_counted_once():
    """A TOFU question's id names its author before a '/': the author is the unit, exactly as if every question of
    that author were one record; ids without a '/' (patients) are their own unit, as before."""
    from stages.evaluate.intervals import n_subjects, resample_weights, subject

    ids = ["tofu-author-003/q01", "tofu-author-003/q02", "tofu-author-007/q01", "patient-9"]
    grouped = resample_weights(ids, 300, 5)
    assert (grouped[:, 0] == grouped[:, 1]).all() and (grouped[:, 0] != grouped[:, 2]).any()
    assert (grouped == resample_weights(["tofu-author-003"] * 2 + ["tofu-author-007", "patient-9"], 300, 5)).all()
    assert n_subjects(ids) == 3 and subject("patient-9") == "patient-9" and subject(4) == 4
    # strata stay strata: an author drawn within its own split
    strata = ["forget", "forget", "holdout", "holdout"]
    assert (resample_weights(ids, 50, 1, strata)[:, 0] == resample_weights(ids, 50, 1, strata)[:, 1]).all()


def test_the_relearning_halves_keep_each_author_on_one_side_and_patients_as_before():
    import random

    from stages.evaluate.attacks import split_patients

    def old_split(records, seed):  # the split before subjects: a seeded shuffle of the sorted ids
        ids = sorted(r["id"] for r in records)
        random.Random(seed).shuffle(ids)
        half = (len(ids) + 1) // 2
        return sorted(ids[:half]), sorted(ids[half:])

    patients = [{"id": f"patient-{i:03d}"} for i in range(21)]
    for seed in (0, 42):
        assert split_patients(patients, seed) == old_split(patients, seed)
    questions = [{"id": f"tofu-author-{a:03d}/q{q:02d}"} for a in range(6) for q in range(1, 21)]
    train, measured = split_patients(questions, 42)
    authors = [{i.split("/")[0] for i in side} for side in (train, measured)]
    assert len(train) == len(measured) == 60 and authors[0].isdisjoint(authors[1]) and len(authors[0]) == 3


def test_retain_samples_spread_over_subjects_and_are_the_first_records_when_each_is_a_patient():
    from stages.evaluate.intervals import spread

    patients = [{"id": f"patient-{i:03d}", "probes": [1]} for i in range(30)]
    assert spread(patients, 16) == patients[:16] and spread(patients, 99) == patients
    # TOFU: 20 questions per author; the probes (perturbed answers) on all of author 3's and 4's, on author 1's
    # 5th and 9th
    def probes(a, q):
        return [1] if a in (3, 4) or (a, q) in ((1, 5), (1, 9)) else []

    questions = [{"id": f"tofu-author-{a:03d}/q{q:02d}", "probes": probes(a, q)}
                 for a in range(6) for q in range(1, 21)]
    naive = []
    # a hand loop: each author's questions, those with probes first; round k takes every author's k-th of them,
    # those with probes first
    rounds = [sorted((r for r in questions if r["id"].startswith(f"tofu-author-{a:03d}/")),
                     key=lambda r: not r["probes"]) for a in range(6)]
    for k in range(20):
        naive += sorted((r[k] for r in rounds), key=lambda r: not r["probes"])
    for n in (1, 2, 6, 7, 50, 120):
        assert spread(questions, n) == naive[:n]
    assert {r["id"].split("/")[0] for r in spread(questions, 6)} == {f"tofu-author-{a:03d}" for a in range(6)}
    assert [r["id"] for r in spread(questions, 4)] == ["tofu-author-001/q05", "tofu-author-003/q01",
                                                       "tofu-author-004/q01", "tofu-author-000/q01"]
    assert [r["id"] for r in spread(questions, 12)][6:9] == ["tofu-author-001/q09", "tofu-author-003/q02",
                                                              "tofu-author-004/q02"]
