"""The CTR metrics of RecForge: AUC, gAUC, logloss, calibration, reliability, ROC curve and the bundle.

The top-K retrieval metrics live in `training.common.topk_metrics`, the figures in `training.common.plots`.

Everything is columnar: one sort, then segment reductions (`np.add.reduceat`, `np.cumsum`); no Python loop
over rows, groups or users. Inputs are numpy arrays or torch tensors (via `.detach().cpu().numpy()`);
outputs are Python floats or small frozen dataclasses. Counting is done in int64, so AUC
and gAUC are exact (ties get average ranks, i.e. a tied positive/negative pair counts one half).

Conventions:
- labels are binary (0/1, any numeric or bool dtype); probabilities must lie in [0, 1];
- a metric that is undefined on its input (AUC with one class, calibration with no positive) is NaN,
  never an exception; malformed input (length mismatch, NaN scores, non-binary labels) raises `ValueError`
  naming the argument, the first offending index and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

ArrayLike = Any  # np.ndarray | torch.Tensor | Sequence[float]
Strategy = Literal["uniform", "quantile"]

__all__ = [
    "GAUCResult",
    "ReliabilityCurve",
    "auc",
    "calibration",
    "ctr_metrics",
    "expected_calibration_error",
    "gauc",
    "logloss",
    "reliability_curve",
    "roc_curve",
]


# ---------------------------------------------------------------------------------------- input checks
def _to_numpy(x: ArrayLike, name: str, fn: str) -> np.ndarray:
    """A 1-D numpy view of `x` (numpy, torch tensor on any device, or sequence); B x 1 is flattened."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        t = x.detach()
        if t.is_floating_point() and t.element_size() < 4:  # bf16 has no numpy dtype
            t = t.float()
        x = t.cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{fn}: '{name}' must be 1-D (or B x 1), got shape {arr.shape}; flatten it first")
    return arr


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _labels(x: ArrayLike, fn: str) -> np.ndarray:
    """Binary labels as int64 0/1; raises naming the first value that is neither 0 nor 1."""
    y = _to_numpy(x, "labels", fn)
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{fn}: 'labels' must be numeric 0/1, got dtype {y.dtype}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(
            f"{fn}: 'labels' must be 0/1 (click or not); found {y[i]!r} at index {i} "
            f"({int(bad.sum())} such values); binarize the labels before evaluating"
        )
    return y.astype(np.int64)


def _scores(x: ArrayLike, name: str, fn: str, n: int, *, unit: bool = False) -> np.ndarray:
    """Finite float scores of length n; with `unit`, also within [0, 1] (probabilities)."""
    s = _to_numpy(x, name, fn)
    if s.shape[0] != n:
        raise ValueError(f"{fn}: 'labels' has {n} rows but '{name}' has {s.shape[0]}; pass aligned arrays")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"{fn}: '{name}' must be real numbers, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating):
        bad = ~np.isfinite(s)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(
                f"{fn}: '{name}' has {int(bad.sum())} NaN/inf values (first {s[i]!r} at index {i}); "
                "the model output diverged or the batch was not filled: fix it before evaluating"
            )
    if unit:
        bad = (s < 0) | (s > 1)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(
                f"{fn}: '{name}' must be probabilities in [0, 1]; found {s[i]!r} at index {i} "
                f"({int(bad.sum())} such values); pass sigmoid(logits), not logits"
            )
    return s


