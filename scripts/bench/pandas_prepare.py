"""The pandas contender of `scripts.bench.prepare`: the transforms of `recforge prepare` for a demo-shaped config,
as a straightforward single-process pandas program (merge_asof point-in-time joins, the time split, RFM and
category affinity profiles, the last-N positive items history, vocabularies / log1p / standardize / quantile buckets
fitted on train, Parquet per split). Run as its own process by the benchmark:

    .venv/bin/python -m scripts.bench.pandas_prepare --config configs/demo.yaml --raw-dir RAW --out-dir OUT

It prints its summary (rows per split, vocabulary sizes, quantile boundaries, seconds per stage) as JSON and writes
it to `OUT/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "valid", "test")
DAY = 86_400


class _Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"{datetime.now():%H:%M:%S} INFO pandas_prepare: prepare: {name} ...", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)


def check_supported(cfg: Any) -> None:
    f = cfg.features
    problems = []
    if cfg.split.method != "time":
        problems.append(f"split.method is '{cfg.split.method}'; the pandas reference implements 'time' only")
    if f.multi_valued:
        problems.append("features.multi_valued is not implemented by the pandas reference")
    if any(c.hash_buckets for c in f.categorical):
        problems.append("categorical hash_buckets are not implemented by the pandas reference")
    if cfg.source.type != "synthetic":
        problems.append(f"source.type is '{cfg.source.type}'; the benchmark uses the synthetic source")
    if problems:
        raise SystemExit("bench_prepare: the config does not fit this benchmark:\n  " + "\n  ".join(problems)
                         + "\n  use configs/demo.yaml (the default) or a config of the same shape")


def _asof(left: pd.DataFrame, right: pd.DataFrame, *, ts: str, right_ts: str, by: str,
          ttl_s: float | None) -> pd.DataFrame:
    """pd.merge_asof on (by, time): the newest right row with right_ts <= the left row's ts."""
    right = right.sort_values(right_ts, kind="stable")
    tolerance = int(ttl_s) if ttl_s is not None else None
    out = pd.merge_asof(left, right, left_on=ts, right_on=right_ts, by=by, direction="backward",
                        tolerance=tolerance)
    return out.drop(columns=[right_ts])


def _vocab(train_values: pd.Series, min_freq: int, max_vocab: int | None) -> pd.Index:
    """Train values by descending count, ties by value; values seen fewer than min_freq times left out."""
    vc = train_values.value_counts(dropna=True)
    vc = vc[vc >= min_freq]
    frame = vc.rename_axis("value").reset_index(name="count")
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    if max_vocab is not None:
        frame = frame.head(max_vocab)
    return pd.Index(frame["value"])


def _last_n_positive(events: pd.DataFrame, *, user: str, ts: str, code: str, positive: str,
                     max_len: int) -> pd.Series:
    """For each event, the codes of the user's positive events strictly before it (most recent last)."""

    def per_user(g: pd.DataFrame) -> pd.Series:
        t = g[ts].to_numpy()
        hit = g[positive].to_numpy()
        pos_t, pos_code = t[hit], g[code].to_numpy()[hit]
        end = np.searchsorted(pos_t, t, side="left")
        start = np.maximum(end - max_len, 0)
        return pd.Series([pos_code[s:e] for s, e in zip(start, end)], index=g.index, dtype=object)

    hist = events.groupby(user, sort=False, group_keys=False)[[ts, code, positive]].apply(per_user)
    hist = hist.reindex(events.index)
    empty = np.zeros(0, dtype=np.int64)
    missing = hist.isna().to_numpy()
    if missing.any():
        hist[missing] = pd.Series([empty] * int(missing.sum()), index=hist.index[missing], dtype=object)
    return hist


