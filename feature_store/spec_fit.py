"""Fitting a `FeatureSpec`: mergeable per-batch statistics of the train split, merged into vocabularies,
moments and quantile boundaries.

`SpecFitter.partial` computes plain Python/Arrow statistics of one batch (cheap to ship between Ray Data
workers), `SpecFitter.finish` merges them into a `FeatureSpec` (feature_store.spec, which owns the transform
and persistence); `SpecFitter.fit` does both over an in-memory table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import FeaturesConfig
from feature_store.spec import (
    CategoricalEntry,
    Entry,
    FeatureSpec,
    MultiValuedEntry,
    NumericEntry,
    SequenceEntry,
    SpecError,
    VectorEntry,
    _as_list,
    _column,
    _log1p,
    _to_float,
)

QUANTILE_SAMPLE = 20_000



class SpecFitter:
    """Fits a `FeatureSpec` from mergeable per-batch statistics (`partial` per batch, then `finish`)."""

    def __init__(self, cfg: FeaturesConfig, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed

    def partial(self, batch: pa.Table) -> dict[str, Any]:
        """Statistics of one batch of TRAIN rows; plain Python/Arrow objects, cheap to ship between processes."""
        out: dict[str, Any] = {"rows": batch.num_rows, "counts": {}, "moments": {}, "samples": {}}
        rng = np.random.default_rng(self.seed + batch.num_rows)
        for f in self.cfg.categorical:
            if f.hash_buckets:
                continue
            out["counts"][f.name] = _value_counts(_column(batch, f.source_column, f.name))
        for f in self.cfg.multi_valued:
            lists = _as_list(_column(batch, f.source_column, f.name), f.separator)
            out["counts"][f.name] = _value_counts(pc.list_flatten(pc.list_slice(lists, 0, f.max_len)))
        for f in self.cfg.vector:
            col = _column(batch, f.source_column, f.name)
            widths = pc.drop_null(pc.list_value_length(col)) if not pa.types.is_null(col.type) else pa.array([])
            out["widths"] = out.get("widths", {}) | {f.name: pc.unique(widths).to_pylist()}
        for f in self.cfg.numeric:
            x = _to_float(_column(batch, f.source_column, f.name))
            x = x[~np.isnan(x)]
            raw_sum = float(x.sum())
            if f.transform in ("log1p", "log1p_standardize"):
                x = _log1p(x)
            sample = x if len(x) <= QUANTILE_SAMPLE else rng.choice(x, QUANTILE_SAMPLE, replace=False)
            mean = float(x.mean()) if len(x) else 0.0
            out["moments"][f.name] = (len(x), mean, float(((x - mean) ** 2).sum()), raw_sum)
            # each kept value stands for len(x)/len(sample) values, so blocks weigh by their size in `finish`
            out["samples"][f.name] = (sample.astype(np.float64), len(x) / max(len(sample), 1))
        return out

    def finish(self, partials: Sequence[dict[str, Any]]) -> FeatureSpec:
        """Merge partial statistics into the fitted spec."""
        cfg = self.cfg
        rows = sum(p["rows"] for p in partials)
        if rows == 0:
            raise SpecError("cannot fit the feature spec: the train split is empty")
        vocabs: dict[str, pa.Array] = {}
        entries: list[Entry] = []
        for f in cfg.categorical:
            if f.hash_buckets:
                entries.append(
                    CategoricalEntry(f.name, f.source_column, f.hash_buckets + 1, f.embedding_dim, f.hash_buckets)
                )
                continue
            vocab = _merge_vocab([p["counts"][f.name] for p in partials], f.min_freq, f.max_vocab)
            vocabs[f.name] = vocab
            entries.append(
                CategoricalEntry(f.name, f.source_column, len(vocab) + 1, f.embedding_dim, None,
                                 f"vocab/{f.name}.parquet")
            )
        for f in cfg.numeric:
            n, mean, m2 = _merge_moments([p["moments"][f.name][:3] for p in partials])
            raw_sum = sum(p["moments"][f.name][3] for p in partials)
            std = float(np.sqrt(m2 / n)) if n else 1.0
            std = std or 1.0
            fill = f.fill if f.fill is not None else (raw_sum / n if n else 0.0)
            boundaries: list[float] = []
            if f.transform == "bucketize":
                qs = _weighted_quantiles([p["samples"][f.name] for p in partials],
                                         np.linspace(0, 1, f.buckets + 1)[1:-1])
                boundaries = [float(b) for b in np.unique(qs)]
            entries.append(NumericEntry(f.name, f.source_column, f.transform, float(fill), float(mean), std,
                                        boundaries, f.embedding_dim))
        for f in cfg.multi_valued:
            vocab = _merge_vocab([p["counts"][f.name] for p in partials], f.min_freq, None)
            vocabs[f.name] = vocab
            entries.append(MultiValuedEntry(f.name, f.source_column, f.separator, f.max_len, len(vocab) + 1,
                                            f.embedding_dim, f"vocab/{f.name}.parquet"))
        cat_by_name = {e.name: e for e in entries if isinstance(e, CategoricalEntry)}
        for f in cfg.sequence:
            source = cat_by_name[f.source]
            entries.append(SequenceEntry(f.name, f.name, f.source, f.max_len, source.cardinality))
        for f in cfg.vector:
            widths = sorted({w for p in partials for w in p.get("widths", {}).get(f.name, [])})
            if len(widths) > 1 or (f.dim is not None and widths and widths != [f.dim]):
                raise SpecError(f"vector feature '{f.name}': train rows have widths {widths}, "
                                f"config features.vector dim is {f.dim}; make them agree (or set dim: null)")
            dim = f.dim if f.dim is not None else (widths[0] if widths else None)
            if dim is None:
                raise SpecError(f"vector feature '{f.name}': no train value to infer its width; set its dim")
            entries.append(VectorEntry(f.name, f.source_column, dim))
        order = {f.name: i for i, f in enumerate(x for g in cfg.feature_groups() for x in g)}
        entries.sort(key=lambda e: order[e.name])
        return FeatureSpec(
            label=cfg.label,
            timestamp=cfg.timestamp,
            user_key=cfg.user_key,
            item_key=cfg.item_key,
            features=entries,
            passthrough=list(cfg.passthrough),
            vocabs=vocabs,
            train_rows=rows,
        )

    def fit(self, table: pa.Table, batch_rows: int = 1 << 20) -> FeatureSpec:
        """Fit in-process (tests, small data); `recforge prepare` fits with Ray Data over the same partials."""
        parts = [self.partial(table.slice(i, batch_rows)) for i in range(0, max(table.num_rows, 1), batch_rows)]
        return self.finish(parts)


def _weighted_quantiles(parts: Sequence[tuple[np.ndarray, float]], qs: np.ndarray) -> np.ndarray:
    """Quantiles of per-block samples, each value weighted by the share of its block it stands for.

    When no block was sampled (all weights 1) this is exactly `np.quantile` of all values.
    """
    values = [v for v, _ in parts if len(v)]
    if not values:
        return np.zeros(0)
    if all(w == 1.0 for v, w in parts if len(v)):
        return np.quantile(np.concatenate(values), qs)
    v = np.concatenate(values)
    w = np.concatenate([np.full(len(s), wt) for s, wt in parts if len(s)])
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    pos = (cw - w / 2) / cw[-1]  # midpoint plotting positions, then linear interpolation
    return np.interp(qs, pos, v)


def _merge_moments(parts: Sequence[tuple[int, float, float]]) -> tuple[int, float, float]:
    """Chan et al.'s pairwise merge of (count, mean, sum of squared deviations): stable for large data."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        total = n + nb
        delta = mb - mean
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    return n, mean, m2


def _value_counts(arr: pa.Array) -> pa.Table:
    vc = pc.value_counts(pc.drop_null(arr))
    return pa.table({"value": vc.field("values"), "count": vc.field("counts").cast(pa.int64())})


def _merge_vocab(parts: Sequence[pa.Table], min_freq: int, max_vocab: int | None) -> pa.Array:
    """Vocabulary ordered by descending train frequency, ties by value; rare values (< min_freq) left out."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return pa.array([], pa.string())
    types = {p.schema.field("value").type for p in parts}
    if len(types) > 1:
        parts = [p.set_column(0, "value", p.column("value").cast(pa.string())) for p in parts]
    merged = pa.concat_tables(parts).group_by("value").aggregate([("count", "sum")])
    merged = merged.filter(pc.greater_equal(merged.column("count_sum"), min_freq))
    merged = merged.sort_by([("count_sum", "descending"), ("value", "ascending")])
    if max_vocab is not None:
        merged = merged.slice(0, max_vocab)
    return merged.column("value").combine_chunks()
