"""`unforgotten report`: every evaluated run in one place: the verdict table (markdown + CSV), the prototype's model
comparison, the literature's sanity checks, side-by-side answers, and plots of each metric family."""

import math

import click

from stages.common.options import StageCommand, config_of
from stages.common.results import by_k
from stages.common.results import key as metric_key

# The verdict table's columns; for an attack (STRONGEST), its numbers at the strongest setting the run has, so the
# table fits any profile's attack settings.
HEADLINE = ["verdict", "forget_qa_accuracy", "forget_accuracy_gap", "n_knowable_forget", "n_knowable_relearn",
            "forget_quality", "model_utility", "utility_ratio", "privleak", "relearn_recovery", "relearn_taught",
            "benign_recovery", "quant_recovery", "leak", "uncertainty_ratio_retain", "retain_perplexity",
            "perplexity_ratio"]
# An attack's strongest setting (most relearning steps, fewest bits, most samples) and the variants shown beside it.
STRONGEST = {"relearn_recovery": (max, [None]), "relearn_taught": (max, [None]), "benign_recovery": (max, [None]),
             "quant_recovery": (min, [None, "fp4"]), "leak": (max, [None, "control", "excess"])}
COMPARISON = ["run", "mean_entropy", "uncertainty_ratio", "uncertainty_ratio_retain", "retain_perplexity",
              "forget_qa_accuracy", "retain_qa_accuracy", "holdout_qa_accuracy", "world_qa_accuracy", "model_utility",
              "mia_mink_auc", "uq_verdict", "n_forget_patients", "n_forget_probes"]
REFERENCES = ["base", "oracle", "retain"]  # the reference runs' methods (run.json), first in every table
# Numbers summarized across training seeds (mean, sample standard deviation, range) per method and forget set.
ACROSS_SEEDS = ["forget_qa_accuracy", "forget_accuracy_gap", "forget_quality", "model_utility", "utility_ratio",
                "privleak", "uncertainty_ratio_retain", "retain_perplexity", "perplexity_ratio"]
SAMPLES_PER_RUN = 3
HOW_TO_READ = """How to read it. Every number carries its 95 % interval in brackets: a patient-level bootstrap
(a patient's facts are correlated, so patients, not probes, are resampled; comparisons of two models resample the
same patients for both), never narrower than a Wilson interval on the effective sample size. A verdict is given
only when the intervals support it:

- REMOVED: forgotten like the retain model (the accuracy gap's upper bound within the margin), every recovery ratio's
  upper bound at most `removed-recovery`, no leak excess, utility kept, and enough knowable facts;
- HIDDEN: looks forgotten, but an attack's recovery ratio (or the leak excess over the control) has its *lower* bound
  above the threshold: the knowledge comes back;
- PARTIAL: the intervals place the model between the two (a recovery ratio clearly between the thresholds, utility
  clearly damaged, or forget accuracy clearly above the retain model's);
- COLLAPSED: the model broke (retain perplexity above `max-perplexity-ratio` x the oracle's, near-zero entropy, or
  utility far below the oracle's), with the ratio's interval clear of the bound; where a collapse bound lies inside
  the interval of the perplexity or utility ratio, every other verdict would claim the model did not collapse, so
  the verdict is INCONCLUSIVE;
- INCONCLUSIVE: the data cannot tell: an interval spans a threshold, or the oracle knew too few of the forget facts
  (knowable facts: the oracle answers them, the retain model does not; only they can be "recovered"). The rule
  names the measurement and about how many more patients would settle it.

Recovery ratios: 0 = no better than the retain model (never saw the facts), 1 = as good as the oracle, over the
knowable facts only.
"""


def run_order(run):
    """base, oracle, retain, then the unlearned runs; each by method, forget set and seed (run.json)."""
    method = run["method"]
    group = REFERENCES.index(method) if method in REFERENCES else len(REFERENCES)
    return (group, method, run["forget_set"] or "", run["seed"] or 0)


def read_runs(eval_dir):
    """Every evaluated run under eval_dir: its numbers as records (results.jsonl) and flat (key: value, key_ci95:
    interval), its identity (run.json: run, method, forget_set, seed) and its directory."""
    from stages.common.io import read_json, read_jsonl
    from stages.common.results import flatten

    runs = []
    for path in sorted(eval_dir.glob("*/results.jsonl")):
        rows = read_jsonl(path)
        runs.append({**flatten(rows), **read_json(path.parent / "run.json"), "records": rows,
                     "directory": path.parent})
    return runs


