"""Plots written as PNG files (matplotlib, headless)."""

from stages.common.io import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def loss_curves(curves, path):
    """Each fine-tuned model's training loss against its optimizer step, one line per model: {name: (steps,
    losses)}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, losses) in curves.items():
        ax.plot(steps, losses, marker="o", markersize=2, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_yscale("log")
    ax.set_title("fine-tuning loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def trajectories_plot(runs, path):
    """The prototype's three panels per unlearning run, a row each: loss, retain perplexity with the collapse line,
    forget entropy with the base line. `runs`: {name: (trajectory, summary)} (unlearn's JSON files)."""
    plt = pyplot()
    fig, rows = plt.subplots(len(runs), 3, figsize=(14, 3.6 * len(runs)), squeeze=False, constrained_layout=True)
    for axes, (name, (trajectory, summary)) in zip(rows, runs.items(), strict=True):
        steps = [t["step"] for t in trajectory]
        trained = [t for t in trajectory if t["loss"] is not None]
        axes[0].plot([t["step"] for t in trained], [t["loss"] for t in trained], marker="o", markersize=3)
        axes[0].set_title(f"{name}: unlearning loss")
        axes[1].plot(steps, [t["perplexity"] for t in trajectory], marker="o", markersize=3,
                     label="retain perplexity")
        axes[1].axhline(summary["perplexity_threshold"], color="red", linestyle="--", label="collapse threshold")
        axes[1].set_title(f"{name}: retain perplexity" + (" (stopped early)" if summary["stopped_early"] else ""))
        if max(t["perplexity"] for t in trajectory) > 50 * min(t["perplexity"] for t in trajectory):
            axes[1].set_yscale("log")  # a collapse spans orders of magnitude
        axes[1].legend(fontsize=8)
        measured = [t for t in trajectory if t.get("entropy") is not None]
        axes[2].plot([t["step"] for t in measured], [t["entropy"] for t in measured], marker="o", markersize=3,
                     label="model")
        if summary.get("base_entropy") is not None:
            axes[2].axhline(summary["base_entropy"], color="gray", linestyle="--", label="base model")
        axes[2].set_title(f"{name}: forget-set mean entropy (nats)")
        axes[2].legend(fontsize=8)
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    save_figure(fig, path)
