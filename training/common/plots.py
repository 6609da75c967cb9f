"""Evaluation figures: ROC curve, reliability diagram and loss curves, as matplotlib Figures.

Each function returns a Figure on the Agg canvas, built without pyplot's global state (safe in workers and
headless servers), ready for `savefig` or MLflow. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from training.common.metrics import ArrayLike, Strategy, auc, reliability_curve, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "plot_loss_curves", "plot_reliability", "plot_roc"]


def new_figure(width: float = 5.0, height: float = 4.5) -> Figure:
    """A Figure on the Agg canvas, without pyplot's global state (safe in workers and headless servers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_roc(
    labels: ArrayLike, scores: ArrayLike | Mapping[str, ArrayLike], max_points: int = 1000, title: str = "ROC curve"
) -> Figure:
    """ROC curve with its AUC in the legend and the chance diagonal; a Figure ready for `savefig`/MLflow.

    `scores` is one model's scores, or {name: scores} of several models on the same labels (one curve each, as
    a promotion review draws candidate and champion)."""
    named = scores if isinstance(scores, Mapping) else {"": scores}
    fig = new_figure()
    ax = fig.add_subplot()
    for name, s in named.items():
        fpr, tpr, _ = roc_curve(labels, s, max_points=max_points)
        value = auc(labels, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {value:.4f})" if name else f"AUC = {value:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set(xlabel="False positive rate", ylabel="True positive rate")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def plot_reliability(
    labels: ArrayLike,
    probs: ArrayLike,
    n_bins: int = 10,
    strategy: Strategy = "uniform",
    title: str = "Reliability diagram",
) -> Figure:
    """Reliability diagram (observed rate vs mean prediction per bin, ECE in the legend) over row counts."""
    curve = reliability_curve(labels, probs, n_bins=n_bins, strategy=strategy)
    fig = new_figure(5.0, 6.0)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top = float(max(curve.mean_predicted.max(initial=0.0), curve.observed_rate.max(initial=0.0)))
    lim = 1.0 if strategy == "uniform" else min(1.0, top * 1.1 + 1e-6)
    ax.plot([0, lim], [0, lim], ls="--", lw=1, color="grey", label="perfectly calibrated")
    label = f"model (ECE = {curve.ece:.4f})"
    ax.plot(curve.mean_predicted, curve.observed_rate, marker="o", lw=1.8, label=label)
    ax.set(ylabel="Observed positive rate", title=title, xlim=(0, lim), ylim=(0, lim))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    widths = curve.bin_upper - curve.bin_lower
    ax_n.bar(curve.bin_lower, curve.counts, width=widths, align="edge", edgecolor="white")
    ax_n.set(xlabel="Mean predicted probability", ylabel="Rows")
    return fig


def plot_loss_curves(
    history: Mapping[str, Sequence[float]], title: str = "Loss", xlabel: str = "epoch"
) -> Figure:
    """One line per series of `history` (e.g. {"train/loss": [...], "val/loss": [...]}), x = value index."""
    if not history:
        raise ValueError("plot_loss_curves: 'history' is empty; pass e.g. {'train/loss': [0.7, 0.5]}")
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, values in history.items():
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        ax.plot(np.arange(v.shape[0]), v, marker="o" if v.shape[0] <= 30 else None, ms=3, lw=1.6, label=name)
    ax.set(xlabel=xlabel, ylabel="value", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig

