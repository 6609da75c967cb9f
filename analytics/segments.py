"""Customer segments: K-means (scikit-learn) on log-scaled, standardised RFM, k chosen by silhouette.

Why these choices:
- log1p before standardising: frequency and monetary are heavy-tailed (on Online Retail the top 1% of customers
  hold about a third of the revenue); on raw values K-means spends its clusters on a handful of wholesalers.
- k by the mean silhouette over `k_min..k_max` (on a fixed random sample of customers, so the choice is
  reproducible and costs O(sample^2), not O(customers^2)); the elbow curve (inertia per k) is reported beside it.
- names from the centroids, not from cluster numbers: each centroid's recency and its mean frequency/monetary
  are placed in thirds of the customers' own distribution and looked up in `NAMES` (the classic RFM grid:
  recent and valuable = "champions", valuable but gone quiet = "at risk", ...). Two clusters landing in one cell
  keep the name with a rank suffix, so a name always identifies one segment.
- the segments have to mean something: on the time split, customers' next-period revenue is compared across
  segments with the Kruskal-Wallis test (rank-based: next-period revenue is mostly zeros plus a long tail, which
  an ANOVA's normality assumption does not survive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from feature_store.config import ConfigError

# recency third (0 = long ago, 2 = recent) x value third (0 = low, 2 = high) -> segment name
NAMES: dict[tuple[int, int], str] = {
    (2, 2): "champions", (2, 1): "potential loyalists", (2, 0): "new customers",
    (1, 2): "loyal", (1, 1): "need attention", (1, 0): "about to sleep",
    (0, 2): "at risk", (0, 1): "hibernating", (0, 0): "lost",
}
BASE_FEATURES = ("recency_days", "frequency", "monetary")
EXTRA_FEATURES = ("tenure_days", "avg_order_value")


@dataclass(frozen=True)
class SegmentModel:
    """A fitted segmentation: the scaler and K-means, the features, and each cluster's name."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray
    names: tuple[str, ...]
    k: int

    def transform(self, customers: pa.Table) -> np.ndarray:
        return (_log_features(customers, self.features) - self.mean) / self.scale

    def assign(self, customers: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Each customer's nearest centroid and the distance to it (in standardised units)."""
        x = self.transform(customers)
        d2 = ((x[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        label = d2.argmin(axis=1)
        return label, np.sqrt(d2[np.arange(len(label)), label])


def _log_features(customers: pa.Table, features: tuple[str, ...]) -> np.ndarray:
    cols = []
    for f in features:
        v = customers.column(f).to_numpy().astype(np.float64)
        cols.append(np.log1p(np.maximum(v, 0.0)))
    return np.column_stack(cols)


def choose_k(x: np.ndarray, k_min: int, k_max: int, *, sample: int, seed: int,
             progress: Any = None) -> list[dict[str, float]]:
    """Inertia and mean silhouette for each k in `k_min..k_max` (silhouette on one fixed sample of rows)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    curve = []
    for k in range(k_min, k_max + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        sil = float(silhouette_score(x[rows], km.labels_[rows])) if len(np.unique(km.labels_[rows])) > 1 else -1.0
        curve.append({"k": k, "inertia": float(km.inertia_), "silhouette": sil})
        if progress is not None:
            progress(k)
    return curve


def _thirds(values: np.ndarray, population: np.ndarray) -> np.ndarray:
    """0, 1 or 2: where each value falls among the population's terciles."""
    cuts = np.quantile(population, [1 / 3, 2 / 3])
    return np.searchsorted(cuts, values, side="right")


def name_clusters(customers: pa.Table, labels: np.ndarray, k: int) -> tuple[str, ...]:
    """A name per cluster from its median customer (see the module docstring)."""
    rec = customers.column("recency_days").to_numpy()
    val = np.log1p(customers.column("frequency").to_numpy().astype(np.float64)) + \
        np.log1p(np.maximum(customers.column("monetary").to_numpy(), 0.0))
    med_rec = np.array([np.median(rec[labels == c]) for c in range(k)])
    med_val = np.array([np.median(val[labels == c]) for c in range(k)])
    r3 = 2 - _thirds(med_rec, rec)  # recent = small recency = third 2
    v3 = _thirds(med_val, val)
    base = [NAMES[(int(r), int(v))] for r, v in zip(r3, v3)]
    names = list(base)
    for name in set(base):
        members = [c for c in range(k) if base[c] == name]
        if len(members) > 1:  # the more valuable cluster keeps the plain name
            for rank, c in enumerate(sorted(members, key=lambda c: -med_val[c])):
                names[c] = name if rank == 0 else f"{name} ({rank + 1})"
    return tuple(names)


def fit_segments(customers: pa.Table, *, features: tuple[str, ...], k_min: int, k_max: int, sample: int,
                 seed: int, k: int | None = None, progress: Any = None) -> tuple[SegmentModel, list[dict[str, float]]]:
    """Fit the segmentation on `customers` (`customers.customers_at`): the silhouette/elbow curve, the chosen k
    (`k` fixes it), the model. Refuses fewer customers than clusters."""
    from sklearn.cluster import KMeans

    if customers.num_rows < max(k_max, k or 0) * 2:
        raise ConfigError(f"analytics.segments: {customers.num_rows} customers cannot form up to {k_max} segments; "
                          f"lower analytics.segments.k_max or use more data")
    raw = _log_features(customers, features)
    mean, scale = raw.mean(axis=0), raw.std(axis=0)
    constant = [f for f, s in zip(features, scale) if s == 0]
    if constant:
        raise ConfigError(f"analytics.segments.features: {constant} take one value for every customer; drop them")
    x = (raw - mean) / scale
    curve = choose_k(x, k_min, k_max, sample=sample, seed=seed, progress=progress)
    chosen = k if k is not None else int(max(curve, key=lambda c: c["silhouette"])["k"])
    km = KMeans(n_clusters=chosen, n_init=10, random_state=seed).fit(x)
    empty = [c for c in range(chosen) if not np.any(km.labels_ == c)]
    if empty:  # K-means in scikit-learn relocates empty clusters; reaching here means duplicate points only
        raise ConfigError(f"analytics.segments: segment(s) {empty} came out empty at k={chosen}; lower k")
    names = name_clusters(customers, km.labels_, chosen)
    model = SegmentModel(features=features, mean=mean, scale=scale, centroids=km.cluster_centers_, names=names,
                         k=chosen)
    return model, curve


def segment_summary(customers: pa.Table, labels: np.ndarray, model: SegmentModel) -> list[dict[str, Any]]:
    """Size and value per segment: customers, share, median RFM, revenue and its share."""
    monetary = customers.column("monetary").to_numpy()
    total = float(monetary.sum()) or 1.0
    rows = []
    for c in range(model.k):
        m = labels == c
        rows.append({
            "segment_id": c, "segment": model.names[c], "customers": int(m.sum()), "share": float(m.mean()),
            "median_recency_days": float(np.median(customers.column("recency_days").to_numpy()[m])),
            "median_frequency": float(np.median(customers.column("frequency").to_numpy()[m])),
            "median_monetary": float(np.median(monetary[m])),
            "revenue": float(monetary[m].sum()), "revenue_share": float(monetary[m].sum() / total),
        })
    return sorted(rows, key=lambda r: -r["revenue"])


def next_revenue_test(labels: np.ndarray, next_revenue: np.ndarray, names: tuple[str, ...],
                      alpha: float = 0.05) -> dict[str, Any]:
    """Does next-period revenue differ between segments? Kruskal-Wallis across the segments, and per segment the
    mean next-period revenue with its t-interval (1 - alpha)."""
    groups = [next_revenue[labels == c] for c in range(len(names))]
    present = [g for g in groups if len(g) > 0]
    varied = len(present) > 1 and np.ptp(np.concatenate(present)) > 0
    # one segment, or the same revenue for everyone (e.g. nobody bought again): the test cannot tell them apart
    h, p = stats.kruskal(*present) if varied else (float("nan"), float("nan"))
    per = []
    for c, g in enumerate(groups):
        n = len(g)
        mean = float(g.mean()) if n else float("nan")
        half = float(stats.t.ppf(1 - alpha / 2, n - 1) * stats.sem(g)) if n > 1 else float("nan")
        per.append({"segment_id": c, "segment": names[c], "customers": n, "mean_next_revenue": mean,
                    "low": mean - half, "high": mean + half,
                    "share_buying_again": float(np.mean(g > 0)) if n else float("nan")})
    return {"test": "Kruskal-Wallis", "statistic": float(h), "p_value": float(p), "alpha": alpha,
            "significant": bool(p < alpha), "segments": per,
            "note": None if varied else "next-period revenue does not vary between customers: nothing to test"}
