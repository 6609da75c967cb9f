"""The materialize job: the offline store's latest values per entity -> the online store.

Views written (each atomically, one row per entity key):
- one per configured entity (`entities:` in the config, e.g. 'user', 'item') with its feature columns;
- 'user_profile': RFM inputs (last_purchase_ts, rfm_frequency, rfm_monetary, rfm_recency_days at `as_of`)
  and the category-affinity vector, computed with the IDF and categories fitted at prepare time;
- 'user_segment': RFM quintile scores and the named marketing segment;
  both hold every purchase before `as_of`: once the data has ended (the default `as_of`), `as_of`'s own day
  counts too (`profiles.snapshot_cutoff`), so the last day's purchases are in them;
- 'user_history': the last `max_len` items per sequence feature, most recent last.
`as_of` defaults to the end of the data: one second after the last event of the log or the last purchase or
return of the profiles, whichever is later.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import EventsSource, FeatureStoreConfig
from feature_store.offline import OfflineStore
from feature_store.online import OnlineStore, describe_store, materialize, open_store
from feature_store.prepare import HISTORY_TABLE, layout, load_profiles

PROFILE_VIEW = "user_profile"
SEGMENT_VIEW = "user_segment"
HISTORY_VIEW = "user_history"
STATIC_TS = "_valid_from"


def _end_of_log(offline: OfflineStore, ts: str) -> int | None:
    if HISTORY_TABLE not in offline.names():
        return None
    history = offline.read_table(HISTORY_TABLE)
    if ts not in history.column_names:  # prepared without event time
        return None
    col = history.column(ts)
    top = pc.max(col).as_py()
    return None if top is None else int(top) + 1


def materialize_job(cfg: FeatureStoreConfig, *, as_of: int | None = None) -> dict[str, Any]:
    """Write every online view for `cfg`; returns counts per view for the report."""
    t0 = time.perf_counter()
    lay = layout(cfg)
    offline = OfflineStore(lay.offline)
    if not lay.offline.is_dir():
        raise FileNotFoundError(f"{lay.offline}: no offline store; run `recforge prepare --config ...` first")
    f = cfg.features
    profiles = load_profiles(offline)
    if as_of is None:
        ends = [_end_of_log(offline, f.timestamp), profiles.data_end_ts if profiles is not None else None]
        as_of = max((e for e in ends if e is not None), default=None)
    views: dict[str, dict[str, Any]] = {}
    with open_store(cfg) as store:
        for name, ent in cfg.entities.items():
            table = offline.read_table(ent.table)
            ts_col = ent.timestamp
            if ts_col is None:
                ts_col = STATIC_TS
                table = table.append_column(STATIC_TS, pa.array(np.zeros(table.num_rows, np.int64)))
            rep = materialize(store, name, table, key=ent.key, ts_column=ts_col,
                              ttl_seconds=ent.ttl_days * 86400 if ent.ttl_days else None,
                              features=list(ent.features), as_of=as_of)
            views[name] = {"entities": rep.entities_written, "features": list(ent.features)}

        if profiles is not None and as_of is not None:
            from feature_store.profiles import rfm_segments

            latest = profiles.latest(as_of)
            feats = [c for c in latest.column_names if c not in (profiles.user_key, "ts")]
            rep = materialize(store, PROFILE_VIEW, latest, key=profiles.user_key, ts_column="ts",
                              ttl_seconds=profiles.ttl_seconds, features=feats)
            views[PROFILE_VIEW] = {"entities": rep.entities_written, "features": feats}
            seg = rfm_segments(profiles.rfm, as_of=as_of, user_key=profiles.user_key,
                               data_end_ts=profiles.data_end_ts)
            seg = seg.append_column("ts", pa.array(np.full(seg.num_rows, as_of, np.int64)))
            seg_feats = [c for c in seg.column_names if c not in (profiles.user_key, "ts")]
            rep = materialize(store, SEGMENT_VIEW, seg, key=profiles.user_key, ts_column="ts", features=seg_feats)
            views[SEGMENT_VIEW] = {"entities": rep.entities_written, "features": seg_feats}

        history = offline.read_table(HISTORY_TABLE) if HISTORY_TABLE in offline.names() else None
        if f.sequence and history is not None:
            views[HISTORY_VIEW] = _materialize_histories(cfg, store, history, as_of)
        views.update(_materialize_event_views(cfg, store, history, as_of))
    return {"store": describe_store(cfg), "as_of": as_of, "entities": views,
            "seconds": round(time.perf_counter() - t0, 3)}


def _materialize_histories(
    cfg: FeatureStoreConfig, store: OnlineStore, interactions: pa.Table, as_of: int | None
) -> dict[str, Any]:
    """The `user_history` view from the prepared interactions, with the function the stream processor uses
    (feature_store.events.features.history_view): each item's time is kept beside it."""
    from feature_store.events.features import LABEL, StreamFeatures, history_view

    f = cfg.features
    sf = StreamFeatures.from_config(cfg)
    columns = sorted({f.user_key, *(s.column for s in sf.sequences)})
    rows = interactions.select(columns).append_column("ts", interactions.column(f.timestamp)).append_column(
        LABEL, interactions.column(f.label))
    view = history_view(rows, sf, as_of=as_of)
    assert view is not None
    feats = [c for c in view.column_names if c != f.user_key]
    rep = materialize(store, HISTORY_VIEW, view, key=f.user_key, ts_column="ts", features=feats)
    return {"entities": rep.entities_written, "features": feats}


def _materialize_event_views(cfg: FeatureStoreConfig, store: OnlineStore, history: pa.Table | None,
                             as_of: int | None) -> dict[str, Any]:
    """The other views the stream keeps, with its functions: `user_tags` (with `events.stream.tag_column`) from
    the prepared interactions; for `source.type: events`, `user_activity` and `item_popularity` from the event
    log itself (the interactions hold only the rows of `source.types`; the stream counts every event)."""
    from feature_store.events.features import (
        ACTIVITY_VIEW,
        LABEL,
        POPULARITY_VIEW,
        TAGS_VIEW,
        StreamFeatures,
        activity_view,
        interactions,
        popularity_view,
        tags_view,
    )

    f = cfg.features
    sf = StreamFeatures.from_config(cfg)
    out: dict[str, Any] = {}
    written: list[tuple[str, pa.Table | None, str]] = []
    if sf.tag_column is not None and history is not None and sf.tag_column in history.column_names:
        rows = pa.table({f.user_key: history.column(f.user_key), sf.tag_column: history.column(sf.tag_column),
                         "ts": history.column(f.timestamp), LABEL: history.column(f.label)})
        if as_of is not None:
            rows = rows.filter(pc.less(rows.column("ts"), as_of))
        written.append((TAGS_VIEW, tags_view(rows, sf), f.user_key))
    if isinstance(cfg.source, EventsSource):
        from feature_store.events.ingest import read_log
        from feature_store.readers.events import log_path

        rows = interactions(read_log(log_path(cfg), cfg.events.id_type), sf)
        if as_of is not None:
            rows = rows.filter(pc.less(rows.column("ts"), as_of))
        written += [(ACTIVITY_VIEW, activity_view(rows, sf), f.user_key),
                    (POPULARITY_VIEW, popularity_view(rows, sf), f.item_key)]
    for name, view, key in written:
        if view is None:
            continue
        feats = [c for c in view.column_names if c not in (key, "ts")]
        rep = materialize(store, name, view, key=key, ts_column="ts", features=feats)
        out[name] = {"entities": rep.entities_written, "features": feats}
    return out
