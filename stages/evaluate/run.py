"""Everything measured on one loaded model (VERIFY.md A-D), as per-example rows and their summaries."""

import time

import numpy as np

from stages.common.chat import format_prompt, primary_pair
from stages.common.io import InputError
from stages.common.measure import greedy_entropy, perplexity
from stages.evaluate import attacks as attack
from stages.evaluate.metrics import bootstrap_ci, harmonic_mean, roc_auc
from stages.evaluate.probes import MIA_METHODS, SPLITS, accuracy, mia_rows, probe_rows
from stages.evaluate.verdict import uncertainty_ratio

ENTROPY_KEYS = ["mean_entropy", "first_token_entropy", "max_entropy", "entropy_std", "num_tokens"]
PROBE_METRICS = ["qa_accuracy", "answer_prob", "rougeL_recall"]


def _entropy(model, tokenizer, forget, base, s):
    """Section A on the forget prompts; the base run's rows (same prompts) give the UR's denominator."""
    questions = [(r["id"], primary_pair(r)[0]) for r in forget]
    inputs = [format_prompt(tokenizer, q) for _, q in questions]
    measured = greedy_entropy(model, tokenizer, inputs, max_new_tokens=s["max_new_tokens"],
                              batch_size=s["batch_size"])
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


def probe_summary(rows, resamples, seed):
    """Per split: mean and 95 % bootstrap interval of each probe metric, mean truth ratio; model_utility on R."""
    metrics = {}
    for split in SPLITS:
        subset = [r for r in rows if r["split"] == split]
        if not subset:
            continue
        for name, column in zip(PROBE_METRICS, ["correct", "answer_prob", "rougeL_recall"], strict=True):
            values = [r[column] for r in subset]
            metrics[f"{split}_{name}"] = float(np.mean(values))
            metrics[f"{split}_{name}_ci95"] = bootstrap_ci(values, resamples, seed)
        metrics[f"{split}_truth_ratio"] = float(np.mean([r["truth_ratio"] for r in subset]))
    retain = [r for r in rows if r["split"] == "retain"]
    if retain:
        truth_score = float(np.mean([max(0.0, 1.0 - r["truth_ratio"]) for r in retain]))
        metrics["retain_truth_score"] = truth_score
        metrics["model_utility"] = harmonic_mean([metrics["retain_answer_prob"], metrics["retain_rougeL_recall"],
                                                  truth_score])
    return metrics


def mia_summary(rows):
    """ROC AUC of each membership score separating forget (members) from holdout examples."""
    members = [r for r in rows if r["split"] == "forget"]
    others = [r for r in rows if r["split"] == "holdout"]
    return {f"mia_{m}_auc": roc_auc([r[m] for r in members], [r[m] for r in others]) for m in MIA_METHODS}