def across_seeds(unlearned):
    """Per method and forget set: how many seeds, each seed's verdict, and each ACROSS_SEEDS number's mean, sample
    standard deviation (None with one seed) and range over the seeds."""
    import statistics

    groups = {}
    for r in unlearned:
        groups.setdefault((r["method"], r["forget_set"]), []).append(r)
    rows = []
    for (method, forget_set), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        row = {"method": method, "forget_set": forget_set, "n_seeds": len(runs),
               "verdicts": ", ".join(f"{r['run'] if r['seed'] is None else 's' + str(r['seed'])}: {r['verdict']}"
                                     for r in sorted(runs, key=lambda r: r["seed"] or 0))}
        for key in ACROSS_SEEDS:
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
            if values:
                row[f"{key}_mean"] = statistics.fmean(values)
                row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
                row[f"{key}_range"] = [min(values), max(values)]
        rows.append(row)
    return rows


def seeds_table(rows):
    """The across-seeds summary as markdown: `mean ± sd [min, max]` per number."""
    columns = ["method", "forget_set", "n_seeds", "verdicts", *ACROSS_SEEDS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [cell(row["method"]), cell(row["forget_set"]), str(row["n_seeds"]), cell(row["verdicts"])]
        for key in ACROSS_SEEDS:
            if f"{key}_mean" not in row:
                cells.append("n/a")
                continue
            sd = row[f"{key}_sd"]
            low, high = row[f"{key}_range"]
            cells.append(number(row[f"{key}_mean"]) + (f" ± {number(sd)} [{number(low)}, {number(high)}]"
                                                       if sd is not None else " (one seed)"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def number(value):
    return f"{value:.3g}" if abs(value) < 1e-3 and value else f"{value:.3f}"


def cell(value, ci=None):
    """A table cell: a number with its 95 % interval where it has one, `0.450 [0.300, 0.610]`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        if ci and ci[0] is not None:
            return f"{number(value)} [{number(ci[0])}, {number(ci[1])}]"
        return number(value)
    return " ".join(str(value).replace("|", "/").split())


def strongest(rows, name):
    """The strongest setting k of an attack's number among a run's records, None where the run has none."""
    ks = by_k(rows, name)
    return STRONGEST[name][0](ks) if ks else None


def headline_keys(rows):
    """HEADLINE's keys for a run's records, each attack at its strongest setting (relearn_recovery@50,
    quant_recovery@4 and quant_recovery@4_fp4, leak@16 and its control and excess, ...)."""
    keys = []
    for name in HEADLINE:
        if name not in STRONGEST:
            keys.append(name)
            continue
        k = strongest(rows, name)
        if k is not None:
            keys += [metric_key(name, k, variant) for variant in STRONGEST[name][1] if k in by_k(rows, name, variant)]
    return keys


def headline_value(value):
    """JSON has no NaN: an undefined number is null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def markdown_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c), row.get(f"{c}_ci95")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def with_intervals(keys, row):
    """Each key, followed by its interval's ends as two scalar columns where the run has one (CSV, headline)."""
    out = {}
    for key in keys:
        out[key] = headline_value(row.get(key))
        ci = row.get(f"{key}_ci95")
        if ci:
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = ci
    return out


# The relearning attacks' curves (docs/metrics.md §D), as report.png draws them: the unlearned model's accuracy on V
# after k steps and the retain model's after the same steps (the control), for the attack on T and the benign one;
# its accuracy on T itself (the attack's positive control; relearn_taught and its control: on T's knowable facts);
# and the recovery ratios.
RECOVERY = ["relearn_accuracy", "relearn_control", "benign_accuracy", "benign_control", "relearn_train_accuracy",
            "relearn_taught", "relearn_taught_control", "relearn_recovery", "benign_recovery"]


def plot_data(runs, steps, trajectories, out):
    """The curves as JSON data series for `dvc plots` (dvc.yaml's top-level plots read each directory with one x and
    its y fields, so `dvc plots diff` overlays experiments run by run): training/<run>.json, the fine-tuning loss per
    optimizer step; unlearning/<run>.json, loss, retain perplexity and forget entropy per unlearning step;
    recovery/<run>.json, the relearning attacks per number of steps k, each number with its 95 % interval."""
    from stages.common.io import atomic_dir

    with atomic_dir(out) as tmp:  # the whole directory at once: an older run's curves never linger beside these
        write_plot_data(runs, steps, trajectories, tmp)


def write_plot_data(runs, steps, trajectories, out):
    """plot_data's files in `out`: `steps` is {run: its train_log.json steps}, `trajectories` {run: its
    trajectory.json rows}."""
    from stages.common.io import write_json

    for run, logged in steps.items():
        write_json(out / "training" / f"{run}.json",
                   [{"step": s["step"], "loss": s["loss"], "learning_rate": s.get("learning_rate")} for s in logged])
    for run, rows in trajectories.items():
        write_json(out / "unlearning" / f"{run}.json",
                   [{"step": t["step"], "loss": t["loss"], "perplexity": t["perplexity"], "entropy": t.get("entropy")}
                    for t in rows])
    for run in runs:
        curves = {name: by_k(run["records"], name) for name in RECOVERY}
        if "verdict" not in run:
            continue  # the references have no controls of their own
        missing = [name for name, curve in curves.items() if not curve]
        if missing:
            click.echo(f"report: {run['run']} has no recovery curve (its metrics lack {', '.join(missing)})", err=True)
            continue
        ks = sorted(set.intersection(*(set(c) for c in curves.values())))
        rows = []
        for k in ks:
            row = {"k": k}
            for name, curve in curves.items():
                row[name] = curve[k]["value"]
                row[f"{name}_ci95_low"], row[f"{name}_ci95_high"] = curve[k].get("ci95") or (None, None)
            rows.append(row)
        write_json(out / "recovery" / f"{run['run']}.json", rows)


def oracle_forget_quality(oracle_dir, retain_dir):
    """§F check: KS p-value of the oracle's truth ratios against the retain model's on that retain model's forget
    probes (TOFU finds ~1e-21 for a fine-tuned model; the retain model against itself is 1 by definition)."""
    from stages.common.io import read_jsonl
    from stages.common.stats import ks_pvalue

    control = {(r["record_id"], r["question"]): r["truth_ratio"]
               for r in read_jsonl(retain_dir / "probes.jsonl") if r["split"] == "forget"}
    ours = {(r["record_id"], r["question"]): r["truth_ratio"]
            for r in read_jsonl(oracle_dir / "probes.jsonl") if r["split"] == "forget"}
    keys = sorted(set(control) & set(ours))
    return ks_pvalue([ours[k] for k in keys], [control[k] for k in keys]) if keys else None


def sanity_rows(runs):
    rows = []
    oracles = {r["seed"]: r for r in runs if r["method"] == "oracle"}
    for retain in (r for r in runs if r["method"] == "retain"):
        oracle = oracles.get(retain["seed"])
        if oracle:
            rows.append({"check": f"{oracle['run']}'s forget quality against {retain['run']} (TOFU: ~1e-21; retain "
                                  "itself: 1)",
                         "found": oracle_forget_quality(oracle["directory"], retain["directory"])})
    for r in runs:
        if "verdict" not in r:
            continue
        relearn, taught, quant = (strongest(r["records"], name)
                                  for name in ("relearn_recovery", "relearn_taught", "quant_recovery"))
        if relearn is not None:
            recovered, shown = metric_key("relearn_recovery", relearn), metric_key("relearn_taught", taught)
            control = (f" (the attack's positive control, {shown}: {cell(r.get(shown), r.get(f'{shown}_ci95'))} "
                       "of T's knowable facts relearned)" if taught is not None else "")
            rows.append({"check": f"{r['run']}: {relearn} relearning steps on half the forget patients "
                                  f"bring back the other half (Deeb & Roger: 88 %){control}", "found": r.get(recovered),
                         "found_ci95": r.get(f"{recovered}_ci95")})
        if quant is not None:
            quantized = metric_key("quant_recovery", quant)
            rows.append({"check": f"{r['run']}: {quant}-bit quantization restores forgotten answers "
                                  "(Zhang et al.: 21 % -> 83 %)", "found": r.get(quantized),
                         "found_ci95": r.get(f"{quantized}_ci95")})
        rows.append({"check": f"{r['run']}: forget quality against the retain model", "found": r["forget_quality"]})
    return rows


def samples_section(unlearned):
    from stages.common.io import read_jsonl

    parts = []
    for r in unlearned:
        path = r["directory"] / "samples.jsonl"
        rows = read_jsonl(path)[:SAMPLES_PER_RUN] if path.is_file() else []
        if rows:
            columns = ["question", "answer", "base", "oracle", "retain", "unlearned"]
            parts.append(f"### {r['run']}\n\n" + markdown_table(rows, columns))
    return "\n".join(parts)


def plot(runs, unlearned, path):
    from stages.common.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5), constrained_layout=True)
    names = [r["run"] for r in runs]

    def bars(ax, keys, title, rows=runs):
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = [r.get(key) if isinstance(r.get(key), (int, float)) else float("nan") for r in rows]
            errors = [[v - r[f"{key}_ci95"][0], r[f"{key}_ci95"][1] - v]
                      if isinstance(v, (int, float)) and (r.get(f"{key}_ci95") or [None])[0] is not None
                      else [0.0, 0.0] for v, r in zip(values, rows, strict=True)]
            ax.bar([x + i * width for x in range(len(rows))], values, width, label=key,
                   yerr=[[max(0.0, e[0]) for e in errors], [max(0.0, e[1]) for e in errors]], capsize=2,
                   error_kw={"elinewidth": 0.8})
        ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(rows))], [r["run"] for r in rows],
                      rotation=30, ha="right")
        ax.set_title(title)
        ax.legend(fontsize=7)

    bars(axes[0, 0], ["forget_qa_accuracy", "retain_qa_accuracy", "holdout_qa_accuracy", "world_qa_accuracy"],
         "probe accuracy (95 % patient-level intervals)")
    axes[0, 0].set_ylim(0, 1)
    bars(axes[0, 1], ["mia_loss_auc", "mia_zlib_auc", "mia_mink_auc", "mia_minkpp_auc"],
         "membership AUC, forget vs holdout (0.5 = none)")
    axes[0, 1].axhline(0.5, color="gray", linestyle="--")
    axes[0, 1].set_ylim(0, 1)
    axes[0, 2].bar(names, [r["uncertainty_ratio"] for r in runs], color="tab:blue")
    axes[0, 2].axhline(1.0, color="gray", linestyle="--")
    axes[0, 2].set_title("forget uncertainty ratio (base = 1)")
    axes[0, 2].tick_params(axis="x", rotation=30)
    axes[1, 0].bar(names, [r["retain_perplexity"] or float("nan") for r in runs], color="tab:orange")
    axes[1, 0].set_title("retain perplexity")
    axes[1, 0].tick_params(axis="x", rotation=30)
    if unlearned:
        keys = sorted({metric_key(x["name"], x["k"], x["variant"]) for r in unlearned for x in r["records"]
                       if x["name"].endswith("_recovery") and x["k"] not in (None, 0)})
        bars(axes[1, 1], keys, "recovery over knowable facts (0 = retain model, 1 = oracle)", unlearned)
        axes[1, 1].axhline(0.5, color="gray", linestyle="--")
        ax = axes[1, 2]
        for r in unlearned:
            curve = by_k(r["records"], "relearn_accuracy")
            steps = sorted(curve)
            values = [curve[k]["value"] for k in steps]
            cis = [curve[k]["ci95"] or [curve[k]["value"]] * 2 for k in steps]
            line = ax.errorbar(steps, values, yerr=[[v - c[0] for v, c in zip(values, cis, strict=True)],
                                                    [c[1] - v for v, c in zip(values, cis, strict=True)]],
                               marker="o", capsize=3, label=r["run"])
            taught, control = (by_k(r["records"], name) for name in ("relearn_train_accuracy", "relearn_control"))
            if all(k in taught for k in steps):  # the attack's positive control
                ax.plot(steps, [taught[k]["value"] for k in steps], linestyle="-.", marker=".",
                        color=line[0].get_color(), alpha=0.6)
            ax.plot(steps, [control[k]["value"] for k in steps], linestyle=":", color="gray")
            ax.axhline(r["relearn_oracle_accuracy"], color="black", linestyle="--", linewidth=0.8)
        ax.set_xlabel("relearning steps k (on forget half T)")
        ax.set_ylabel("accuracy on forget half V (dash-dot: on T)")
        ax.set_ylim(0, 1)
        ax.set_title("relearning: dash-dot = T itself, dotted = retain on V, dashed = oracle", fontsize=8)
        ax.legend(fontsize=7)
    else:
        axes[1, 1].axis("off")
        axes[1, 2].axis("off")
    save_figure(fig, path)


