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


def loss_plot(steps, losses, path, title):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def trajectory_plot(trajectory, threshold, base_entropy, path, title):
    """The prototype's three panels: loss, retain perplexity with the collapse line, forget entropy with the base
    line."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    steps = [t["step"] for t in trajectory]
    trained = [t for t in trajectory if t["loss"] is not None]
    axes[0].plot([t["step"] for t in trained], [t["loss"] for t in trained], marker="o", markersize=3)
    axes[0].set_title("unlearning loss")
    axes[1].plot(steps, [t["perplexity"] for t in trajectory], marker="o", markersize=3, label="retain perplexity")
    axes[1].axhline(threshold, color="red", linestyle="--", label="collapse threshold")
    axes[1].set_title("retain perplexity")
    if max(t["perplexity"] for t in trajectory) > 50 * min(t["perplexity"] for t in trajectory):
        axes[1].set_yscale("log")  # a collapse spans orders of magnitude
    axes[1].legend(fontsize=8)
    measured = [t for t in trajectory if t.get("entropy") is not None]
    axes[2].plot([t["step"] for t in measured], [t["entropy"] for t in measured], marker="o", markersize=3,
                 label="model")
    if base_entropy is not None:
        axes[2].axhline(base_entropy, color="gray", linestyle="--", label="base model")
    axes[2].set_title("forget-set mean entropy (nats)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(fig, path)
