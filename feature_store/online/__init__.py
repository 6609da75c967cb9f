"""The online feature store: latest entity features for serving; one ABC, SQLite and Redis backends.

`open_online_store(cfg, default_path)` picks the backend from the config's `type` ('sqlite' or 'redis');
`materialize` selects the latest row per key from an offline table and writes it. See `base` for the read
semantics (statuses, TTL, key rule).
"""

from __future__ import annotations

from pathlib import Path

from feature_store.config import FeatureStoreConfig, RedisOnlineStoreConfig, SQLiteOnlineStoreConfig
from feature_store.online.base import EntityInfo, OnlineFeatures, OnlineStore
from feature_store.online.materialize import MaterializeReport, latest_per_key, materialize
from feature_store.online.redis import RedisOnlineStore
from feature_store.online.sqlite import SQLiteOnlineStore
from feature_store.secrets import redact_url

__all__ = [
    "EntityInfo",
    "MaterializeReport",
    "OnlineFeatures",
    "OnlineStore",
    "RedisOnlineStore",
    "SQLiteOnlineStore",
    "describe_store",
    "latest_per_key",
    "materialize",
    "open_online_store",
    "open_store",
]


def open_online_store(
    cfg: SQLiteOnlineStoreConfig | RedisOnlineStoreConfig, default_path: Path
) -> OnlineStore:
    """Open the backend `cfg.type` names; a SQLite store without `path` lives at `default_path`."""
    if isinstance(cfg, SQLiteOnlineStoreConfig):
        return SQLiteOnlineStore(Path(cfg.path) if cfg.path else Path(default_path))
    if isinstance(cfg, RedisOnlineStoreConfig):
        return RedisOnlineStore(cfg.url, cfg.namespace)
    raise TypeError(
        f"online_store: unsupported config {type(cfg).__name__}; use type 'sqlite' or 'redis' "
        "(SQLiteOnlineStoreConfig / RedisOnlineStoreConfig)"
    )


def open_store(cfg: FeatureStoreConfig) -> OnlineStore:
    """The scenario's online store (SQLite at <output_dir>/online.db unless configured otherwise)."""
    return open_online_store(cfg.online_store, Path(cfg.output_dir) / "online.db")


def describe_store(cfg: FeatureStoreConfig) -> str:
    """The scenario's online store for reports, with any password masked."""
    oc = cfg.online_store
    if isinstance(oc, SQLiteOnlineStoreConfig):
        return f"sqlite:{oc.path or Path(cfg.output_dir) / 'online.db'}"
    return f"redis:{redact_url(oc.url)} (namespace {oc.namespace})"