@click.command("report", cls=StageCommand, example=(
    "unforgotten report --eval-dir outputs/eval --models-dir models --unlearn-dir outputs/unlearn "
    "--output-dir outputs/report"), groups={
    "Data": "eval_dir models_dir unlearn_dir",
    "Output": "output_dir"})
@click.option("--eval-dir", "--eval_dir", "eval_dir", type=click.Path(file_okay=False), default="outputs/eval",
              show_default=True, help="Holds one directory per evaluated run.")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False),
              default="outputs/report", show_default=True,
              help="Where report.md, the headline and across-seed tables and the figures go.")
@click.option("--models-dir", "--models_dir", "models_dir", type=click.Path(file_okay=False), default="models",
              show_default=True, help="Fine-tuned models (*/train_log.json): their loss curves go to training.png.")
@click.option("--unlearn-dir", "--unlearn_dir", "unlearn_dir", type=click.Path(file_okay=False),
              default="outputs/unlearn", show_default=True,
              help="Unlearning runs (*/trajectory.json, summary.json): their trajectories go to trajectories.png.")
def report(**options):
    """One report of all evaluated runs: report.md, report.csv and headline.json (the verdict table), report.png;
    the fine-tuning losses (training.png) and the unlearning trajectories (trajectories.png)."""
    run(config_of(report, options))


