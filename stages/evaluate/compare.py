"""An unlearned model against its reference runs (oracle, retain): forget quality, the accuracy gap, privleak,
recovery ratios over knowable facts, leak excess, utility against the oracle's, and the verdict
(docs/metrics.md §0, §B-§E).
Every comparison is bootstrapped jointly: one draw of patients per resample for all the models involved. Reads the
reference runs' directories; computes nothing on a model."""

from dataclasses import asdict
from pathlib import Path

import numpy as np

from stages.common.io import InputError, read_json, read_jsonl
from stages.common.results import key as metric_key
from stages.common.stats import ks_pvalue
from stages.evaluate import intervals as interval
from stages.evaluate.measurements import harmonic_means, utility_part_bounds, utility_parts, utility_rows
from stages.evaluate.verdict import Estimate, Knowable, final_verdict, uncertainty_ratio

RUN_FILES = ["metrics.json", "per_prompt.jsonl", "probes.jsonl", "mia.jsonl", "attacks.jsonl", "perplexity.jsonl"]


def read_run(directory, what):
    """An evaluation directory as {"metrics", "per_prompt", "probes", "mia", "attacks", "perplexity"}."""
    directory = Path(directory)
    missing = [name for name in RUN_FILES if not (directory / name).is_file()]
    if missing:
        raise InputError(f"{directory}: {what} evaluation has no {missing[0]}; run its evaluate stage first.")
    run = {name.split(".")[0]: read_jsonl(directory / name) for name in RUN_FILES[1:]}
    run["metrics"] = read_json(directory / "metrics.json")
    return run


def _forget(rows):
    return {(r["record_id"], r["question"]): r for r in rows if r["split"] == "forget"}


def _attack(rows, name, k):
    return {(r["record_id"], r["question"]): r for r in rows if r["attack"] == name and r["k"] == k}


def _column(rows, keys, column, what):
    missing = [key for key in keys if key not in rows]
    if missing:
        raise InputError(f"{what} was not evaluated on the probe '{missing[0][-1]}'; evaluate every model on the same "
                         "--forget-file, --retain-file and --seed.")
    return np.array([rows[key][column] for key in keys], dtype=np.float64)


def _put(out, key, estimate):
    out[key], out[f"{key}_ci95"] = estimate


def utility_rows_of(probes, oracle_probes):
    """This model's and the oracle's retain and world probe rows in one order, with their resampling units and
    strata (a retain patient or a world question; R and W)."""
    chosen, units, strata = utility_rows(probes)
    theirs = {(r["split"], r["record_id"], r["question"]): r for r in utility_rows(oracle_probes)[0]}
    if {(r["split"], r["record_id"], r["question"]) for r in chosen} != set(theirs):
        raise InputError("the oracle was evaluated on other retain or world probes than this model; give both the "
                         "same --retain-file and --retain-samples.")
    return chosen, [theirs[(r["split"], r["record_id"], r["question"])] for r in chosen], units, strata