def pandas_prepare(cfg: Any, raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The same transforms as `recforge prepare` for a demo-shaped config, in plain single-process pandas."""
    check_supported(cfg)
    t_start = time.perf_counter()
    st = _Stages()
    f, p = cfg.features, cfg.profiles
    ts, user, label = f.timestamp, f.user_key, f.label
    want_affinity = bool(p.enabled and p.category and f.vector)

    with st.stage("read"):
        names = {"events", *(e.table for e in cfg.entities.values())}
        if p.enabled:
            names |= {p.table} | ({p.category_table} if p.category_table else set())
        raw = {n: pd.read_parquet(raw_dir / f"{n}.parquet") for n in sorted(names)}
        ev = raw["events"]

    with st.stage("assemble"):
        reordered = not ev[ts].is_monotonic_increasing
        if reordered:  # merge_asof needs the events sorted by time; the input order is restored at the end
            ev = ev.assign(_row=np.arange(len(ev))).sort_values(ts, kind="stable", ignore_index=True)
        # time split: the first (1 - valid - test) quantile of event times is train
        q_train = 1.0 - cfg.split.valid_fraction - cfg.split.test_fraction
        cut_valid = int(ev[ts].quantile(q_train, interpolation="higher"))
        cut_test = int(ev[ts].quantile(1.0 - cfg.split.test_fraction, interpolation="higher"))
        split = np.select([ev[ts] >= cut_test, ev[ts] >= cut_valid], [2, 1], 0).astype(np.int8)
        train_end = cut_valid if cfg.split.valid_fraction > 0 else cut_test
        for ent in cfg.entities.values():
            cols = [ent.key, *ent.features]
            if ent.timestamp is None:
                ev = ev.merge(raw[ent.table][cols], on=ent.key, how="left")
            else:
                right = raw[ent.table][[*cols, ent.timestamp]].rename(columns={ent.timestamp: "_feature_ts"})
                ttl = ent.ttl_days * DAY if ent.ttl_days else None
                ev = _asof(ev, right, ts=ts, right_ts="_feature_ts", by=ent.key, ttl_s=ttl)
        vector = None
        if p.enabled:
            ttl = p.ttl_days * DAY if p.ttl_days else None
            buys = raw[p.table].dropna(subset=[p.user_key, "ts"])
            buys = buys.assign(_day=buys["ts"] // DAY, _amount=buys[p.amount].astype("float64").fillna(0.0))
            # RFM: cumulative per user over days with purchases, visible from the start of the next day
            daily = buys.groupby([p.user_key, "_day"]).agg(
                _n=("ts", "size"), _spent=("_amount", "sum"), _last_ts=("ts", "max"))
            daily["_freq"] = daily.groupby(level=0)["_n"].cumsum()
            daily["_money"] = daily.groupby(level=0)["_spent"].cumsum()
            snap = daily.reset_index()
            snap["_snap_ts"] = (snap["_day"] + 1) * DAY
            snap = snap[[p.user_key, "_snap_ts", "_last_ts", "_freq", "_money"]]
            ev = _asof(ev, snap, ts=ts, right_ts="_snap_ts", by=user, ttl_s=ttl)
            ev["rfm_recency_days"] = ((ev[ts] - ev["_last_ts"]) / DAY).astype("float32")
            ev["rfm_frequency"] = ev["_freq"].astype("float32")
            ev["rfm_monetary"] = ev["_money"].astype("float32")
            ev = ev.drop(columns=["_last_ts", "_freq", "_money"])
            if want_affinity:
                vector = _affinity(ev, buys, raw, cfg, train_end, ttl)

    with st.stage("fit"):
        is_train = split == 0
        encoded: dict[str, Any] = {}
        vocab_sizes: dict[str, int] = {}
        boundaries: dict[str, list[float]] = {}
        for c in f.categorical:
            col = ev[c.source_column]
            vocab = _vocab(col[is_train], c.min_freq, c.max_vocab)
            encoded[c.name] = pd.Categorical(col, categories=vocab).codes.astype(np.int64) + 1
            vocab_sizes[c.name] = len(vocab) + 1
        for n in f.numeric:
            x = ev[n.source_column].astype("float64")
            train_x = x[is_train].dropna()
            logged = n.transform in ("log1p", "log1p_standardize")
            stats_x = np.log1p(train_x.clip(lower=0.0)) if logged else train_x
            if n.transform == "bucketize":
                qs = np.quantile(stats_x.to_numpy(), np.linspace(0, 1, n.buckets + 1)[1:-1])
                bounds = np.unique(qs)
                idx = np.searchsorted(bounds, x.to_numpy(), side="right").astype(np.int64) + 1
                idx[x.isna().to_numpy()] = 0
                encoded[n.name] = idx
                vocab_sizes[n.name] = len(bounds) + 2
                boundaries[n.name] = [float(b) for b in bounds]
                continue
            fill = n.fill if n.fill is not None else float(train_x.mean())
            mean, std = float(stats_x.mean()), float(stats_x.std(ddof=0)) or 1.0
            y = x.fillna(fill)
            if logged:
                y = np.log1p(y.clip(lower=0.0))
            if n.transform in ("standardize", "log1p_standardize"):
                y = (y - mean) / std
            encoded[n.name] = y.astype("float32").to_numpy()

    with st.stage("history"):
        sources = {c.name: c for c in f.categorical}
        for s in f.sequence:
            frame = pd.DataFrame({user: ev[user], ts: ev[ts], "_code": encoded[s.source],
                                  "_pos": (ev[label] > 0).to_numpy() if s.positive_only else True})
            frame["_pos"] &= ev[sources[s.source].source_column].notna().to_numpy()
            encoded[s.name] = _last_n_positive(frame, user=user, ts=ts, code="_code", positive="_pos",
                                               max_len=s.max_len).to_numpy()
            vocab_sizes[s.name] = vocab_sizes[s.source]

    with st.stage("transform_write"):
        out = pd.DataFrame(encoded)
        out["label"] = ev[label].astype("float32").to_numpy()
        for c in f.passthrough:
            out[c] = ev[c].to_numpy()
        # the raw row keys the prepared shards carry (FeatureSpec.key_columns)
        for out_name, c in (("__user_key", f.user_key), ("__item_key", f.item_key), ("__ts", f.timestamp)):
            out[out_name] = ev[c].to_numpy()
        if reordered:
            order = np.argsort(ev["_row"].to_numpy(), kind="stable")
            out, split = out.iloc[order].reset_index(drop=True), split[order]
            vector = vector[order] if vector is not None else None
        out_dir.mkdir(parents=True, exist_ok=True)
        n_feat = len(f.categorical) + len(f.numeric) + len(f.sequence)
        rows: dict[str, int] = {}
        for code, name in enumerate(SPLITS):
            mask = split == code
            part = out[mask]
            arrays = []
            for col in part.columns:
                typ = pa.list_(pa.int64()) if part[col].dtype == object else None
                arrays.append(pa.array(part[col].to_numpy(), type=typ))
            columns = list(part.columns)
            if vector is not None:  # fixed-width vector handed to Arrow as one block (pandas has no such type)
                v = vector[mask]
                flat = pa.array(v.ravel())
                vec = pa.ListArray.from_arrays(pa.array(np.arange(len(v) + 1, dtype=np.int32) * v.shape[1]), flat)
                arrays.insert(n_feat, vec)
                columns.insert(n_feat, f.vector[0].name)
            pq.write_table(pa.Table.from_arrays(arrays, names=columns), out_dir / f"{name}.parquet")
            rows[name] = int(mask.sum())

    summary = {"rows": rows, "vocab_sizes": vocab_sizes, "boundaries": boundaries, "stage_seconds": st.seconds,
               "seconds": round(time.perf_counter() - t_start, 3), "affinity": vector is not None}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _affinity(ev: pd.DataFrame, buys: pd.DataFrame, raw: dict[str, pd.DataFrame], cfg: Any,
              train_end: int, ttl: float | None) -> np.ndarray:
    """L2-normalised TF-IDF of each user's cumulative purchase categories known at each event (float32)."""
    p, ts, user = cfg.profiles, cfg.features.timestamp, cfg.features.user_key
    cat = p.category
    if cat not in buys.columns:  # category from the items table (its newest row per item)
        items = raw[p.category_table].sort_values("ts", kind="stable").drop_duplicates(p.item_key, keep="last")
        buys = buys.merge(items[[p.item_key, cat]], on=p.item_key, how="left")
    buys = buys.dropna(subset=[cat]).assign(_cat=lambda d: d[cat].astype(str))
    counts = buys.loc[buys["ts"] < train_end, "_cat"].value_counts()
    if p.n_categories is not None:
        top = counts.rename_axis("v").reset_index(name="n").sort_values(["n", "v"], ascending=[False, True])
        counts = counts[top["v"].head(p.n_categories)]
    categories = sorted(counts.index)
    buys = buys[buys["_cat"].isin(categories)]
    per_day = buys.groupby([p.user_key, "_day", "_cat"]).size().unstack(fill_value=0)
    per_day = per_day.reindex(columns=categories, fill_value=0)
    cum = per_day.groupby(level=0).cumsum().astype("float32").reset_index()
    cum["_snap_ts"] = (cum["_day"] + 1) * DAY
    cum = cum.drop(columns=["_day"])
    latest = cum[cum["_snap_ts"] <= train_end].groupby(p.user_key)[categories].last()
    idf = (np.log((1.0 + len(latest)) / (1.0 + (latest > 0).sum(axis=0).to_numpy())) + 1.0).astype(np.float32)
    joined = _asof(ev[[user, ts]], cum, ts=ts, right_ts="_snap_ts", by=user, ttl_s=ttl)
    m = joined[categories].to_numpy(dtype=np.float32)  # NaN where the user has no snapshot yet
    w = m / m.sum(axis=1, keepdims=True) * idf
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return np.nan_to_num(w, nan=0.0).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml", help="scenario config (default configs/demo.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="config override (repeatable)")
    ap.add_argument("--raw-dir", required=True, help="the generated raw Parquet files")
    ap.add_argument("--out-dir", required=True, help="where the prepared splits and summary.json go")
    args = ap.parse_args(argv)
    from recforge.config import load

    summary = pandas_prepare(load(args.config, args.overrides), Path(args.raw_dir), Path(args.out_dir))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
