"""Everything measured on one loaded model (docs/metrics.md §A-§D), as per-example rows and their summaries."""

import time

import numpy as np

from stages.common.chat import format_prompt, primary_pair, training_pairs
from stages.common.io import InputError
from stages.common.measure import answer_nll, greedy_entropy
from stages.common.progress import section
from stages.common.results import key as metric_key
from stages.evaluate import attacks as attack
from stages.evaluate import intervals as interval
from stages.evaluate.metrics import roc_auc
from stages.evaluate.probes import MIA_METHODS, SPLITS, accuracy, mia_rows, probe_rows
from stages.evaluate.verdict import uncertainty_ratio

ENTROPY_KEYS = ["mean_entropy", "first_token_entropy", "max_entropy", "entropy_std", "num_tokens"]
PROBE_METRICS = ["qa_accuracy", "answer_prob", "rougeL_recall"]


def _entropy(model, tokenizer, forget, base, config):
    """Section A on the forget prompts; the base run's rows (same prompts) give the UR's denominator."""
    questions = [(r["id"], primary_pair(r)[0]) for r in forget]
    inputs = [format_prompt(tokenizer, q) for _, q in questions]
    measured = greedy_entropy(model, tokenizer, inputs, max_new_tokens=config.max_new_tokens,
                              batch_size=config.batch_size)
    rows = [{"record_id": rid, "prompt": q, "input_text": text, **m}
            for (rid, q), text, m in zip(questions, inputs, measured, strict=True)]
    if base is None:
        base_entropies = [r["mean_entropy"] for r in rows]
    else:
        by_prompt = {(r["record_id"], r["prompt"]): r["mean_entropy"] for r in base["per_prompt"]}
        missing = [r["prompt"] for r in rows if (r["record_id"], r["prompt"]) not in by_prompt]
        if missing:
            raise InputError(f"the base model was not measured on '{missing[0]}'; evaluate it on this forget set.")
        base_entropies = [by_prompt[(r["record_id"], r["prompt"])] for r in rows]
    metrics = {"num_prompts": len(rows)}
    metrics.update({key: float(np.mean([r[key] for r in rows])) for key in ENTROPY_KEYS})
    metrics["base_mean_entropy"] = float(np.mean(base_entropies))
    metrics["uncertainty_ratio"] = uncertainty_ratio([r["mean_entropy"] for r in rows], base_entropies)
    return rows, metrics


UTILITY_SPLITS = ["retain", "world"]
UTILITY_PARTS = ["answer_prob", "rougeL_recall", "truth_score"]


def truth_score(row):
    """TOFU's truth score of one probe: max(0, 1 - truth ratio)."""
    return max(0.0, 1.0 - row["truth_ratio"])


def utility_parts(rows, weights=None):
    """The six means model_utility is the harmonic mean of (docs/metrics.md §B:
    answer_prob, rougeL_recall and truth score
    on R and on W), over `rows` (the model's retain and world probe rows, in a fixed order): a (6,) array, or with
    resample weights over those rows, a (resamples, 6) array."""
    columns = []
    for split in UTILITY_SPLITS:
        subset = [i for i, r in enumerate(rows) if r["split"] == split]
        for part in UTILITY_PARTS:
            values = np.array([truth_score(rows[i]) if part == "truth_score" else rows[i][part] for i in subset])
            if weights is None:
                columns.append(values.mean())
            else:
                columns.append(interval.weighted_means(weights[:, subset], values))
    return np.stack(columns, axis=-1)


def utility_part_bounds(rows, weights):
    """The resampled parts of utility_parts(rows, weights) as two (resamples, 6) arrays, low and high: a part whose
    values are all alike (every world answer with ROUGE 0, say) has no bootstrap spread, so there it is widened to
    the Wilson interval on its number of patients or questions (values in [0, 1]), as proportions are
    (docs/metrics.md §0);
    other parts are the resamples themselves."""
    resampled = utility_parts(rows, weights)
    low, high = resampled.copy(), resampled.copy()
    j = 0
    for split in UTILITY_SPLITS:
        subset = [r for r in rows if r["split"] == split]
        units = interval.n_subjects(r["record_id"] for r in subset)
        for part in UTILITY_PARTS:
            values = np.array([truth_score(r) if part == "truth_score" else r[part] for r in subset])
            if values.size and np.ptp(values) == 0:
                floor = interval.wilson(float(values[0]), units)
                low[:, j], high[:, j] = np.minimum(low[:, j], floor[0]), np.maximum(high[:, j], floor[1])
            j += 1
    return low, high


