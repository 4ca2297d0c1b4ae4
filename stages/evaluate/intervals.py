"""Uncertainty of every reported number (docs/metrics.md §0): patient-level (cluster) bootstrap, joint across
models, with score intervals as a floor so that an interval never collapses to a point because nothing was observed.

A patient's facts are correlated (one note, one condition), so the unit of resampling is the patient: each resample
draws patients with replacement (separately within each stratum, e.g. forget and holdout patients) and keeps all of
a drawn patient's rows. Comparisons of models on the same patients use one draw for every model (joint bootstrap).
A record is its patient, unless its id names a subject before a '/' (TOFU's questions, "tofu-author-180/q07"): then
the subject (the fictitious author, whose 20 answers share one biography) is the unit, drawn with all its records.
Pure functions on plain arrays; tests/test_intervals.py checks them against plain loops, scipy and closed forms.
"""

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def subject(record_id):
    """The unit a record's rows are resampled and counted by: the part of its id before a '/' (a TOFU author), else
    the record itself (a patient). Anything but a string (more_patients' copy numbers) is its own unit."""
    return record_id.split("/", 1)[0] if isinstance(record_id, str) else record_id


def spread(records, n):
    """n records over as many subjects as there are: each subject's first record, then each one's second, and so on;
    within a subject those with probes come first, and so do they within a round (else the file's order). A patient
    is one record, so these are the first n; TOFU's retain questions give n authors, not the first one or two
    authors' 20 questions each, and the questions with perturbed answers (the retain probes) before the others."""
    by_subject = {}
    for position, record in enumerate(records):
        by_subject.setdefault(subject(record["id"]), []).append(position)
    ranked = []
    for positions in by_subject.values():
        positions.sort(key=lambda p: (not records[p].get("probes"), p))
        ranked += [(rank, not records[p].get("probes"), p) for rank, p in enumerate(positions)]
    return [records[position] for *_, position in sorted(ranked)[:n]]


def n_subjects(record_ids):
    """How many patients (or authors) these rows come from: the sample size behind an interval."""
    return len({subject(rid) for rid in record_ids})


def resample_weights(clusters, resamples, seed, strata=None):
    """How often each row is drawn in each resample, as an int array (resamples, rows).

    clusters[i] is row i's patient; strata[i] (default: one stratum) the group its patient is drawn within. The
    draws, in order: for each resample, for each stratum in order of first appearance, rng.integers(0, m, m) over
    that stratum's m patients in order of first appearance."""
    clusters = [subject(c) for c in clusters]
    strata = [None] * len(clusters) if strata is None else list(strata)
    patients = list(dict.fromkeys(zip(strata, clusters, strict=True)))  # (stratum, patient), first appearance
    index = {key: i for i, key in enumerate(patients)}
    row_patient = np.array([index[key] for key in zip(strata, clusters, strict=True)], dtype=np.int64)
    groups = [np.array([i for i, (s, _) in enumerate(patients) if s == stratum], dtype=np.int64)
              for stratum in dict.fromkeys(strata)]
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(patients)), dtype=np.int64)
    for b in range(resamples):
        for group in groups:
            counts[b] += np.bincount(group[rng.integers(0, len(group), len(group))], minlength=len(patients))
    return counts[:, row_patient]


