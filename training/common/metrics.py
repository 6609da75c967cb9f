"""The CTR metrics of RecForge: AUC, gAUC, logloss, calibration, reliability, ROC curve and the bundle.

The top-K retrieval metrics live in `training.common.topk_metrics`, the figures in `training.common.plots`.

Everything is columnar: sorts, binary searches and segment sums; no Python loop over rows, groups or users (the
passes over a large split run in chunks of 2**20 rows, so their temporaries do not grow with it). Inputs are numpy
arrays or torch tensors (via `.detach().cpu().numpy()`); outputs are Python floats or small frozen dataclasses.
Counting is done in int64, so AUC and gAUC are exact (a tied positive/negative pair counts one half).

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
    """Binary labels as int8 0/1 (one byte per row: sums and counts accumulate in int64); raises naming the first
    value that is neither 0 nor 1."""
    y = _to_numpy(x, "labels", fn)
    if y.dtype == np.bool_:
        return y.astype(np.int8)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{fn}: 'labels' must be numeric 0/1, got dtype {y.dtype}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(
            f"{fn}: 'labels' must be 0/1 (click or not); found {y[i]!r} at index {i} "
            f"({int(bad.sum())} such values); binarize the labels before evaluating"
        )
    return y.astype(np.int8)


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
# Rows per step of the chunked passes: their temporaries stay a few tens of MB whatever the split's size.
_CHUNK = 1 << 20
_HIGH = np.uint64(32)


def _score_keys(s: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the scores, equal exactly where the scores are equal (ties stay ties).

    float32 and narrower (what models output): the IEEE bits made order-preserving (the sign bit set for
    positive numbers, every bit flipped for negative ones; -0.0 is first made +0.0, the same score); any other
    dtype (float64, integers): the dense rank of each score."""
    if s.dtype.kind == "f" and s.dtype.itemsize <= 4:
        f = s.astype(np.float32)  # a copy, made in place below
        f += np.float32(0.0)  # -0.0 + 0.0 = +0.0
        bits = f.view(np.uint32)
        negative = bits >= np.uint32(1 << 31)
        np.invert(bits, out=bits, where=negative)
        np.bitwise_or(bits, np.uint32(1 << 31), out=bits, where=~negative)
        return bits
    if s.shape[0] >= 2**32:
        raise ValueError(f"AUC of {s.shape[0]:,} rows: more than 2**32 scores; evaluate a sample or in parts")
    return np.unique(s, return_inverse=True)[1].reshape(-1).astype(np.uint32)


def _group_codes(g: np.ndarray) -> np.ndarray:
    """uint32 codes of the group keys (equal keys, equal codes): the ids shifted when they are integers in a span
    of less than 2**32, else their dense rank."""
    if np.issubdtype(g.dtype, np.integer) and g.size:
        lo, hi = int(g.min()), int(g.max())
        if hi - lo < 2**32:  # shift, no sort needed
            return np.subtract(g, lo, out=np.empty(g.shape[0], dtype=np.uint32), casting="unsafe")
    inv = np.unique(g, return_inverse=True)[1].reshape(-1)
    if inv.size and int(inv.max()) >= 2**32:
        raise ValueError(f"gauc: more than 2**32 distinct groups in {g.shape[0]:,} rows; evaluate in parts")
    return inv.astype(np.uint32)