# ---------------------------------------------------------------------------------------- AUC core
def _dense_ranks(s: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense rank (0-based, ties share a rank) of each score given `order = argsort(s)`; and the count."""
    ss = s[order]
    new = np.empty(ss.shape[0], dtype=bool)
    new[:1] = True
    np.not_equal(ss[1:], ss[:-1], out=new[1:])
    ranks = np.empty(ss.shape[0], dtype=np.int64)
    ranks[order] = np.cumsum(new) - 1
    return ranks, int(ranks.max()) + 1 if ranks.size else 0


def _group_codes(g: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-negative int64 codes for the group keys (order-preserving) and their count bound."""
    if np.issubdtype(g.dtype, np.integer) and g.size:
        lo, hi = int(g.min()), int(g.max())
        if hi - lo < g.size * 4:  # compact id space: shift, no sort needed
            return (g - g.min()).astype(np.int64), hi - lo + 1
    uniq, inv = np.unique(g, return_inverse=True)
    return inv.astype(np.int64).reshape(-1), int(uniq.size)


def _segment_auc_parts(
    y: np.ndarray, key: np.ndarray, group: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group (2 * Mann-Whitney U, positives, negatives) from rows sorted by (group, score).

    `key` identifies a tie run (same group and same score), `group` the group of each sorted row (None: one
    group). For each run: neg_below = negatives of the same group with a lower score; the pair count is
    2 * neg_below * pos + pos * neg (ties count one half, doubled to stay integer).
    """
    n = y.shape[0]
    new_run = np.empty(n, dtype=bool)
    new_run[:1] = True
    np.not_equal(key[1:], key[:-1], out=new_run[1:])
    run_starts = np.flatnonzero(new_run)
    pos = np.add.reduceat(y, run_starts)
    cnt = np.diff(np.append(run_starts, n))
    neg = cnt - pos
    neg_excl = np.cumsum(neg) - neg  # negatives before this run, over all groups
    if group is None:
        grp_starts = np.zeros(1, dtype=np.int64)
        neg_below = neg_excl
    else:
        run_group = group[run_starts]
        new_grp = np.empty(run_group.shape[0], dtype=bool)
        new_grp[:1] = True
        np.not_equal(run_group[1:], run_group[:-1], out=new_grp[1:])
        grp_starts = np.flatnonzero(new_grp)
        run_gid = np.cumsum(new_grp) - 1
        neg_below = neg_excl - neg_excl[grp_starts][run_gid]
    u2 = 2 * neg_below * pos + pos * neg
    return (
        np.add.reduceat(u2, grp_starts),
        np.add.reduceat(pos, grp_starts),
        np.add.reduceat(neg, grp_starts),
    )


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC (probability a random positive outscores a random negative; ties count one half).

    Args:
        labels: N binary labels.
        scores: N real scores (probabilities or logits: only their order matters).
    Returns:
        The AUC, equal to `sklearn.metrics.roc_auc_score`; NaN when only one class (or no row) is present.
    """
    y = _labels(labels, "auc")
    return _auc(y, _scores(scores, "scores", "auc", y.shape[0]))


def _auc(y: np.ndarray, s: np.ndarray, order: np.ndarray | None = None) -> float:
    """AUC of validated arrays; `order` is argsort(s) when the caller already has it."""
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    if order is None:
        order = np.argsort(s)
    u2, _, _ = _segment_auc_parts(y[order], s[order], None)
    return float(u2[0]) / (2.0 * n_pos * n_neg)


@dataclass(frozen=True)
class GAUCResult:
    """Group AUC: impression-weighted mean of per-group AUC over the groups that have both classes.

    Attributes:
        value: the gAUC (NaN when no group has both a click and a non-click).
        groups_used: groups with both classes (those that enter the average).
        groups_total: distinct groups in the input.
        impressions_used: rows of the used groups (the sum of the weights).
    """

    value: float
    groups_used: int
    groups_total: int
    impressions_used: int


def gauc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> GAUCResult:
    """Group AUC (DIN / industry definition): sum_g n_g * AUC_g / sum_g n_g over groups with both classes.

    One global sort by the composite key (group, dense score rank), then per-run and per-group segment sums;
    cost O(N log N) whatever the number of groups.

    Args:
        labels: N binary labels.
        scores: N real scores.
        groups: N group keys (user ids; any integer or sortable dtype).
    """
    y = _labels(labels, "gauc")
    s = _scores(scores, "scores", "gauc", y.shape[0])
    g = _to_numpy(groups, "groups", "gauc")
    if g.shape[0] != y.shape[0]:
        raise ValueError(
            f"gauc: 'labels' has {y.shape[0]} rows but 'groups' has {g.shape[0]}; pass aligned arrays"
        )
    return _gauc(y, s, g)


def _gauc(y: np.ndarray, s: np.ndarray, g: np.ndarray, order: np.ndarray | None = None) -> GAUCResult:
    """gAUC of validated, aligned arrays; `order` is argsort(s) when the caller already has it."""
    if y.shape[0] == 0:
        return GAUCResult(float("nan"), 0, 0, 0)
    rank, n_ranks = _dense_ranks(s, np.argsort(s) if order is None else order)
    code, n_codes = _group_codes(g)
    if n_codes > (2**62) // (n_ranks + 1):  # composite key would overflow int64: densify the groups
        code = np.unique(code, return_inverse=True)[1].reshape(-1).astype(np.int64)
    key = code * n_ranks + rank
    order = np.argsort(key)
    u2, pos, neg = _segment_auc_parts(y[order], key[order], code[order])
    ok = (pos > 0) & (neg > 0)
    groups_total = int(pos.shape[0])
    if not ok.any():
        return GAUCResult(float("nan"), 0, groups_total, 0)
    p, q = pos[ok].astype(np.float64), neg[ok].astype(np.float64)
    w = p + q
    value = float(np.sum(w * (u2[ok] / (2.0 * p * q))) / np.sum(w))
    return GAUCResult(value, int(ok.sum()), groups_total, int(w.sum()))


# ---------------------------------------------------------------------------------------- loss, calibration
def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probs clipped to [eps, 1 - eps] (= sklearn `log_loss`); NaN if empty."""
    y = _labels(labels, "logloss")
    return _logloss(y, _scores(probs, "probs", "logloss", y.shape[0], unit=True), eps)


def _logloss(y: np.ndarray, p: np.ndarray, eps: float) -> float:
    if y.shape[0] == 0:
        return float("nan")
    p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    p_true = np.where(y == 1, p, 1.0 - p)  # 1 - p is exact for p >= 0.5, so one log keeps full precision
    return float(-np.mean(np.log(p_true)))


def calibration(labels: ArrayLike, probs: ArrayLike) -> float:
    """Mean predicted CTR / observed CTR (1.0 is calibrated, > 1 over-predicts); NaN when no positive."""
    y = _labels(labels, "calibration")
    p = _scores(probs, "probs", "calibration", y.shape[0], unit=True)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    return float(np.sum(p, dtype=np.float64) / n_pos)


@dataclass(frozen=True)
class ReliabilityCurve:
    """A reliability diagram: per non-empty bin, its edges, mean prediction, observed rate and row count.

    Bins are (lower, upper], the first one also closed on the left (as `sklearn.calibration_curve`).
    All arrays have one entry per non-empty bin, in increasing order.
    """

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    counts: np.ndarray
    strategy: str

    @property
    def ece(self) -> float:
        """Expected calibration error: sum_b (n_b / N) * |mean_predicted_b - observed_rate_b|."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        return float(np.sum(self.counts * np.abs(self.mean_predicted - self.observed_rate)) / total)


def reliability_curve(
    labels: ArrayLike, probs: ArrayLike, n_bins: int = 10, strategy: Strategy = "uniform"
) -> ReliabilityCurve:
    """Bin the predictions ("uniform": equal-width on [0, 1]; "quantile": equal-count) and compare.

    Equal to `sklearn.calibration.calibration_curve` (mean_predicted = prob_pred, observed_rate = prob_true).
    For CTR data (probabilities mostly < 0.1), "quantile" spreads the bins where the predictions are.
    """
    y = _labels(labels, "reliability_curve")
    p = _scores(probs, "probs", "reliability_curve", y.shape[0], unit=True)
    return _reliability(y, p, n_bins, strategy)


def _reliability(y: np.ndarray, p: np.ndarray, n_bins: int, strategy: str) -> ReliabilityCurve:
    if n_bins < 1:
        raise ValueError(f"reliability_curve: n_bins must be >= 1, got {n_bins}")
    p = p.astype(np.float64)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        if p.size == 0:
            edges = np.linspace(0.0, 1.0, n_bins + 1)
        else:
            edges = np.percentile(p, np.linspace(0.0, 100.0, n_bins + 1))
    else:
        raise ValueError(f"reliability_curve: strategy must be 'uniform' or 'quantile', got {strategy!r}")
    bin_id = np.searchsorted(edges[1:-1], p, side="left")
    counts = np.bincount(bin_id, minlength=n_bins)
    sum_pred = np.bincount(bin_id, weights=p, minlength=n_bins)
    sum_true = np.bincount(bin_id, weights=y, minlength=n_bins)
    keep = counts > 0
    c = counts[keep]
    return ReliabilityCurve(
        bin_lower=edges[:-1][keep],
        bin_upper=edges[1:][keep],
        mean_predicted=sum_pred[keep] / c,
        observed_rate=sum_true[keep] / c,
        counts=c.astype(np.int64),
        strategy=strategy,
    )


def expected_calibration_error(
    labels: ArrayLike, probs: ArrayLike, n_bins: int = 10, strategy: Strategy = "uniform"
) -> float:
    """ECE over the bins of `reliability_curve`: count-weighted mean |predicted - observed|; NaN if empty."""
    return reliability_curve(labels, probs, n_bins=n_bins, strategy=strategy).ece


# ---------------------------------------------------------------------------------------- ROC curve
def roc_curve(
    labels: ArrayLike, scores: ArrayLike, max_points: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve (fpr, tpr, thresholds), thresholds decreasing, starting at (0, 0) with threshold +inf.

    With at most `max_points - 1` distinct scores it equals
    `sklearn.metrics.roc_curve(drop_intermediate=False)`.
    Longer curves are downsampled for plotting to points evenly spaced along the curve (by fpr + tpr), always
    keeping both ends; every returned point lies on the exact curve.

    Raises:
        ValueError: when labels hold a single class (the curve is undefined).
    """
    if max_points < 2:
        raise ValueError(f"roc_curve: max_points must be >= 2, got {max_points}")
    y = _labels(labels, "roc_curve")
    s = _scores(scores, "scores", "roc_curve", y.shape[0])
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_curve: labels hold {n_pos} positives and {n_neg} negatives; "
            "the ROC curve needs both classes"
        )
    order = np.argsort(s)[::-1]
    ss, ys = s[order], y[order]
    last = np.empty(ss.shape[0], dtype=bool)  # last row of each tie run, scanning high to low
    np.not_equal(ss[1:], ss[:-1], out=last[:-1])
    last[-1] = True
    idx = np.flatnonzero(last)
    tps = np.cumsum(ys)[idx]
    fps = idx + 1 - tps
    fpr = np.concatenate(([0.0], fps / n_neg))
    tpr = np.concatenate(([0.0], tps / n_pos))
    thresholds = np.concatenate(([np.inf], ss[idx].astype(np.float64)))
    if fpr.shape[0] > max_points:
        length = fpr + tpr  # non-decreasing from 0 to 2
        targets = np.linspace(0.0, 2.0, max_points)[1:-1]
        pick = np.unique(np.concatenate(([0], np.searchsorted(length, targets), [fpr.shape[0] - 1])))
        fpr, tpr, thresholds = fpr[pick], tpr[pick], thresholds[pick]
    return fpr, tpr, thresholds


# ---------------------------------------------------------------------------------------- bundles
def _prefixed(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return f"{prefix}{name}" if prefix.endswith(("/", "_", ".")) else f"{prefix}/{name}"


def ctr_metrics(
    labels: ArrayLike,
    probs: ArrayLike,
    groups: ArrayLike | None = None,
    prefix: str = "",
    n_bins: int = 10,
    strategy: Strategy = "uniform",
) -> dict[str, float]:
    """The CTR evaluation bundle logged by training, reports, benchmarks and the registry gate.

    Keys: auc, logloss (eps 1e-7), calibration, ece (`n_bins`/`strategy` bins), mean_pred, observed_ctr, n
    and, with `groups`, gauc and gauc_groups_used. `prefix` "test" (or "test/") gives "test/auc"; a prefix
    ending in "_" or "." is used as is.
    """
    y = _labels(labels, "ctr_metrics")
    p = _scores(probs, "probs", "ctr_metrics", y.shape[0], unit=True)
    n = y.shape[0]
    g = None
    if groups is not None:
        g = _to_numpy(groups, "groups", "ctr_metrics")
        if g.shape[0] != n:
            raise ValueError(
                f"ctr_metrics: 'labels' has {n} rows but 'groups' has {g.shape[0]}; pass aligned arrays"
            )
    order = np.argsort(p)  # shared by auc and gauc
    sum_pred = float(np.sum(p, dtype=np.float64))
    n_pos = int(y.sum())
    nan = float("nan")
    out: dict[str, float] = {
        "auc": _auc(y, p, order),
        "logloss": _logloss(y, p, 1e-7),
        "calibration": sum_pred / n_pos if n_pos else nan,
        "ece": _reliability(y, p, n_bins, strategy).ece,
        "mean_pred": sum_pred / n if n else nan,
        "observed_ctr": n_pos / n if n else nan,
        "n": float(n),
    }
    if g is not None:
        res = _gauc(y, p, g, order)
        out["gauc"] = res.value
        out["gauc_groups_used"] = float(res.groups_used)
    return {_prefixed(prefix, k): v for k, v in out.items()}

