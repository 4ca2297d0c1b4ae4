"""`unforgotten report`: aggregate outputs/eval/<run>/metrics.json into one table and a chart."""

import click

COLUMNS = ["run", "mean_entropy", "uncertainty_ratio", "retain_perplexity", "first_token_entropy", "max_entropy",
           "num_prompts", "uq_verdict"]
REFERENCE_ORDER = ["base", "oracle"]


def run_order(name):
    """base, oracle, retain-*, then unlearned runs, each group by name."""
    if name in REFERENCE_ORDER:
        return (0, REFERENCE_ORDER.index(name), name)
    return (1 if name.startswith("retain-") else 2, 0, name)


def markdown_table(rows):
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@click.command("report")
@click.option("--eval-dir", "--eval_dir", "eval_dir", type=click.Path(file_okay=False), default="outputs/eval",
              show_default=True, help="Holds one directory per evaluated run.")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False),
              default="outputs/report", show_default=True)
def report(eval_dir, output_dir):
    """One table of all evaluated runs (report.md, report.csv) and a chart (report.png)."""
    import csv
    import io
    from pathlib import Path

    from stages.common.io import atomic_path, read_json
    from stages.common.plots import pyplot, save_figure

    runs = sorted((read_json(p) for p in Path(eval_dir).glob("*/metrics.json")), key=lambda m: run_order(m["run"]))
    if not runs:
        raise click.ClickException(f"{eval_dir}: no */metrics.json to report.")
    out = Path(output_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(runs)
    with atomic_path(out / "report.csv") as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("# unforgotten report\n\nForget-set uncertainty and retain health of every evaluated "
                       "model (VERIFY.md section A).\n\n" + markdown_table(runs), encoding="utf-8")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["run"] for r in runs]
    axes[0].bar(names, [r["uncertainty_ratio"] for r in runs], color="tab:blue")
    axes[0].axhline(1.0, color="gray", linestyle="--")
    axes[0].set_title("uncertainty ratio on the forget set (base = 1)")
    axes[1].bar(names, [r["retain_perplexity"] for r in runs], color="tab:orange")
    axes[1].set_title("retain perplexity")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, out / "report.png")
    click.echo(f"report: {len(runs)} runs -> {out / 'report.md'}")