def run(config):
    """report's work: read every evaluated run, write the verdict table, the summaries, the checks and the plots."""
    import csv
    import io
    from pathlib import Path

    from stages.common.io import atomic_path, write_json

    runs = sorted(read_runs(Path(config.eval_dir)), key=run_order)
    if not runs:
        raise click.ClickException(f"{config.eval_dir}: no */results.jsonl to report.")
    unlearned = [r for r in runs if "verdict" in r]
    seeds = across_seeds(unlearned)
    out = Path(config.output_dir)
    text = io.StringIO()
    columns = ["run", "method", "forget_set", "seed"]
    for r in unlearned:
        columns += [k for k in headline_keys(r["records"]) if k not in columns]
    columns.append("verdict_rule")
    csv_rows = [{"run": r["run"], "method": r["method"], "forget_set": r["forget_set"], "seed": r["seed"],
                 **with_intervals(columns[4:-1], r), "verdict_rule": r["verdict_rule"]} for r in unlearned]
    fields = list(dict.fromkeys(k for row in csv_rows for k in row)) or columns
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows)
    with atomic_path(out / "report.csv") as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")
    # The same headline numbers as DVC metrics (`dvc exp show`, `dvc metrics diff`), one entry per unlearned run.
    # With several seeds, each method x forget set's mean and sd under "<method>-f<NN>" (beside its seeds' runs).
    headline = {r["run"]: with_intervals(headline_keys(r["records"]), r) for r in unlearned}
    for row in seeds:
        if row["n_seeds"] > 1 and row["forget_set"] is not None:
            headline[f"{row['method']}-f{row['forget_set']}"] = {
                "n_seeds": row["n_seeds"], **{k: v for k, v in row.items() if k.endswith(("_mean", "_sd"))}}
    write_json(out / "headline.json", headline)
    sections = [
        "# unforgotten report\n",
        "## Verdicts: method x forget ratio\n\n" + HOW_TO_READ,
        markdown_table(unlearned, columns) if unlearned else "No unlearned run evaluated yet.\n",
        "## Across training seeds (mean ± sample sd [min, max] over the seeds; each seed's verdict)\n",
        seeds_table(seeds) if seeds else "No unlearned run evaluated yet.\n",
        "## Models compared (forget-set uncertainty, retain health, knowledge)\n",
        markdown_table(runs, COMPARISON),
        "## The literature's sanity checks (docs/metrics.md §F)\n",
        markdown_table([{**row, "found_ci95": row.get("found_ci95")} for row in sanity_rows(runs)],
                       ["check", "found"]),
        "## Answers side by side (forget probes)\n",
        samples_section(unlearned) or "No unlearned run evaluated yet.\n",
        "![report](report.png)\n",
    ]
    from stages.common.io import read_json
    from stages.common.plots import loss_curves, trajectories_plot

    # the evaluated runs' own logs only: a directory that no stage of this pipeline wrote (an older run) stays out
    logs = [p for r in runs if (p := Path(config.models_dir) / r["run"] / "train_log.json").is_file()]
    trajectories = [p for r in unlearned if (p := Path(config.unlearn_dir) / r["run"] / "trajectory.json").is_file()]
    steps = {p.parent.name: read_json(p)["steps"] for p in logs}  # each file read once, for the plots and the data
    trajectory_rows = {p.parent.name: read_json(p) for p in trajectories}
    if logs:
        sections.append("![fine-tuning loss](training.png)\n")
    if trajectories:
        sections.append("![unlearning trajectories](trajectories.png)\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(sections), encoding="utf-8")
    plot(runs, unlearned, out / "report.png")
    plot_data(runs, steps, trajectory_rows, out / "plots")
    if steps:
        loss_curves({run: ([s["step"] for s in logged], [s["loss"] for s in logged]) for run, logged in steps.items()},
                    out / "training.png")
    if trajectories:
        trajectories_plot({p.parent.name: (trajectory_rows[p.parent.name], read_json(p.with_name("summary.json")))
                           for p in trajectories}, out / "trajectories.png")
    click.echo(f"report: {len(runs)} runs ({len(unlearned)} unlearned) -> {out / 'report.md'}")
