"""The `events` source: the scenario's offline event log (feature_store.events.ingest) as RawData.

Read with `events.ingest.read_log` (every Parquet part of every day, the first row of each `event_id`), so a
part written twice after a crash, or an event a client sent twice, is one row. The label and the purchases
follow the scenario's `events.positive_types` and `events.purchase_types`, the same sets the stream processor
uses. Context values are JSON text in the log; they become typed columns through Arrow's JSON reader (one
columnar parse of the whole column, no per-row Python).
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from feature_store.config import ConfigError, EventsSource, FeatureStoreConfig
from feature_store.events.ingest import read_log
from feature_store.events.scenario import log_dir
from feature_store.readers.base import RawData

BASE = ("event_id", "user_id", "item_id", "ts", "type", "value", "exposure_id", "label")


def log_path(cfg: FeatureStoreConfig) -> Path:
    src = cfg.source
    assert isinstance(src, EventsSource)
    return Path(src.path) if src.path else log_dir(cfg)


def read_events_source(cfg: FeatureStoreConfig) -> RawData:
    """`events` and `purchases` of the scenario's event log (see config.EventsSource)."""
    src = cfg.source
    assert isinstance(src, EventsSource)
    root = log_path(cfg)
    if not root.is_dir():
        raise ConfigError(f"source.path: no event log at {root}; ingest events (`recforge events push FILE` or "
                          "POST /events) and write the log (`recforge stream run`) first, or point source.path "
                          "at a log folder")
    log = read_log(root, cfg.events.id_type)
    n_read = log.num_rows
    if src.types is not None:
        log = log.filter(pc.is_in(log.column("type"), value_set=pa.array(src.types, pa.string())))
    if log.num_rows == 0:
        kinds = f" of types {src.types}" if src.types is not None else ""
        raise ConfigError(f"source.path: the event log at {root} holds no events{kinds}; ingest some first")
    positive = pc.is_in(log.column("type"), value_set=pa.array(cfg.events.positive_types, pa.string()))
    events = log.select(list(BASE[:-1])).append_column("label", pc.cast(positive, pa.float32()))
    for name, col in _context_columns(log.column("context")).items():
        events = events.append_column(name if name not in BASE else f"context_{name}", col)
    bought = pc.is_in(log.column("type"), value_set=pa.array(cfg.events.purchase_types, pa.string()))
    purchases = log.filter(bought)
    purchases = pa.table({"user_id": purchases.column("user_id"), "item_id": purchases.column("item_id"),
                          "ts": purchases.column("ts"),
                          "revenue": pc.fill_null(purchases.column("value"), 0.0),
                          "event_id": purchases.column("event_id")})
    return RawData(tables={"events": events, "purchases": purchases},
                   rows_read={"events": n_read}, paths={"events": str(root)})


def _context_columns(context: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
    """The `context` JSON objects as one column per key (null where an event lacks the key)."""
    if context.null_count == len(context):
        return {}
    text = pc.fill_null(context, "{}").to_numpy(zero_copy_only=False)
    lines = ("\n".join(text.tolist()) + "\n").encode("utf-8")
    try:  # one block: the column types are inferred from all the rows, not the first block's
        parsed = pajson.read_json(io.BytesIO(lines), read_options=pajson.ReadOptions(block_size=len(lines) + 1))
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"source: the events' context values do not have one type per key ({exc}); send each "
                          "context key with one type (e.g. always a number), or leave it out of training with "
                          "source.types") from None
    return {name: parsed.column(name) for name in parsed.column_names
            if parsed.column(name).null_count < parsed.num_rows}
