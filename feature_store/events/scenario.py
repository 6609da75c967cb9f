"""Where a scenario's events live: which bus it uses (`bus_config`, `open_bus`) and where the offline log is.

Kept apart from `bus` so that the backends import the contract and this module imports the backends, one way.
"""

from __future__ import annotations

from pathlib import Path

from feature_store.config import FeatureStoreConfig, RedisBusConfig, RedisOnlineStoreConfig, SQLiteBusConfig
from feature_store.events.bus import EventBus
from feature_store.events.redis_bus import RedisStreamBus
from feature_store.events.sqlite_bus import SQLiteBus


def bus_config(cfg: FeatureStoreConfig) -> SQLiteBusConfig | RedisBusConfig:
    """The scenario's bus: `events.bus`, else Redis Streams where the online store is Redis, else SQLite."""
    if cfg.events.bus is not None:
        return cfg.events.bus
    if isinstance(cfg.online_store, RedisOnlineStoreConfig):
        return RedisBusConfig(type="redis")
    return SQLiteBusConfig()


def open_bus(cfg: FeatureStoreConfig, *, retry_s: float = 30.0) -> EventBus:
    """The scenario's event bus (see `bus_config`); a Redis bus retries an unreachable server for `retry_s`."""
    bc = bus_config(cfg)
    if isinstance(bc, RedisBusConfig):
        store = cfg.online_store if isinstance(cfg.online_store, RedisOnlineStoreConfig) else None
        url = bc.url or (store.url if store else "redis://127.0.0.1:6379/0")
        namespace = bc.namespace or (store.namespace if store else "recforge")
        return RedisStreamBus(url, namespace, retry_s=retry_s)
    return SQLiteBus(Path(bc.path) if bc.path else events_dir(cfg) / "bus.db")


def events_dir(cfg: FeatureStoreConfig) -> Path:
    return Path(cfg.output_dir) / "events"


def log_dir(cfg: FeatureStoreConfig) -> Path:
    """The offline event log: Parquet files in one folder per UTC day."""
    return Path(cfg.events.log_path) if cfg.events.log_path else events_dir(cfg) / "log"
