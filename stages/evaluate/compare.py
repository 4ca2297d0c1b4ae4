"""An unlearned model against its reference runs (oracle, retain): forget quality, privleak, recovery ratios and
the verdict (VERIFY.md B-E). Reads the reference runs' directories; computes nothing on a model."""

from pathlib import Path

import numpy as np

from stages.common.io import InputError, read_json, read_jsonl
from stages.evaluate.metrics import ks_pvalue, recovery_ratio
from stages.evaluate.verdict import final_verdict

RUN_FILES = ["metrics.json", "per_prompt.jsonl", "probes.jsonl", "mia.jsonl", "attacks.jsonl"]


def read_run(directory, what):
    """An evaluation directory as {"metrics", "per_prompt", "probes", "mia", "attacks"}."""
    directory = Path(directory)
    missing = [name for name in RUN_FILES if not (directory / name).is_file()]
    if missing:
        raise InputError(f"{directory}: {what} evaluation has no {missing[0]}; run its evaluate stage first.")
    run = {name.split(".")[0]: read_jsonl(directory / name) for name in RUN_FILES[1:]}
    run["metrics"] = read_json(directory / "metrics.json")
    return run


def _forget(rows, column):
    return {(r["record_id"], r["question"]): r[column] for r in rows if r["split"] == "forget"}


def _attack_keys(rows, name, k):
    return sorted((r["record_id"], r["question"]) for r in rows if r["attack"] == name and r["k"] == k)


def _mean_over(values, keys, what):
    missing = [q for q in keys if q not in values]
    if missing:
        raise InputError(f"{what} was not evaluated on the probe '{missing[0][1]}'.")
    return float(np.mean([values[q] for q in keys]))


def compare(m, run, oracle, retain, thresholds):
    """Metrics of an unlearned model `m` (with its rows `run`) that need the oracle's and the retain model's runs."""
    ours, controls = _forget(run["probes"], "truth_ratio"), _forget(retain["probes"], "truth_ratio")
    if set(ours) != set(controls):
        raise InputError("the retain model was evaluated on other forget probes than this model; give both the "
                         "same --forget-file.")
    keys = sorted(ours)
    out = {"forget_quality": ks_pvalue([ours[q] for q in keys], [controls[q] for q in keys])}
    if "mia_mink_auc" in m and "mia_mink_auc" in retain["metrics"]:
        reference = retain["metrics"]["mia_mink_auc"]
        out["privleak"] = (m["mia_mink_auc"] - reference) / reference * 100
    oracle_correct = _forget(oracle["probes"], "correct")
    steps = sorted(int(key.split("@")[1]) for key in m if key.startswith("relearn_accuracy@"))
    held = _attack_keys(run["attacks"], "relearn", steps[0])
    if held != _attack_keys(retain["attacks"], "relearn", steps[0]):
        raise InputError("the retain model's relearning attack measured other patients; evaluate both with the same "
                         "--forget-file and --seed.")
    r = retain["metrics"]
    oracle_v = _mean_over(oracle_correct, held, "the oracle")
    out["relearn_oracle_accuracy"] = oracle_v
    gap = oracle_v - r[f"relearn_accuracy@{steps[0]}"]
    for name in ("relearn", "benign"):
        for k in steps:
            out[f"{name}_control@{k}"] = r[f"{name}_accuracy@{k}"]
            out[f"{name}_recovery@{k}"] = recovery_ratio(m[f"{name}_accuracy@{k}"] - r[f"{name}_accuracy@{k}"], gap)
    oracle_f = _mean_over(oracle_correct, keys, "the oracle")
    out["oracle_forget_qa_accuracy"] = oracle_f
    for key in [k for k in m if k.startswith("quant_accuracy@") and not k.endswith("_fp4")]:
        bits = key.split("@")[1]
        out[f"quant_recovery@{bits}"] = recovery_ratio(m[key] - m["forget_qa_accuracy"],
                                                       oracle_f - m["forget_qa_accuracy"])
    leak = next(k for k in m if k.startswith("leak@") and not k.endswith("_ci95"))
    out[f"{leak}_control"] = r[leak]
    verdict, rule = final_verdict({**m, **out}, oracle["metrics"], r, thresholds)
    out.update(verdict=verdict, verdict_rule=rule, verdict_thresholds=dict(sorted(thresholds.items())))
    return out