def weighted_means(weights, values):
    """Per resample, the weighted mean of `values` (NaN where a resample drew none of these rows)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights @ np.asarray(values, dtype=np.float64) / total, np.nan)


def percentile_interval(statistics, level=0.95):
    """The percentile interval of a bootstrap distribution, ignoring resamples where the statistic is undefined."""
    statistics = np.asarray(statistics, dtype=np.float64)
    statistics = statistics[np.isfinite(statistics)]
    if statistics.size == 0:
        return [None, None]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(statistics, tail)), float(np.percentile(statistics, 100 - tail))]


def wilson(p, n, z=Z95):
    """Wilson score interval of a proportion p observed on n (possibly effective, non-integer) trials."""
    if n <= 0:
        return [0.0, 1.0]
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def effective_size(values, weights):
    """n / design effect: the number of independent trials the clustered 0/1 `values` are worth. The design effect
    is the cluster bootstrap's variance of the mean over the variance it would have if the rows were independent,
    between 1 and the largest it can be (every patient's rows alike: n_eff = the number of patients). With no
    success, no failure or no spread between resamples the data cannot show how correlated a patient's rows are,
    so the effective size is the number of patients: the fraction of facts is never above the fraction of patients
    with one, so a patient-level interval holds whatever the correlation."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights)
    n, p = values.size, float(values.mean())
    patients = _patients(weights)
    independent = p * (1 - p) / n
    clustered = float(np.nanvar(weighted_means(weights, values)))
    if independent <= 0 or clustered <= 0:
        return float(patients)
    return max(float(patients), n / max(1.0, clustered / independent))


def _patients(weights):
    """How many patients the weights' rows belong to: rows drawn together in every resample are one patient's."""
    if weights.shape[1] == 0:
        return 0
    return len({tuple(column) for column in np.asarray(weights).T})


def envelope(a, b):
    """The smallest interval holding both (None ends are ignored)."""
    lows = [x for x in (a[0], b[0]) if x is not None]
    highs = [x for x in (a[1], b[1]) if x is not None]
    return [min(lows), max(highs)] if lows else [None, None]


def proportion(values, weights):
    """Mean of per-example 0/1 values and its 95 % interval: the larger of the cluster-bootstrap interval and the
    Wilson interval on the effective sample size."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None, [None, None]
    p = float(values.mean())
    boot = percentile_interval(weighted_means(weights, values))
    return p, envelope(boot, wilson(p, effective_size(values, weights)))


def mean(values, weights):
    """Mean of per-example values (not proportions: answer_prob, ROUGE) and its cluster-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None, [None, None]
    return float(values.mean()), percentile_interval(weighted_means(weights, values))


BROKEN_NLL = 1e250  # a text's NLL that is infinite or NaN (a broken model): finite, so 0 x it stays 0 in a resample


def _mean_nll(nll, tokens, weights):
    """The token-weighted mean NLL of the texts and of each resample (NaN where a resample drew no token)."""
    nll = np.nan_to_num(np.asarray(nll, dtype=np.float64), nan=BROKEN_NLL, posinf=BROKEN_NLL)
    tokens = np.asarray(tokens, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return nll.sum() / tokens.sum(), (w @ nll) / (w @ tokens)


def _exp_interval(value, resampled):
    """exp of a log-scale estimate and of its bootstrap percentile interval (inf past float range, never an
    error)."""
    low, high = percentile_interval(resampled)
    with np.errstate(over="ignore"):
        return float(np.exp(value)), [None if low is None else float(np.exp(low)),
                                      None if high is None else float(np.exp(high))]


def perplexity(nll, tokens, weights):
    """exp(token-weighted mean NLL) of texts (one per patient: summed NLL and token count each) and its
    cluster-bootstrap interval (the percentiles of the resampled mean NLL, exponentiated)."""
    if np.sum(tokens) <= 0:
        return None, [None, None]
    return _exp_interval(*_mean_nll(nll, tokens, weights))


def perplexity_ratio(nll, tokens, reference_nll, reference_tokens, weights):
    """One model's perplexity over a reference model's on the same texts, bootstrapped jointly (each resample draws
    one set of patients for both): exp of the difference of their mean NLLs, and the percentiles of that difference
    over the resamples, exponentiated."""
    if np.sum(tokens) <= 0 or np.sum(reference_tokens) <= 0:
        return None, [None, None]
    ours, ours_resampled = _mean_nll(nll, tokens, weights)
    theirs, theirs_resampled = _mean_nll(reference_nll, reference_tokens, weights)
    return _exp_interval(ours - theirs, ours_resampled - theirs_resampled)


def newcombe(pa, ia, pb, ib):
    """Newcombe's hybrid score interval of pa - pb from the two proportions' own intervals."""
    d = pa - pb
    return [d - math.hypot(pa - ia[0], ib[1] - pb), d + math.hypot(ia[1] - pa, pb - ib[0])]


def _paired_floor(a, b, weights):
    """A score interval of mean(a - b) for paired 0/1 outcomes, from the two discordant rates (a without b, b
    without a), each with its Wilson floor on its own effective size, combined as Newcombe's: pairs that agree
    cost nothing, as they should."""
    (p10, i10), (p01, i01) = proportion(a * (1 - b), weights), proportion(b * (1 - a), weights)
    return newcombe(p10, i10, p01, i01)


def paired_difference(a, b, weights):
    """Mean of a - b over the same examples (0/1 each: e.g. the unlearned and the retain model on the same probes)
    and its interval: the larger of the joint cluster bootstrap's and the paired score floor."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return None, [None, None]
    boot = percentile_interval(weighted_means(weights, a - b))
    return float(a.mean() - b.mean()), envelope(boot, _paired_floor(a, b, weights))


MAX_UNDEFINED = 0.025  # a ratio's interval is undefined when more resamples than this have nothing to recover


def ratio_resamples(a, c, o, r, weights):
    """The ratio (mean a - mean c) / (mean o - mean r) on each joint resample; NaN where its denominator is not
    positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        denominators = weighted_means(weights, np.asarray(o, dtype=np.float64) - np.asarray(r, dtype=np.float64))
        numerators = weighted_means(weights, np.asarray(a, dtype=np.float64) - np.asarray(c, dtype=np.float64))
        return np.where(denominators > 0, numerators / denominators, np.nan)


def ratio_of_differences(a, c, o, r, weights):
    """(mean a - mean c) / (mean o - mean r) over the same examples (0/1 each), jointly bootstrapped, as recovery
    ratios are (docs/metrics.md §D). None when the denominator is not positive (nothing to recover); the interval is
    undefined ([None, None]) when more than MAX_UNDEFINED of the resamples have no positive denominator. The floor
    is the paired score interval of the numerator over the observed denominator."""
    a, c, o, r = (np.asarray(x, dtype=np.float64) for x in (a, c, o, r))
    if a.size == 0:
        return None, [None, None]
    gap = float(o.mean() - r.mean())
    if gap <= 0:
        return None, [None, None]
    statistics = ratio_resamples(a, c, o, r, weights)
    value = float(a.mean() - c.mean()) / gap
    if np.mean(~np.isfinite(statistics)) > MAX_UNDEFINED:
        return value, [None, None]
    floor = [x / gap for x in _paired_floor(a, c, weights)]
    return value, envelope(percentile_interval(statistics), floor)


def weighted_aucs(member_scores, nonmember_scores, member_weights, nonmember_weights):
    """ROC AUC ('member' = higher score, ties half) per resample, members and non-members weighted by how often
    each was drawn: the AUC of the expanded resample."""
    m = np.asarray(member_scores, dtype=np.float64)[:, None]
    h = np.asarray(nonmember_scores, dtype=np.float64)[None, :]
    wins = (m > h) + 0.5 * (m == h)
    wm = np.asarray(member_weights, dtype=np.float64)
    wh = np.asarray(nonmember_weights, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("bi,ij,bj->b", wm, wins, wh) / (wm.sum(axis=1) * wh.sum(axis=1))


def mcnemar_exact(a, b):
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (binomial test on the discordant pairs)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def patients_to_settle(value, interval, threshold, n_patients):
    """About how many more patients would move an interval that spans `threshold` off it, if its half-width on the
    threshold's side shrinks as 1 / sqrt(patients) (a quick estimate; more_patients() recomputes instead). None when
    the estimate sits on the threshold (no number of patients settles it) or the interval is unknown."""
    if value is None or interval[0] is None or value == threshold or n_patients <= 0:
        return None
    half = value - interval[0] if threshold < value else interval[1] - value
    needed = n_patients * (half / abs(value - threshold)) ** 2
    return max(1, math.ceil(needed - n_patients - 1e-9))


def more_patients(measure, clusters, threshold, resamples, seed, strata=None, limit=64):
    """How many more patients like the observed ones would settle an interval against `threshold`: the data are
    extended by copies of the observed patients (in turn), the interval recomputed by `measure(rows, weights)` ->
    (value, interval) on those rows (indices into the original data) and their resample weights, and the smallest
    number of added patients that puts the interval on one side of the threshold is found by doubling, then
    bisection. Near 0 or 1 successes, where score intervals shrink faster than 1 / sqrt(n), this is what the
    quick estimate cannot be. None when even `limit` times the patients would not settle it."""
    clusters = [subject(c) for c in clusters]
    strata = [None] * len(clusters) if strata is None else list(strata)
    patients = list(dict.fromkeys(zip(strata, clusters, strict=True)))
    rows_of = {p: [] for p in patients}
    for i, key in enumerate(zip(strata, clusters, strict=True)):
        rows_of[key].append(i)

    def settled(extra):
        rows, units, groups = [], [], []
        for copy, patient in enumerate(patients + [patients[j % len(patients)] for j in range(extra)]):
            rows += rows_of[patient]
            units += [copy] * len(rows_of[patient])
            groups += [patient[0]] * len(rows_of[patient])
        _, ci = measure(np.array(rows), resample_weights(units, resamples, seed, groups))
        return ci[0] is not None and (ci[0] > threshold or ci[1] <= threshold)

    if not patients:
        return None
    low, high = 0, len(patients)
    while not settled(high):
        low, high = high, 2 * high
        if high > limit * len(patients):
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if settled(middle) else (middle, high)
    return high