def harmonic_means(parts):
    """Row-wise harmonic mean, 0 where any part is not positive (as harmonic_mean)."""
    parts = np.asarray(parts, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = parts.shape[-1] / (1.0 / parts).sum(axis=-1)
    return np.where((parts > 0).all(axis=-1), out, 0.0)


def utility_rows(rows):
    """The probe rows model_utility is computed on, in a fixed order, and their resampling units (a retain
    patient, or one world question) and strata."""
    chosen = sorted((r for r in rows if r["split"] in UTILITY_SPLITS),
                    key=lambda r: (UTILITY_SPLITS.index(r["split"]), r["record_id"], r["question"]))
    return chosen, [r["record_id"] for r in chosen], [r["split"] for r in chosen]


def probe_summary(rows, resamples, seed):
    """Per split: each probe metric with its patient-level 95 % interval (docs/metrics.md §0, §B), the patient and probe
    counts; the truth-ratio aggregates; model_utility on R and W with its interval."""
    metrics = {}
    for split in SPLITS:
        subset = [r for r in rows if r["split"] == split]
        if not subset:
            continue
        weights = interval.resample_weights([r["record_id"] for r in subset], resamples, seed)
        metrics[f"n_{split}_patients"] = interval.n_subjects(r["record_id"] for r in subset)
        metrics[f"n_{split}_probes"] = len(subset)
        for name, column in zip(PROBE_METRICS, ["correct", "answer_prob", "rougeL_recall"], strict=True):
            estimate = interval.proportion if column == "correct" else interval.mean
            value, ci = estimate([r[column] for r in subset], weights)
            metrics[f"{split}_{name}"], metrics[f"{split}_{name}_ci95"] = value, ci
        ratios = [r["truth_ratio"] for r in subset]
        # open-unlearning's aggregates: on F how close TR is to 1 (mean min(TR, 1/TR)), elsewhere the mean TR and
        # the truth score (a model that knows the fact prefers the paraphrase: TR < 1)
        if split == "forget":
            metrics["forget_truth_ratio"] = float(np.mean([min(t, 1 / t) for t in ratios]))
        else:
            metrics[f"{split}_truth_ratio"] = float(np.mean(ratios))
            value, ci = interval.mean([truth_score(r) for r in subset], weights)
            metrics[f"{split}_truth_score"], metrics[f"{split}_truth_score_ci95"] = value, ci
    chosen, units, strata = utility_rows(rows)
    if set(strata) == set(UTILITY_SPLITS):
        weights = interval.resample_weights(units, resamples, seed, strata)
        metrics["model_utility"] = float(harmonic_means(utility_parts(chosen)))
        low, high = utility_part_bounds(chosen, weights)
        metrics["model_utility_ci95"] = [interval.percentile_interval(harmonic_means(low))[0],
                                         interval.percentile_interval(harmonic_means(high))[1]]
    return metrics


def mia_summary(rows, resamples, seed):
    """ROC AUC of each membership score separating forget (members) from holdout examples, with a patient-level
    interval (forget and holdout patients resampled separately)."""
    members = [r for r in rows if r["split"] == "forget"]
    others = [r for r in rows if r["split"] == "holdout"]
    weights = interval.resample_weights([r["record_id"] for r in members + others], resamples, seed,
                                        ["forget"] * len(members) + ["holdout"] * len(others))
    metrics = {"n_mia_forget": len(members), "n_mia_holdout": len(others),
               "n_mia_forget_patients": interval.n_subjects(r["record_id"] for r in members),
               "n_mia_holdout_patients": interval.n_subjects(r["record_id"] for r in others)}
    for m in MIA_METHODS:
        a, b = [r[m] for r in members], [r[m] for r in others]
        metrics[f"mia_{m}_auc"] = roc_auc(a, b)
        metrics[f"mia_{m}_auc_ci95"] = interval.percentile_interval(
            interval.weighted_aucs(a, b, weights[:, :len(members)], weights[:, len(members):]))
    return metrics


def _attacks(model, tokenizer, sets, config, progress):
    """Section D on this model: relearning on T's training pairs and on retain text (accuracy on V; the relearning
    job also on T itself, its positive control), quantization and sampling leakage (accuracy on all forget probes).
    Returns (metrics, rows)."""
    from stages.common.models import bnb_compute_dtype

    forget = sets["forget"]
    train_ids, measured_ids = attack.split_patients(forget, config.seed)
    v_items = [(r["id"], p) for r in forget if r["id"] in measured_ids for p in r["probes"]]
    t_items = [(r["id"], p) for r in forget if r["id"] in train_ids for p in r["probes"]]
    f_items = [(r["id"], p) for r in forget for p in r["probes"]]
    f_probes = [p for _, p in f_items]
    metrics, rows = {}, []
    common = dict(lora_rank=config.relearn_lora_rank, lora_alpha=2 * config.relearn_lora_rank,
                  learning_rate=config.relearn_learning_rate, batch_size=config.relearn_batch_size,
                  max_length=config.max_seq_length, seed=config.seed, precision=config.relearn_precision)

    def trained_pairs(records):  # what the model under attack was trained on for these records (finetune's pairs)
        return training_pairs(records, config.with_probes, config.with_notes)

    def correct_on(items):
        probes = [p for _, p in items]
        return lambda attacked, tok: accuracy(attacked, tok, probes, config.answer_tokens, config.batch_size)

    steps = sorted(config.relearn_steps)
    # k = 0 is the model as given: measured once for both jobs
    start = time.perf_counter()
    with section("evaluate: relearning attacks"):
        untouched = correct_on(v_items + t_items)(model, tokenizer) if 0 in steps else None
        jobs = {"relearn": (trained_pairs(r for r in forget if r["id"] in train_ids), correct_on(v_items + t_items)),
                "benign": (trained_pairs(sets["retain"]), correct_on(v_items))}
        relearned = attack.relearn_all(model, tokenizer, jobs, [k for k in steps if k], **common)
    v_weights, t_weights, f_weights = (interval.resample_weights([rid for rid, _ in items], config.bootstrap,
                                                                 config.seed)
                                       for items in (v_items, t_items, f_items))
    metrics["n_relearn_patients"], metrics["n_relearn_probes"] = interval.n_subjects(measured_ids), len(v_items)
    metrics["n_relearn_train_patients"] = interval.n_subjects(train_ids)
    metrics["n_relearn_train_probes"] = len(t_items)
    # what each job measured, as (metric name, rows, where they sit in its results, what they are)
    parts = [("relearn", v_items, slice(0, len(v_items)), v_weights, "relearn: accuracy on V"),
             ("relearn_train", t_items, slice(len(v_items), None), t_weights,
              "relearn: accuracy on T, the pairs it trained on (the attack's positive control)"),
             ("benign", v_items, slice(0, len(v_items)), v_weights, "benign: accuracy on V")]
    for key, items, cut, w, what in parts:
        results = {**({0: untouched} if untouched is not None else {}), **relearned[key.removesuffix("_train")]}
        for k, correct in results.items():
            correct = correct[cut]
            name = metric_key(f"{key}_accuracy", k)
            metrics[name], metrics[f"{name}_ci95"] = interval.proportion(correct, w)
            rows += [{"attack": key, "k": k, "record_id": rid, "question": p["question"], "correct": c}
                     for (rid, p), c in zip(items, correct, strict=True)]
        progress(f"  {what}: " + ", ".join(f"k={k}: {np.mean(c[cut]):.3f}" for k, c in results.items()))
    progress(f"  relearning attacks: {time.perf_counter() - start:.0f} s")
    bnb = config.quant_method == "bitsandbytes"
    compute = str(bnb_compute_dtype(model.device.type)).removeprefix("torch.")  # bfloat16 or float32
    metrics["quant_method"] = (f"bitsandbytes in memory: LLM.int8 at 8 bits, nf4 and fp4 at 4 ({compute} compute)"
                               if bnb
                               else f"round-to-nearest symmetric absmax, group {config.quant_group_size}, merged "
                                    "weights")
    # docs/metrics.md §D: with bitsandbytes both of its 4-bit formats; every format measured counts
    formats = [(int(b), None) for b in config.quant_bits] + ([(4, "fp4")] if bnb and "4" in config.quant_bits else [])
    for bits, variant in formats:
        start = time.perf_counter()
        name = metric_key("quant_accuracy", bits, variant)
        with section(f"evaluate: quantization ({name})"):
            if bnb:
                correct = attack.bnb_quantized_accuracy(model, tokenizer, f_probes, bits, config.answer_tokens,
                                                        variant or "nf4", config.batch_size)
            else:
                correct = attack.quantized_accuracy(model, tokenizer, f_probes, bits, config.answer_tokens,
                                                    config.quant_group_size, config.batch_size)
        metrics[name], metrics[f"{name}_ci95"] = interval.proportion(correct, f_weights)
        rows += [{"attack": "quant" + (f"_{variant}" if variant else ""), "k": bits, "record_id": rid,
                  "question": p["question"], "correct": c} for (rid, p), c in zip(f_items, correct, strict=True)]
        progress(f"  quantization {name}: accuracy on F {np.mean(correct):.3f} ({time.perf_counter() - start:.0f} s)")
    n = config.leak_samples
    start = time.perf_counter()
    with section("evaluate: sampling attack"):
        hits = attack.leak_counts(model, tokenizer, f_probes, n, config.answer_tokens, config.seed)
    leaked = [int(h > 0) for h in hits]
    metrics[metric_key("leak", n)], metrics[metric_key("leak", n) + "_ci95"] = interval.proportion(leaked, f_weights)
    rows += [{"attack": "leak", "k": n, "record_id": rid, "question": p["question"], "correct": c, "hits": h}
             for (rid, p), c, h in zip(f_items, leaked, hits, strict=True)]
    progress(f"  sampling: {metric_key('leak', n)} {np.mean(leaked):.3f} ({time.perf_counter() - start:.0f} s)")
    return metrics, rows


def measure(model, tokenizer, sets, base, config, progress=print):
    """All of one model's measurements, as evaluate's `config` says (its recovery attacks with config.attacks):
    {"metrics", "per_prompt", "probes", "mia", "attacks", "perplexity"} ("perplexity": each retain text's summed
    answer NLL and token count, the rows behind retain_perplexity)."""
    clock = time.perf_counter()

    def done(what):
        progress(f"  {what} ({time.perf_counter() - clock:.0f} s)")

    with section("evaluate: uncertainty"):
        per_prompt, metrics = _entropy(model, tokenizer, sets["forget"], base, config)
    monitor = [primary_pair(r) for r in sets["retain"]]
    with section("evaluate: retain perplexity"):
        nll, tokens = answer_nll(model, tokenizer, monitor, config.max_seq_length, config.batch_size)
    texts = [{"record_id": r["id"], "nll": n, "tokens": t} for r, n, t in zip(sets["retain"], nll, tokens, strict=True)]
    metrics["retain_perplexity"], metrics["retain_perplexity_ci95"] = interval.perplexity(
        nll, tokens, interval.resample_weights([r["id"] for r in sets["retain"]], config.bootstrap, config.seed))
    done("uncertainty and retain perplexity")
    with section("evaluate: knowledge probes"):
        probes = probe_rows(model, tokenizer, sets, config.answer_tokens, config.max_seq_length, config.batch_size)
    metrics.update(probe_summary(probes, config.bootstrap, config.seed))
    done(f"knowledge probes: {len(probes)}")
    mia = []
    if sets["holdout"]:  # membership needs non-members
        with section("evaluate: membership inference"):
            mia = mia_rows(model, tokenizer, sets["forget"], sets["holdout"], config.max_seq_length,
                           config.batch_size, config.mink_fraction, config.with_probes, config.with_notes)
        metrics.update(mia_summary(mia, config.bootstrap, config.seed))
        done(f"membership inference: {len(mia)} examples")
    mc_tasks = {key: task for key, task in (("wmdp_bio", config.wmdp_bio), ("mmlu", config.mmlu)) if task}
    if mc_tasks:  # the WMDP track (docs/metrics.md §B: model utility there is MMLU accuracy)
        from stages.evaluate.wmdp import multiple_choice_accuracy

        with section("evaluate: multiple choice"):
            scores = multiple_choice_accuracy(model, tokenizer, mc_tasks, config.batch_size, config.mc_limit)
        metrics.update({f"{key}_accuracy": value for key, value in scores.items()})
        done(f"multiple choice: {', '.join(scores)}")
    attack_rows = []
    if config.attacks:
        attack_metrics, attack_rows = _attacks(model, tokenizer, sets, config, progress)
        metrics.update(attack_metrics)
        done("recovery attacks")
    return {"metrics": metrics, "per_prompt": per_prompt, "probes": probes, "mia": mia, "attacks": attack_rows,
            "perplexity": texts}


def side_by_side(probes, base, references):
    """Forget probes with the answers of base, oracle, retain and this model next to the true answer."""
    answers = {name: {(r["record_id"], r["question"]): r["response"] for r in run["probes"]}
               for name, run in (("base", base), *references.items()) if run}
    return [{"record_id": r["record_id"], "question": r["question"], "answer": r["answer"],
             **{name: found.get((r["record_id"], r["question"])) for name, found in answers.items()},
             "unlearned": r["response"]}
            for r in probes if r["split"] == "forget"]