def _sorted_keys(key: np.ndarray, code: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """The score keys of `rows` (a mask), sorted; with `code`, under the row's group code in the high 32 bits, so
    the order is by group, then by score."""
    if code is None:
        out = key[rows]
    else:
        out = code[rows].astype(np.uint64)
        np.left_shift(out, _HIGH, out=out)
        np.bitwise_or(out, key[rows], out=out)
    out.sort()
    return out


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Index of the first row of each group (the high 32 bits) in sorted keys, scanned in chunks."""
    parts, prev = [], None
    for lo in range(0, keys.shape[0], _CHUNK):
        high = keys[lo: lo + _CHUNK] >> _HIGH
        new = np.empty(high.shape[0], dtype=bool)
        new[0] = prev is None or high[0] != prev
        np.not_equal(high[1:], high[:-1], out=new[1:])
        parts.append(np.flatnonzero(new) + lo)
        prev = high[-1]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _pair_counts(y: np.ndarray, s: np.ndarray, code: np.ndarray | None) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray, int]:
    """Per group holding a positive (one group when `code` is None): 2 * Mann-Whitney U, positives, negatives; and
    the number of distinct groups in all rows.

    Negatives and positives are sorted apart as (group, score) keys; for each positive, two binary searches in the
    negatives give the negatives of lower scores (all groups before its own, and its group's below it) and its ties,
    so per group 2 * U = sum over positives of (left + right) - 2 * positives * (the group's first negative). Memory:
    the two key arrays (4 bytes per row, 8 with groups) and chunk-sized temporaries; nothing per row of int64
    ranks or orders (22 bytes per row at 5M rows where an argsort-based AUC and gAUC held 154)."""
    is_pos = y != 0
    key = _score_keys(s)
    neg = _sorted_keys(key, code, ~is_pos)
    pos = _sorted_keys(key, code, is_pos)
    del key, is_pos
    n_pos = pos.shape[0]
    if code is None:
        starts = np.zeros(min(n_pos, 1), dtype=np.int64)
        neg_lo, neg_hi = np.zeros(starts.shape[0], dtype=np.int64), np.full(starts.shape[0], neg.shape[0])
        groups_total = int(y.shape[0] > 0)
    else:
        starts = _group_starts(pos)
        first = (pos[starts] >> _HIGH) << _HIGH
        neg_lo = np.searchsorted(neg, first, "left").astype(np.int64)
        neg_hi = np.searchsorted(neg, first + (np.uint64(1) << _HIGH), "left").astype(np.int64)
        groups_total = starts.shape[0] + _group_starts(neg).shape[0] - int(np.count_nonzero(neg_hi > neg_lo))
    ends = np.append(starts[1:], n_pos) if n_pos else starts
    at_end = np.zeros(ends.shape[0], dtype=np.int64)  # running sum of (left + right) at each group's last positive
    carry = 0
    for lo in range(0, n_pos, _CHUNK):
        hi = min(lo + _CHUNK, n_pos)
        chunk = pos[lo:hi]
        both = np.searchsorted(neg, chunk, "left").astype(np.int64)
        both += np.searchsorted(neg, chunk, "right")
        running = np.cumsum(both)
        running += carry
        i0, i1 = np.searchsorted(ends, lo, "right"), np.searchsorted(ends, hi, "right")
        at_end[i0:i1] = running[ends[i0:i1] - 1 - lo]
        carry = int(running[-1])
    pos_counts = np.diff(ends, prepend=0)
    u2 = np.diff(at_end, prepend=0) - 2 * pos_counts * neg_lo
    return u2, pos_counts, neg_hi - neg_lo, groups_total


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


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC of validated arrays."""
    n_pos = int(np.count_nonzero(y))
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u2, _, _, _ = _pair_counts(y, s, None)
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

    Negatives and positives sorted apart by (group, score), then binary searches and per-group sums (see
    `_pair_counts`); cost O(N log N) whatever the number of groups.

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


def _gauc(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> GAUCResult:
    """gAUC of validated, aligned arrays."""
    if y.shape[0] == 0:
        return GAUCResult(float("nan"), 0, 0, 0)
    u2, pos, neg, groups_total = _pair_counts(y, s, _group_codes(g))
    ok = neg > 0  # every group here has a positive
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
    total = 0.0
    for lo in range(0, y.shape[0], _CHUNK):  # float64 temporaries of one chunk, not of the split
        pc = np.clip(p[lo: lo + _CHUNK].astype(np.float64), eps, 1.0 - eps)
        p_true = np.where(y[lo: lo + _CHUNK] == 1, pc, 1.0 - pc)  # 1 - p is exact for p >= 0.5: one log suffices
        total += float(np.log(p_true).sum())
    return -total / y.shape[0]


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
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        if p.size == 0:
            edges = np.linspace(0.0, 1.0, n_bins + 1)
        else:
            edges = np.percentile(p.astype(np.float64), np.linspace(0.0, 100.0, n_bins + 1))
    else:
        raise ValueError(f"reliability_curve: strategy must be 'uniform' or 'quantile', got {strategy!r}")
    counts = np.zeros(n_bins, dtype=np.int64)
    sum_pred, sum_true = np.zeros(n_bins), np.zeros(n_bins)
    for lo in range(0, p.shape[0], _CHUNK):  # bin ids and float64 weights of one chunk at a time
        pc = p[lo: lo + _CHUNK].astype(np.float64)
        bin_id = np.searchsorted(edges[1:-1], pc, side="left")
        counts += np.bincount(bin_id, minlength=n_bins)
        sum_pred += np.bincount(bin_id, weights=pc, minlength=n_bins)
        sum_true += np.bincount(bin_id, weights=y[lo: lo + _CHUNK], minlength=n_bins)
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
    sum_pred = float(np.sum(p, dtype=np.float64))
    n_pos = int(y.sum())
    nan = float("nan")
    out: dict[str, float] = {
        "auc": _auc(y, p),
        "logloss": _logloss(y, p, 1e-7),
        "calibration": sum_pred / n_pos if n_pos else nan,
        "ece": _reliability(y, p, n_bins, strategy).ece,
        "mean_pred": sum_pred / n if n else nan,
        "observed_ctr": n_pos / n if n else nan,
        "n": float(n),
    }
    if g is not None:
        res = _gauc(y, p, g)
        out["gauc"] = res.value
        out["gauc_groups_used"] = float(res.groups_used)
    return {_prefixed(prefix, k): v for k, v in out.items()}

