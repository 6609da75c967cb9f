"""The plots of a promotion review: both models drawn on the same held-out data, so a reviewer sees the
difference the gate measured rather than two unrelated pictures.

Figures come from `training.common.plots` (the ROC curve of several models is its `plot_roc`; the canvas is its
`new_figure`: matplotlib's Agg canvas without pyplot, so this works headless and inside Ray workers). `png`
turns one into the bytes the review writes and embeds.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from training.common.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def score_histogram_figure(probs: Mapping[str, np.ndarray], title: str = "Predicted click probability") -> Figure:
    """Histograms of several models' predicted probabilities on the same rows (shared bins)."""
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 51)
    for name, p in probs.items():
        ax.hist(np.asarray(p, dtype=np.float64), bins=bins, histtype="step", lw=1.6, label=name)
    ax.set(xlabel="probability", ylabel="rows", title=title, yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def recall_figure(curves: Mapping[str, Mapping[int, float]], title: str = "Recall@K on the held-out queries") -> Figure:
    """Recall@K against K for several retrievers evaluated on the same queries."""
    fig = new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", lw=1.8, label=name)
    ax.set(xscale="log", xlabel="K", ylabel="recall@K", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (written next to review.md, embedded in review.html)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