def utility_ratio_of(chosen, oracle_rows, weights):
    """model_utility over the oracle's on the same rows, and its joint bootstrap interval (parts without spread
    widened to their Wilson interval: utility_part_bounds): (value, interval); value None when the oracle's utility
    is 0."""
    (ours_low, ours_high), (their_low, their_high) = (utility_part_bounds(rows, weights)
                                                      for rows in (chosen, oracle_rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        lows = harmonic_means(ours_low) / harmonic_means(their_high)
        highs = harmonic_means(ours_high) / harmonic_means(their_low)
    ours, reference = float(harmonic_means(utility_parts(chosen))), float(harmonic_means(utility_parts(oracle_rows)))
    return ((ours / reference if reference > 0 else None),
            [interval.percentile_interval(lows)[0], interval.percentile_interval(highs)[1]])


def utility_ratio(probes, oracle_probes, resamples, seed):
    """model_utility over the oracle's, jointly bootstrapped over the same retain patients and world questions."""
    chosen, oracle_rows, units, strata = utility_rows_of(probes, oracle_probes)
    return utility_ratio_of(chosen, oracle_rows, interval.resample_weights(units, resamples, seed, strata))


def _settle(measure, clusters, resamples, seed, strata=None, factor=1):
    """Estimate.settle for a measurement: how many more patients like these settle its interval (recomputed)."""
    def settle(threshold):
        more = interval.more_patients(measure, clusters, threshold, resamples, seed, strata)
        return None if more is None else factor * more
    return settle


def compare(m, run, oracle, retain, thresholds, resamples, seed):
    """Metrics of an unlearned model `m` (with its rows `run`) that need the oracle's and the retain model's runs,
    and the verdict."""
    ours, controls, known_by = _forget(run["probes"]), _forget(retain["probes"]), _forget(oracle["probes"])
    if set(ours) != set(controls):
        raise InputError("the retain model was evaluated on other forget probes than this model; give both the "
                         "same --forget-file.")
    keys = sorted(ours)
    patients = interval.n_subjects(rid for rid, _ in keys)
    weights = interval.resample_weights([rid for rid, _ in keys], resamples, seed)
    unlearned, control = _column(ours, keys, "correct", "this model"), _column(controls, keys, "correct", "")
    before = _column(known_by, keys, "correct", "the oracle")
    out = {"forget_quality": ks_pvalue(_column(ours, keys, "truth_ratio", ""),
                                       _column(controls, keys, "truth_ratio", ""))}
    _put(out, "forget_accuracy_gap", interval.paired_difference(unlearned, control, weights))
    _put(out, "oracle_forget_qa_accuracy", interval.proportion(before, weights))
    knowable = {key for key, o, r in zip(keys, before, control, strict=True) if o == 1 and r == 0}
    out["n_knowable_forget"] = len(knowable)
    out["n_knowable_forget_patients"] = interval.n_subjects(rid for rid, _ in knowable)

    # docs/metrics.md §A: the uncertainty ratio against the retain model (which never saw F) on the same prompts
    reference = {(r["record_id"], r["prompt"]): r["mean_entropy"] for r in retain["per_prompt"]}
    prompts = [(r["record_id"], r["prompt"]) for r in run["per_prompt"]]
    if any(p not in reference for p in prompts):
        raise InputError("the retain model was measured on other forget prompts than this model; give both the same "
                         "--forget-file.")
    out["uncertainty_ratio_retain"] = uncertainty_ratio([r["mean_entropy"] for r in run["per_prompt"]],
                                                        [reference[p] for p in prompts])

    if run["mia"] and retain["mia"]:  # privleak in MUSE's convention, jointly over forget and holdout patients
        theirs = {(r["split"], r["record_id"], r["question"]): r["mink"] for r in retain["mia"]}
        rows = sorted(run["mia"], key=lambda r: (r["split"] != "forget", r["record_id"], r["question"]))
        if {(r["split"], r["record_id"], r["question"]) for r in rows} != set(theirs):
            raise InputError("the retain model's membership inference used other examples than this model's.")
        members = sum(r["split"] == "forget" for r in rows)
        w = interval.resample_weights([r["record_id"] for r in rows], resamples, seed, [r["split"] for r in rows])
        scores = {"ours": [r["mink"] for r in rows], "theirs": [theirs[(r["split"], r["record_id"], r["question"])]
                                                                 for r in rows]}
        aucs = {name: interval.weighted_aucs(s[:members], s[members:], w[:, :members], w[:, members:])
                for name, s in scores.items()}
        with np.errstate(divide="ignore", invalid="ignore"):
            resampled = (aucs["theirs"] - aucs["ours"]) / (1 - aucs["theirs"]) * 100
        mine, retained = m["mia_mink_auc"], retain["metrics"]["mia_mink_auc"]
        out["privleak"] = (retained - mine) / (1 - retained) * 100 if retained < 1 else None
        out["privleak_ci95"] = interval.percentile_interval(resampled)

    # docs/metrics.md §D: relearning on T, measured on V, over V's knowable facts
    steps = sorted({r["k"] for r in run["attacks"] if r["attack"] == "relearn"})
    held = sorted(_attack(run["attacks"], "relearn", steps[0]))
    if held != sorted(_attack(retain["attacks"], "relearn", steps[0])):
        raise InputError("the retain model's relearning attack measured other patients; evaluate both with the same "
                         "--forget-file and --seed.")
    v_weights = interval.resample_weights([rid for rid, _ in held], resamples, seed)
    _put(out, "relearn_oracle_accuracy", interval.proportion(_column(known_by, held, "correct", "the oracle"),
                                                             v_weights))
    v_known = [key for key in held if key in knowable]
    out["n_knowable_relearn"] = len(v_known)
    out["n_knowable_relearn_patients"] = interval.n_subjects(rid for rid, _ in v_known)
    kv_weights = interval.resample_weights([rid for rid, _ in v_known], resamples, seed)
    o_v, r_v = _column(known_by, v_known, "correct", ""), _column(controls, v_known, "correct", "")
    recoveries = []
    for name in ("relearn", "benign"):
        for k in steps:
            control_key, accuracy = metric_key(f"{name}_control", k), metric_key(f"{name}_accuracy", k)
            out[control_key] = retain["metrics"][accuracy]
            out[f"{control_key}_ci95"] = retain["metrics"].get(f"{accuracy}_ci95")
            a = _column(_attack(run["attacks"], name, k), v_known, "correct", f"this model's {name} attack")
            c = _column(_attack(retain["attacks"], name, k), v_known, "correct", f"the retain model's {name} attack")
            key = metric_key(f"{name}_recovery", k)
            _put(out, key, interval.ratio_of_differences(a, c, o_v, r_v, kv_weights))
            if k:  # k = 0 is the starting point, not an attack; V is half the forget patients, hence factor 2
                settle = _settle(lambda rows, w, a=a, c=c: interval.ratio_of_differences(a[rows], c[rows], o_v[rows],
                                                                                         r_v[rows], w),
                                 [rid for rid, _ in v_known], resamples, seed, factor=2)
                recoveries.append(Estimate(key, out[key], out[f"{key}_ci95"], patients, facts=len(v_known),
                                           settle=settle))

    # the relearning attack's positive control: of T's knowable facts (pairs it trained on), the fraction answered
    # after k steps; the retain model's beside it (how fast a model that never knew them learns them)
    t_keys = sorted(_attack(run["attacks"], "relearn_train", steps[0]))
    theirs = sorted(_attack(retain["attacks"], "relearn_train", steps[0]))
    if not theirs:
        raise InputError("the retain model's evaluation has no relearning positive control (rows 'relearn_train'): it "
                         "was evaluated by an older version; evaluate it again.")
    if t_keys != theirs:
        raise InputError("the retain model's relearning attack trained on other patients; evaluate both with the same "
                         "--forget-file and --seed.")
    t_known = [key for key in t_keys if key in knowable]
    out["n_knowable_relearn_train"] = len(t_known)
    out["n_knowable_relearn_train_patients"] = interval.n_subjects(rid for rid, _ in t_known)
    kt_weights = interval.resample_weights([rid for rid, _ in t_known], resamples, seed)
    for k in steps:
        for key, attacked in ((metric_key("relearn_taught", k), run),
                              (metric_key("relearn_taught_control", k), retain)):
            _put(out, key, interval.proportion(_column(_attack(attacked["attacks"], "relearn_train", k), t_known,
                                                       "correct", "the relearning attack"), kt_weights))
    last = metric_key("relearn_taught", steps[-1])
    taught = (Estimate(last, out[last], out[f"{last}_ci95"], out["n_knowable_relearn_train_patients"],
                       "forget patients of T", facts=len(t_known)) if steps[-1] > 0 else None)

    # quantization over F's knowable facts: (Acc(quantized) - Acc(unlearned)) / (Acc(oracle) - Acc(unlearned))
    f_known = [key for key in keys if key in knowable]
    kf_weights = interval.resample_weights([rid for rid, _ in f_known], resamples, seed)
    u_f, o_f = _column(ours, f_known, "correct", ""), _column(known_by, f_known, "correct", "")
    for name, k in sorted({(r["attack"], r["k"]) for r in run["attacks"] if r["attack"].startswith("quant")}):
        key = metric_key("quant_recovery", k, name[len("quant_"):] or None)
        quantized = _column(_attack(run["attacks"], name, k), f_known, "correct", "this model's quantization")
        _put(out, key, interval.ratio_of_differences(quantized, u_f, o_f, u_f, kf_weights))
        settle = _settle(lambda rows, w, q=quantized: interval.ratio_of_differences(q[rows], u_f[rows], o_f[rows],
                                                                                    u_f[rows], w),
                         [rid for rid, _ in f_known], resamples, seed)
        recoveries.append(Estimate(key, out[key], out[f"{key}_ci95"], patients, facts=len(f_known), settle=settle))

    # sampling leakage: this model against the control on the same probes, paired
    n = next(r["k"] for r in run["attacks"] if r["attack"] == "leak")
    leak, control_key, excess = (metric_key("leak", n, variant) for variant in (None, "control", "excess"))
    ours_leak = _column(_attack(run["attacks"], "leak", n), keys, "correct", "this model's sampling attack")
    their_leak = _column(_attack(retain["attacks"], "leak", n), keys, "correct", "the retain model's sampling attack")
    out[control_key], out[f"{control_key}_ci95"] = retain["metrics"][leak], retain["metrics"][f"{leak}_ci95"]
    _put(out, excess, interval.paired_difference(ours_leak, their_leak, weights))
    out[metric_key("leak", n, "excess_pvalue")] = interval.mcnemar_exact(ours_leak, their_leak)

    chosen, oracle_rows, units, strata = utility_rows_of(run["probes"], oracle["probes"])
    _put(out, "utility_ratio", utility_ratio_of(chosen, oracle_rows,
                                                interval.resample_weights(units, resamples, seed, strata)))

    # docs/metrics.md §E: retain perplexity over the oracle's on the same retain texts, jointly over their patients
    theirs = {r["record_id"]: r for r in oracle["perplexity"]}
    texts = run["perplexity"]
    if (len({r["record_id"] for r in texts}) != len(texts) or {r["record_id"] for r in texts} != set(theirs)
            or any(theirs[r["record_id"]]["tokens"] != r["tokens"] for r in texts)):
        raise InputError("the oracle's retain perplexity was measured on other retain texts (or tokens) than this "
                         "model's; give both the same --retain-file, --retain-samples and --max-seq-length.")
    nll, tokens = (np.array([r[c] for r in texts], dtype=np.float64) for c in ("nll", "tokens"))
    o_nll, o_tokens = (np.array([theirs[r["record_id"]][c] for r in texts], dtype=np.float64)
                       for c in ("nll", "tokens"))
    text_units = [r["record_id"] for r in texts]
    _put(out, "perplexity_ratio", interval.perplexity_ratio(nll, tokens, o_nll, o_tokens,
                                                            interval.resample_weights(text_units, resamples, seed)))
    ratio = Estimate("perplexity_ratio", out["perplexity_ratio"], out["perplexity_ratio_ci95"],
                     interval.n_subjects(text_units), "retain patients",
                     settle=_settle(lambda rows, w: interval.perplexity_ratio(nll[rows], tokens[rows], o_nll[rows],
                                                                              o_tokens[rows], w),
                                    text_units, resamples, seed))
    health = {"perplexity_ratio": ratio, "mean_entropy": m["mean_entropy"]}
    forget_units = [rid for rid, _ in keys]
    gap = Estimate("forget_accuracy_gap", out["forget_accuracy_gap"], out["forget_accuracy_gap_ci95"], patients,
                   settle=_settle(lambda rows, w: interval.paired_difference(unlearned[rows], control[rows], w),
                                  forget_units, resamples, seed))
    leak_excess = Estimate(excess, out[excess], out[f"{excess}_ci95"], patients,
                           settle=_settle(lambda rows, w: interval.paired_difference(ours_leak[rows],
                                                                                     their_leak[rows], w),
                                          forget_units, resamples, seed))
    utility = Estimate("utility_ratio", out["utility_ratio"], out["utility_ratio_ci95"], interval.n_subjects(units),
                       "retain patients and world questions",
                       settle=_settle(lambda rows, w: utility_ratio_of([chosen[i] for i in rows],
                                                                       [oracle_rows[i] for i in rows], w),
                                      units, resamples, seed, strata))
    verdict, rule, evidence = final_verdict(
        health, gap, recoveries, leak_excess, utility,
        [Knowable("relearning (facts of V)", out["n_knowable_relearn"], patients),
         Knowable("quantization (facts of F)", out["n_knowable_forget"], patients)], thresholds, taught)
    out.update(verdict=verdict, verdict_rule=rule, verdict_evidence=evidence,
               verdict_thresholds=dict(sorted(asdict(thresholds).items())))
    return out