def _attacks(model, tokenizer, sets, s, progress):
    """Section D on this model: relearning on T's notes and on retain text (accuracy on V), quantization and
    sampling leakage (accuracy on all forget probes). Returns (metrics, rows)."""
    forget = sets["forget"]
    train_ids, measured_ids = attack.split_patients(forget, s["seed"])
    v_items = [(r["id"], p) for r in forget if r["id"] in measured_ids for p in r["probes"]]
    f_items = [(r["id"], p) for r in forget for p in r["probes"]]
    v_probes, f_probes = [p for _, p in v_items], [p for _, p in f_items]
    metrics, rows = {}, []
    common = dict(lora_rank=s["relearn_rank"], lora_alpha=2 * s["relearn_rank"], learning_rate=s["relearn_lr"],
                  batch_size=s["relearn_batch_size"], max_length=s["max_seq_length"], seed=s["seed"],
                  precision=s["relearn_precision"])

    def v_accuracy(attacked, tok=tokenizer):
        return accuracy(attacked, tok, v_probes, s["answer_tokens"], s["batch_size"])

    steps = s["relearn_steps"]
    untouched = {0: v_accuracy(model)} if 0 in steps else {}  # k = 0 is the model as given: measured once for both
    start = time.perf_counter()
    jobs = {"relearn": [r for r in forget if r["id"] in train_ids], "benign": sets["retain"]}
    relearned = attack.relearn_all(model, tokenizer, jobs, [k for k in steps if k], v_accuracy, **common)
    for name in jobs:
        results = {**untouched, **relearned[name]}
        for k, correct in results.items():
            metrics[f"{name}_accuracy@{k}"] = float(np.mean(correct))
            rows += [{"attack": name, "k": k, "record_id": rid, "question": p["question"], "correct": c}
                     for (rid, p), c in zip(v_items, correct, strict=True)]
        curve = ", ".join(f"k={k}: {np.mean(c):.3f}" for k, c in results.items())
        progress(f"  {name}: accuracy on V {curve}")
    progress(f"  relearning attacks: {time.perf_counter() - start:.0f} s")
    cuda = s["device"] == "cuda"
    metrics["quant_method"] = ("bitsandbytes int8 / nf4 (CUDA)" if cuda else
                               f"round-to-nearest symmetric absmax, group {s['group_size']}, merged weights (CPU)")
    for bits in s["quant_bits"]:
        if cuda:
            correct = attack.bnb_quantized_accuracy(model, tokenizer, f_probes, bits, s["answer_tokens"],
                                                    batch_size=s["batch_size"])
        else:
            correct = attack.quantized_accuracy(model, tokenizer, f_probes, bits, s["answer_tokens"],
                                                s["group_size"], s["batch_size"])
        metrics[f"quant_accuracy@{bits}"] = float(np.mean(correct))
        rows += [{"attack": "quant", "k": bits, "record_id": rid, "question": p["question"], "correct": c}
                 for (rid, p), c in zip(f_items, correct, strict=True)]
    if cuda:  # VERIFY.md D names both 4-bit formats for bitsandbytes
        correct = attack.bnb_quantized_accuracy(model, tokenizer, f_probes, 4, s["answer_tokens"], "fp4",
                                                s["batch_size"])
        metrics["quant_accuracy@4_fp4"] = float(np.mean(correct))
    n = s["leak_samples"]
    hits = attack.leak_counts(model, tokenizer, f_probes, n, s["answer_tokens"], s["seed"])
    leaked = [int(h > 0) for h in hits]
    metrics[f"leak@{n}"] = float(np.mean(leaked))
    metrics[f"leak@{n}_ci95"] = bootstrap_ci(leaked, s["bootstrap"], s["seed"])
    rows += [{"attack": "leak", "k": n, "record_id": rid, "question": p["question"], "correct": c, "hits": h}
             for (rid, p), c, h in zip(f_items, leaked, hits, strict=True)]
    return metrics, rows


def measure(model, tokenizer, sets, base, s, attacks, progress=print):
    """All of one model's measurements: {"metrics", "per_prompt", "probes", "mia", "attacks"}."""
    clock = time.perf_counter()

    def done(what):
        progress(f"  {what} ({time.perf_counter() - clock:.0f} s)")

    per_prompt, metrics = _entropy(model, tokenizer, sets["forget"], base, s)
    monitor = [primary_pair(r) for r in sets["retain"]]
    metrics["retain_perplexity"] = perplexity(model, tokenizer, monitor, s["max_seq_length"], s["batch_size"])
    done("uncertainty and retain perplexity")
    probes = probe_rows(model, tokenizer, sets, s["answer_tokens"], s["max_seq_length"], s["batch_size"])
    metrics.update(probe_summary(probes, s["bootstrap"], s["seed"]))
    done(f"knowledge probes: {len(probes)}")
    mia = []
    if sets["holdout"]:  # membership needs non-members
        mia = mia_rows(model, tokenizer, sets["forget"], sets["holdout"], s["max_seq_length"], s["batch_size"],
                       s["mink_fraction"])
        metrics.update(mia_summary(mia))
        done(f"membership inference: {len(mia)} examples")
    if s.get("mc_tasks"):  # the WMDP track (VERIFY.md B: model utility there is MMLU accuracy)
        from stages.evaluate.wmdp import multiple_choice_accuracy

        scores = multiple_choice_accuracy(model, tokenizer, s["mc_tasks"], s["batch_size"], s.get("mc_limit"))
        metrics.update({f"{key}_accuracy": value for key, value in scores.items()})
        done(f"multiple choice: {', '.join(scores)}")
    attack_rows = []
    if attacks:
        attack_metrics, attack_rows = _attacks(model, tokenizer, sets, s, progress)
        metrics.update(attack_metrics)
        done("recovery attacks")
    return {"metrics": metrics, "per_prompt": per_prompt, "probes": probes, "mia": mia, "attacks": attack_rows}


def side_by_side(probes, base, references):
    """Forget probes with the answers of base, oracle, retain and this model next to the true answer."""
    answers = {name: {(r["record_id"], r["question"]): r["response"] for r in run["probes"]}
               for name, run in (("base", base), *references.items()) if run}
    return [{"record_id": r["record_id"], "question": r["question"], "answer": r["answer"],
             **{name: found.get((r["record_id"], r["question"])) for name, found in answers.items()},
             "unlearned": r["response"]}
            for r in probes if r["split"] == "forget"]
