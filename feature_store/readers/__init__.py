"""Source readers: `read_source` turns any configured source into a `RawData`, chosen by `source.type`.

REGISTRY maps each source type to its reader, a function `(source config, work_dir) -> RawData`. File
readers resolve `source.path` against the current working directory and raise ConfigError naming
`source.path` when it does not exist; the synthetic generator caches its output under `work_dir`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from feature_store.config import ConfigError, EventsSource, FeatureStoreConfig, SyntheticSource
from feature_store.readers.base import RawData
from feature_store.readers.criteo import read_criteo
from feature_store.readers.movielens import read_movielens
from feature_store.readers.table import read_table
from feature_store.readers.transactions import read_transactions

Reader = Callable[[Any, Path], RawData]


def read_synthetic(cfg: SyntheticSource, work_dir: Path) -> RawData:
    """The built-in generator (imported here, on use)."""
    from feature_store.readers.synthetic import load_synthetic

    return load_synthetic(cfg, work_dir)


REGISTRY: dict[str, Reader] = {
    "synthetic": read_synthetic,
    "csv": read_table,
    "tsv": read_table,
    "parquet": read_table,
    "movielens": read_movielens,
    "criteo": read_criteo,
    "transactions": read_transactions,
}


def read_source(source_cfg: Any, work_dir: Path) -> RawData:
    """Read the configured source into RawData (tables, rows read, rejects, input paths)."""
    kind = getattr(source_cfg, "type", None)
    reader = REGISTRY.get(str(kind))
    if reader is None:
        if kind == "events":
            raise ConfigError("source.type 'events' is read with the scenario's events section: call "
                              "read_scenario_source")
        raise ConfigError(f"source.type: unknown source type {kind!r}; use one of {sorted(REGISTRY)}")
    return reader(source_cfg, Path(work_dir))


def read_scenario_source(cfg: FeatureStoreConfig, work_dir: Path) -> RawData:
    """The scenario's source: `read_source`, or for `source.type: events` the scenario's own event log (whose
    reader also needs the `events:` section)."""
    if isinstance(cfg.source, EventsSource):  # the event log holds pseudonyms already (ingestion hashed them)
        from feature_store.readers.events import read_events_source

        return read_events_source(cfg)
    return pseudonymise_raw(read_source(cfg.source, work_dir), cfg)


def pseudonymise_raw(raw: RawData, cfg: FeatureStoreConfig) -> RawData:
    """With `pseudonymisation.enabled`: every table's user id and personal columns replaced by their pseudonyms,
    the rejects' raw text withheld (it holds raw ids), each table's schema metadata naming the key's id and the
    hashed columns. Without it: `raw` as read. A missing or short key stops here, before anything is written."""
    from feature_store import pseudonymise

    p = pseudonymise.load(cfg.pseudonymisation)
    if p is None:
        return raw
    ids = pseudonymise.id_columns(cfg)
    hashed: set[str] = set()
    for name, t in list(raw.tables.items()):
        raw.tables[name], done = p.table(t, ids)
        hashed.update(done)
    raw.pseudonymised = {"key_id": p.key_id, "columns": sorted(hashed)}
    raw.rejects.withhold_raw(pseudonymise.WITHHELD)
    return raw


__all__ = ["REGISTRY", "RawData", "pseudonymise_raw", "read_criteo", "read_movielens", "read_scenario_source",
           "read_source", "read_synthetic", "read_table", "read_transactions"]
