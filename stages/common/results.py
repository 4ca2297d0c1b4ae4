"""Metric records: every number of an evaluation with its identity, its 95 % interval and the sample behind it.

A record is {"family", "name", "k", "variant", "value", "ci95", "n"}:
- family: the attack the number belongs to (relearn, benign, quant, leak) or the measurement (uncertainty, health,
  probes, membership, utility, verdict, sample, run);
- name: the quantity (relearn_recovery, forget_qa_accuracy, leak, ...);
- k: the attack's strength (relearning steps, bits, samples per probe), None for a number without one;
- variant: a second number at that strength (fp4 beside nf4 at 4 bits; a leak's control, excess and its p-value);
- value, ci95 (its 95 % interval, None without one) and n: the resampling units behind the interval (patients; a
  world question counts as one), None where the run counts none.

DVC reads flat key/value files (metrics.json, headline.json). key(), flatten() and records() here are the one place
such keys are made and read back: "relearn_recovery@50", "quant_recovery@4_fp4", "leak@16_excess" and
"forget_qa_accuracy", each with its interval under the key + "_ci95".
"""

CI = "_ci95"
# A number's family by its name's beginning, first match; "uncertainty" (the entropies) for the rest.
FAMILIES = [("n_", "sample"), ("run", "run"), ("precision", "run"), ("relearn_precision", "run"),
            ("relearn_", "relearn"), ("benign_", "benign"), ("quant_", "quant"), ("leak", "leak"),
            ("mia_", "membership"), ("privleak", "membership"), ("model_utility", "utility"),
            ("utility_ratio", "utility"), ("verdict", "verdict"), ("uq_verdict", "uncertainty"),
            ("retain_perplexity", "health"), ("perplexity_ratio", "health"), ("forget_", "probes"),
            ("retain_", "probes"), ("holdout_", "probes"), ("world_", "probes"), ("oracle_forget_", "probes")]
# The patients behind a number: the run's count keys, by the number's name (first match on its beginning).
SAMPLES = [("relearn_precision", []), ("relearn_recovery", ["n_knowable_relearn_patients"]),
           ("benign_recovery", ["n_knowable_relearn_patients"]),
           ("relearn_taught", ["n_knowable_relearn_train_patients"]),
           ("relearn_train_accuracy", ["n_relearn_train_patients"]),
           ("quant_recovery", ["n_knowable_forget_patients"]),
           ("relearn_", ["n_relearn_patients"]), ("benign_", ["n_relearn_patients"]),
           ("quant_accuracy", ["n_forget_patients"]), ("leak", ["n_forget_patients"]),
           ("oracle_forget_", ["n_forget_patients"]), ("forget_", ["n_forget_patients"]),
           ("retain_perplexity", ["n_retain_patients"]), ("perplexity_ratio", ["n_retain_patients"]),
           ("retain_", ["n_retain_patients"]), ("holdout_", ["n_holdout_patients"]),
           ("world_", ["n_world_patients"]), ("mia_", ["n_mia_forget_patients", "n_mia_holdout_patients"]),
           ("privleak", ["n_mia_forget_patients", "n_mia_holdout_patients"]),
           ("model_utility", ["n_retain_patients", "n_world_patients"]),
           ("utility_ratio", ["n_retain_patients", "n_world_patients"])]


def key(name, k=None, variant=None):
    """The flat key of a number: key("relearn_recovery", 50) == "relearn_recovery@50",
    key("quant_recovery", 4, "fp4") == "quant_recovery@4_fp4", key("model_utility") == "model_utility"."""
    return name + ("" if k is None else f"@{k}") + (f"_{variant}" if variant else "")


def split_key(flat):
    """key()'s inverse: "leak@16_excess" -> ("leak", 16, "excess"), "model_utility" -> ("model_utility", None,
    None)."""
    name, at, rest = flat.partition("@")
    if not at:
        return flat, None, None
    k, _, variant = rest.partition("_")
    return name, int(k), variant or None


def _first(table, name, default):
    return next((value for prefix, value in table if name.startswith(prefix)), default)


def family_of(name):
    return _first(FAMILIES, name, "uncertainty")


def records(metrics):
    """A run's flat metrics (metrics.json) as records, in the same order; flatten() gives them back."""
    out = []
    for flat, value in metrics.items():
        if flat.endswith(CI) and flat[:-len(CI)] in metrics:
            continue
        name, k, variant = split_key(flat)
        counts = [] if name.startswith("n_") else _first(SAMPLES, name, [])
        n = sum(metrics[c] for c in counts) if counts and all(c in metrics for c in counts) else None
        out.append({"family": family_of(name), "name": name, "k": k, "variant": variant, "value": value,
                    "ci95": metrics.get(flat + CI), "n": n})
    return out


def flatten(rows):
    """Records as DVC's flat key/value: each number under its key(), its interval (where it has one) under the key
    + "_ci95"."""
    out = {}
    for r in rows:
        flat = key(r["name"], r["k"], r["variant"])
        out[flat] = r["value"]
        if r["ci95"] is not None:
            out[flat + CI] = r["ci95"]
    return out


def by_k(rows, name, variant=None):
    """{k: record} of one keyed number (relearn_accuracy at each number of steps, ...)."""
    return {r["k"]: r for r in rows if r["name"] == name and r["variant"] == variant and r["k"] is not None}
