"""The built-in synthetic data sets: a marketing event log with a KNOWN click model; a Criteo-shaped table.

`generate` builds four canonical tables (events, users, items, purchases) from a `SyntheticSource`:
users with observable attributes and a latent taste that mostly follows them; items with category, brand,
a price history and a latent vector that mostly follows (category, brand); impressions drawn with skewed
user activity and item popularity in contexts (channel, device, diurnal hour, slot position). Each
impression's true click probability `p_click` comes from a logistic model (biases, user x item interaction,
context effects, price valid at that time, position bias), so a CTR model can be scored against the oracle.
`load_synthetic` caches the tables as Parquet with a manifest; `generate_criteo_schema` makes benchmark data
with the Criteo column layout. Everything is vectorised numpy and deterministic by seed.

Kept as one module (about 550 lines) because the event log is one generative model: the entity tables,
the click probability and `latent_click_model` read the same latent draws, effect constants and seed order,
and a change to one part changes what the others (and the cached manifest's `GENERATOR_VERSION`) mean. The
Criteo-shaped generator at the end is small and shares the Zipf helpers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.config import SyntheticSource
from feature_store.readers.base import RawData

# Bump when the generated data changes for an unchanged config, so cached Parquet is rebuilt.
GENERATOR_VERSION = 2

TABLE_NAMES = ("events", "users", "items", "purchases")
MANIFEST_NAME = "manifest.json"

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("impression_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("ts", pa.int64()),
        pa.field("channel", pa.string()),
        pa.field("device", pa.string()),
        pa.field("hour", pa.int64()),
        pa.field("position", pa.int64()),
        pa.field("click", pa.float32()),
        pa.field("p_click", pa.float32()),
    ]
)
USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64()),
        pa.field("age_band", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("region", pa.string()),
        pa.field("ts", pa.int64()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float32()),
        pa.field("ts", pa.int64()),
    ]
)
PURCHASES_SCHEMA = pa.schema(
    [
        pa.field("impression_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("ts", pa.int64()),
        pa.field("quantity", pa.int64()),
        pa.field("revenue", pa.float32()),
    ]
)
SCHEMAS: dict[str, pa.Schema] = {
    "events": EVENTS_SCHEMA,
    "users": USERS_SCHEMA,
    "items": ITEMS_SCHEMA,
    "purchases": PURCHASES_SCHEMA,
}

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_PROBS = np.array([0.14, 0.26, 0.22, 0.17, 0.12, 0.09])
GENDERS = ("f", "m", "u")
GENDER_PROBS = np.array([0.48, 0.45, 0.07])
CHANNELS = ("app", "web", "email", "push")
CHANNEL_PROBS = np.array([0.45, 0.30, 0.15, 0.10])
CHANNEL_EFFECT = np.array([0.0, -0.2, -0.6, -0.4])
DEVICES = ("ios", "android", "desktop")
# P(device | channel): rows follow CHANNELS, columns DEVICES.
DEVICE_GIVEN_CHANNEL = np.array(
    [
        [0.45, 0.55, 0.00],
        [0.20, 0.25, 0.55],
        [0.30, 0.30, 0.40],
        [0.45, 0.55, 0.00],
    ]
)
DEVICE_EFFECT = np.array([0.0, -0.05, -0.15])
N_POSITIONS = 10

DAY = 86_400
HOUR = 3_600
_CHUNK = 1 << 20  # rows per chunk for the row-wise arithmetic (bounds temporary memory)

# Shape of the known click model (besides the knobs in SyntheticSource).
_USER_BIAS_SD = 0.1
_ITEM_BIAS_SD = 0.15
_TASTE_NOISE = 0.15
_ITEM_VEC_NOISE = 0.1
_HOUR_EFFECT = 0.2
_PRICE_EFFECT = -0.35
_USER_ZIPF = 0.75
_ITEM_ZIPF = 0.9
_BRAND_ZIPF = 0.6
_VEC_RMS = 0.92  # taste and item vectors are rescaled to this root-mean-square entry


# ------------------------------------------------------------------------------------------------ helpers


def _start_ts(cfg: SyntheticSource) -> int:
    try:
        start = datetime.fromisoformat(cfg.start_date)
    except ValueError as exc:
        raise ValueError(
            f"source.start_date: '{cfg.start_date}' is not an ISO date; "
            "write it as YYYY-MM-DD, e.g. 2026-01-01"
        ) from exc
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return int(start.timestamp())


def _labels(prefix: str, n: int, width: int) -> list[str]:
    width = max(width, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _strings(vocab: list[str] | tuple[str, ...], codes: np.ndarray) -> pa.Array:
    """Dictionary-decode integer codes into a plain Arrow string column (vectorised take)."""
    return pa.array(list(vocab), pa.string()).take(pa.array(codes.astype(np.int32, copy=False)))


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like probabilities rank^-exponent, assigned to ids in random order."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    w = w[rng.permutation(n)]
    return w / w.sum()


def _sample(rng: np.random.Generator, probs: np.ndarray, size: int, dtype: Any = np.int32) -> np.ndarray:
    """Draw `size` indices from a discrete distribution by inverse CDF."""
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(idx, len(probs) - 1).astype(dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------------------------------------ entities


def _make_users(cfg: SyntheticSource, rng: np.random.Generator, start: int) -> dict[str, np.ndarray]:
    n, d = cfg.n_users, cfg.latent_dim
    age = _sample(rng, AGE_PROBS, n, np.int8)
    gender = _sample(rng, GENDER_PROBS, n, np.int8)
    region = _sample(rng, rng.dirichlet(np.full(cfg.n_regions, 3.0)), n, np.int16)
    # taste = A[age] + G[gender] + R[region] + small individual noise: mostly observable.
    part = np.sqrt(1.0 / 3.0)
    a_tab = rng.normal(0.0, part, (len(AGE_BANDS), d))
    g_tab = rng.normal(0.0, part, (len(GENDERS), d))
    r_tab = rng.normal(0.0, part, (cfg.n_regions, d))
    taste = a_tab[age] + g_tab[gender] + r_tab[region] + _TASTE_NOISE * rng.standard_normal((n, d))
    taste *= _VEC_RMS / np.sqrt(np.mean(taste**2))
    bias = rng.normal(0.0, _USER_BIAS_SD, n)
    # Signup: most users before the window; some join during it (only on days before the last one).
    joined_in_window = (rng.random(n) < 0.15) & (cfg.days >= 2)
    old_signup = start - rng.integers(DAY, 730 * DAY, n)
    new_day = rng.integers(0, max(cfg.days - 1, 1), n)
    new_signup = start + new_day * DAY + rng.integers(0, DAY, n)
    signup = np.where(joined_in_window, new_signup, old_signup)
    # first day (relative to start) on which the user may see impressions
    min_day = np.where(joined_in_window, new_day + 1, 0).astype(np.int32)
    activity = _zipf_weights(rng, n, _USER_ZIPF)
    return {
        "age": age, "gender": gender, "region": region, "taste": taste.astype(np.float32),
        "bias": bias, "signup": signup, "min_day": min_day, "activity": activity,
    }


def _make_items(cfg: SyntheticSource, rng: np.random.Generator, start: int) -> dict[str, np.ndarray]:
    n, d = cfg.n_items, cfg.latent_dim
    end = start + cfg.days * DAY
    # Brands belong to one category each; an item's brand fixes its category.
    brand_cat = rng.permutation(np.arange(cfg.n_brands) % cfg.n_categories).astype(np.int16)
    brand = _sample(rng, _zipf_weights(rng, cfg.n_brands, _BRAND_ZIPF), n, np.int16)
    cat = brand_cat[brand]
    c_tab = rng.normal(0.0, 0.8, (cfg.n_categories, d))
    b_tab = rng.normal(0.0, 0.55, (cfg.n_brands, d))
    vec = c_tab[cat] + b_tab[brand] + _ITEM_VEC_NOISE * rng.standard_normal((n, d))
    vec *= _VEC_RMS / np.sqrt(np.mean(vec**2))
    bias = rng.normal(0.0, _ITEM_BIAS_SD, n)
    # Price: lognormal by category, with 0-2 later price changes inside the window.
    cat_mu = rng.uniform(np.log(5.0), np.log(200.0), cfg.n_categories)
    base_price = np.exp(cat_mu[cat] + rng.normal(0.0, 0.4, n))
    created_in_window = (rng.random(n) < 0.15) & (cfg.days >= 2)
    old_created = start - rng.integers(DAY, 365 * DAY, n)
    new_day = rng.integers(0, max(cfg.days - 1, 1), n)
    new_created = start + new_day * DAY + rng.integers(0, DAY, n)
    created = np.where(created_in_window, new_created, old_created)
    min_day = np.where(created_in_window, new_day + 1, 0).astype(np.int32)
    n_changes = _sample(rng, np.array([0.5, 0.3, 0.2]), n, np.int8)
    lo = np.maximum(created, start) + 1
    change_ts = lo[:, None] + (rng.random((n, 2)) * (end - lo)[:, None]).astype(np.int64)
    change_ts.sort(axis=1)
    change_ts[np.arange(2)[None, :] >= n_changes[:, None]] = np.iinfo(np.int64).max
    factors = np.exp(rng.normal(0.0, 0.15, (n, 2)))
    prices = np.round(base_price[:, None] * np.cumprod(np.c_[np.ones(n), factors], axis=1), 2)
    prices = np.maximum(prices, 0.5).astype(np.float32)
    hist_ts = np.c_[created, change_ts]  # (n, 3); unused slots hold int64 max
    popularity = _zipf_weights(rng, n, _ITEM_ZIPF)
    return {
        "brand": brand, "cat": cat, "vec": vec.astype(np.float32), "bias": bias, "cat_mu": cat_mu,
        "hist_ts": hist_ts, "hist_price": prices, "min_day": min_day, "popularity": popularity,
    }


def _users_table(users: dict[str, np.ndarray], cfg: SyntheticSource) -> pa.Table:
    n = cfg.n_users
    ids = np.arange(cfg.first_user_id, cfg.first_user_id + n, dtype=np.int64)
    table = pa.Table.from_arrays(
        [
            pa.array(ids),
            _strings(AGE_BANDS, users["age"]),
            _strings(GENDERS, users["gender"]),
            _strings(_labels("r", cfg.n_regions, 2), users["region"]),
            pa.array(users["signup"].astype(np.int64)),
        ],
        schema=USERS_SCHEMA,
    )
    if cfg.personal_columns:  # made up from the id: unique per user, so a scan can look for each one
        text = pc.cast(pa.array(ids), pa.string())
        table = table.append_column("email", pc.binary_join_element_wise("user", text, "@example.com", "")) \
            .append_column("phone", pc.binary_join_element_wise("+1555", text, ""))
    return table


def _items_table(items: dict[str, np.ndarray], cfg: SyntheticSource) -> pa.Table:
    valid = items["hist_ts"] != np.iinfo(np.int64).max
    row, col = np.nonzero(valid)  # row-major: by item, then by time
    return pa.Table.from_arrays(
        [
            pa.array(row.astype(np.int64) + 1),
            _strings(_labels("c", cfg.n_categories, 2), items["cat"][row]),
            _strings(_labels("b", cfg.n_brands, 3), items["brand"][row]),
            pa.array(items["hist_price"][row, col]),
            pa.array(items["hist_ts"][row, col]),
        ],
        schema=ITEMS_SCHEMA,
    )


# ------------------------------------------------------------------------------------------------ events


def _price_at(items: dict[str, np.ndarray], item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Price of each item valid at each time (the last history row with ts <= the event time)."""
    hist = items["hist_ts"][item]
    version = (hist <= ts[:, None]).sum(axis=1) - 1
    return items["hist_price"][item, np.maximum(version, 0)]


def _click_probability(
    cfg: SyntheticSource,
    users: dict[str, np.ndarray],
    items: dict[str, np.ndarray],
    ev: dict[str, np.ndarray],
    price: np.ndarray,
) -> np.ndarray:
    """The known logistic click model, computed in row chunks."""
    n = len(ev["user"])
    out = np.empty(n, dtype=np.float32)
    scale = cfg.interaction_scale / np.sqrt(cfg.latent_dim)
    hour_effect = _HOUR_EFFECT * np.cos(2 * np.pi * (np.arange(24) - 21) / 24)
    for lo in range(0, n, _CHUNK):
        s = slice(lo, min(lo + _CHUNK, n))
        u, i = ev["user"][s], ev["item"][s]
        dot = np.einsum("ij,ij->i", users["taste"][u], items["vec"][i], dtype=np.float64)
        logit = (
            cfg.base_logit
            + users["bias"][u]
            + items["bias"][i]
            + scale * dot
            + CHANNEL_EFFECT[ev["channel"][s]]
            + DEVICE_EFFECT[ev["device"][s]]
            + hour_effect[ev["hour"][s]]
            + _PRICE_EFFECT * (np.log(price[s]) - items["cat_mu"][items["cat"][i]])
            - cfg.position_bias * np.log(ev["position"][s].astype(np.float64))
        )
        out[s] = _sigmoid(np.clip(logit, -15.0, 15.0))
    return out


def _make_events(
    cfg: SyntheticSource, rng: np.random.Generator, start: int,
    users: dict[str, np.ndarray], items: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    n = cfg.n_impressions
    user = _sample(rng, users["activity"], n)
    item = _sample(rng, items["popularity"], n)
    diurnal = 1.0 + 0.7 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)
    hour = _sample(rng, diurnal / diurnal.sum(), n, np.int8)
    day = rng.integers(0, cfg.days, n, dtype=np.int32)
    # Nobody sees an impression before signing up, nor an item before it exists: move such days later.
    min_day = np.maximum(users["min_day"][user], items["min_day"][item])
    late = day < min_day
    span = cfg.days - min_day[late]
    day[late] = min_day[late] + (rng.random(int(late.sum())) * span).astype(np.int32)
    ts = start + day.astype(np.int64) * DAY + hour.astype(np.int64) * HOUR + rng.integers(0, HOUR, n)
    hour = ((ts // HOUR) % 24).astype(np.int8)  # the UTC hour of ts (equals the draw for a midnight start)
    del day, min_day, late
    channel = _sample(rng, CHANNEL_PROBS, n, np.int8)
    dev_cdf = np.cumsum(DEVICE_GIVEN_CHANNEL, axis=1)
    device = (rng.random(n)[:, None] >= dev_cdf[channel][:, :-1]).sum(axis=1).astype(np.int8)
    pos_w = np.arange(1, N_POSITIONS + 1, dtype=np.float64) ** -0.5
    position = (_sample(rng, pos_w / pos_w.sum(), n, np.int8) + 1).astype(np.int8)
    order = np.argsort(ts, kind="stable")
    ev = {
        "user": user[order], "item": item[order], "ts": ts[order], "hour": hour[order],
        "channel": channel[order], "device": device[order], "position": position[order],
    }
    del user, item, ts, hour, channel, device, position, order
    price = np.empty(n, dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        s = slice(lo, min(lo + _CHUNK, n))
        price[s] = _price_at(items, ev["item"][s], ev["ts"][s])
    ev["price"] = price
    ev["p_click"] = _click_probability(cfg, users, items, ev, price)
    ev["click"] = (rng.random(n, dtype=np.float32) < ev["p_click"]).astype(np.float32)
    return ev


def _events_table(ev: dict[str, np.ndarray], cfg: SyntheticSource) -> pa.Table:
    n = len(ev["ts"])
    return pa.Table.from_arrays(
        [
            pa.array(np.arange(1, n + 1, dtype=np.int64)),
            pa.array(ev["user"].astype(np.int64) + cfg.first_user_id),
            pa.array(ev["item"].astype(np.int64) + 1),
            pa.array(ev["ts"]),
            _strings(CHANNELS, ev["channel"]),
            _strings(DEVICES, ev["device"]),
            pa.array(ev["hour"].astype(np.int64)),
            pa.array(ev["position"].astype(np.int64)),
            pa.array(ev["click"]),
            pa.array(ev["p_click"]),
        ],
        schema=EVENTS_SCHEMA,
    )


def _purchases_table(cfg: SyntheticSource, rng: np.random.Generator, ev: dict[str, np.ndarray]) -> pa.Table:
    """A price-dependent fraction of clicks become purchases a few minutes after the click."""
    clicked = np.flatnonzero(ev["click"] > 0)
    price = ev["price"][clicked].astype(np.float64)
    median = float(np.median(price)) if len(price) else 1.0
    p_buy = np.clip(cfg.purchase_rate * (price / median) ** -0.5, 0.0, 1.0)
    bought = clicked[rng.random(len(clicked)) < p_buy]
    quantity = _sample(rng, np.array([0.7, 0.2, 0.1]), len(bought), np.int64) + 1
    ts = ev["ts"][bought] + rng.integers(60, 900, len(bought))
    revenue = (ev["price"][bought].astype(np.float64) * quantity).astype(np.float32)
    order = np.argsort(ts, kind="stable")
    return pa.Table.from_arrays(
        [
            pa.array(bought[order].astype(np.int64) + 1),
            pa.array(ev["user"][bought][order].astype(np.int64) + cfg.first_user_id),
            pa.array(ev["item"][bought][order].astype(np.int64) + 1),
            pa.array(ts[order]),
            pa.array(quantity[order]),
            pa.array(revenue[order]),
        ],
        schema=PURCHASES_SCHEMA,
    )


# ------------------------------------------------------------------------------------------------ public API


def generate(cfg: SyntheticSource) -> dict[str, pa.Table]:
    """Generate the synthetic marketing data set described by `cfg`.

    Args:
        cfg: the generator's knobs; the same config (seed included) always yields identical tables.

    Returns:
        {'events', 'users', 'items', 'purchases'} as Arrow tables with the canonical schemas (SCHEMAS).
        events are sorted by ts, impression_id = 1..n; `p_click` is the oracle probability (never a feature).
    """
    rng = np.random.default_rng(cfg.seed)
    start = _start_ts(cfg)
    users = _make_users(cfg, rng, start)
    items = _make_items(cfg, rng, start)
    ev = _make_events(cfg, rng, start, users, items)
    return {
        "events": _events_table(ev, cfg),
        "users": _users_table(users, cfg),
        "items": _items_table(items, cfg),
        "purchases": _purchases_table(cfg, rng, ev),
    }


def latent_click_model(cfg: SyntheticSource) -> dict[str, Any]:
    """What `generate` draws before it writes tables (the same draws for the same config), for analyses against the
    known click model; never features. `users` (taste, bias, age, gender, region, ...), `items` (vec, bias, brand,
    ...), `events` (user, item, ts, channel, device, hour, position, price, p_click, click), each event's
    `context_logit` (every term of the click logit but the user and item biases and the user x item interaction),
    the interaction's `scale` and the standard deviations of the biases' priors, `user_bias_sd` and `item_bias_sd`."""
    rng = np.random.default_rng(cfg.seed)
    start = _start_ts(cfg)
    users = _make_users(cfg, rng, start)
    items = _make_items(cfg, rng, start)
    ev = _make_events(cfg, rng, start, users, items)
    hour = _HOUR_EFFECT * np.cos(2 * np.pi * (np.arange(24) - 21) / 24)
    context = (cfg.base_logit + CHANNEL_EFFECT[ev["channel"]] + DEVICE_EFFECT[ev["device"]] + hour[ev["hour"]]
               + _PRICE_EFFECT * (np.log(ev["price"]) - items["cat_mu"][items["cat"][ev["item"]]])
               - cfg.position_bias * np.log(ev["position"].astype(np.float64)))
    return {"users": users, "items": items, "events": ev, "context_logit": context,
            "scale": cfg.interaction_scale / np.sqrt(cfg.latent_dim), "user_bias_sd": _USER_BIAS_SD,
            "item_bias_sd": _ITEM_BIAS_SD}


@dataclass(frozen=True)
class ClickModel:
    """The generator's true click and purchase model for any (user, item, context) at any time: what a simulated
    user of the live service does (serving.experiments.simulate), so every served policy's true CTR is known.
    Ids are the generated tables' (users from `first_user_id`, items from 1); `channel` and `device` are their names."""

    cfg: SyntheticSource
    users: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    median_price: float

    @property
    def activity(self) -> np.ndarray:
        """Each user's share of visits (user `first_user_id` + i at index i)."""
        return self.users["activity"]

    def prices(self, item_id: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return _price_at(self.items, np.asarray(item_id, dtype=np.int64) - 1, np.asarray(ts, dtype=np.int64))

    def click_probability(self, user_id: np.ndarray, item_id: np.ndarray, *, channel: np.ndarray, device: np.ndarray,
                          hour: np.ndarray, position: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The click probability the generator would draw each impression's click from (`p_click`)."""
        ev = {"user": np.asarray(user_id, dtype=np.int64) - self.cfg.first_user_id,
              "item": np.asarray(item_id, dtype=np.int64) - 1,
              "channel": _codes(CHANNELS, channel), "device": _codes(DEVICES, device),
              "hour": np.asarray(hour, dtype=np.int64), "position": np.asarray(position, dtype=np.int64)}
        return _click_probability(self.cfg, self.users, self.items, ev, self.prices(item_id, ts))

    def purchase_probability(self, item_id: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """P(purchase | click), price-dependent as in the generated purchases table."""
        price = self.prices(item_id, ts).astype(np.float64)
        return np.clip(self.cfg.purchase_rate * (price / self.median_price) ** -0.5, 0.0, 1.0)


def _codes(vocab: tuple[str, ...], names: np.ndarray) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(vocab)}
    return np.fromiter((lookup[str(n)] for n in np.asarray(names).ravel()), dtype=np.int64, count=np.size(names))


def click_model(cfg: SyntheticSource) -> ClickModel:
    """The users' and items' latent draws of `generate` (the same seed order, without drawing the impressions)."""
    rng = np.random.default_rng(cfg.seed)
    start = _start_ts(cfg)
    users = _make_users(cfg, rng, start)
    items = _make_items(cfg, rng, start)
    return ClickModel(cfg, users, items, float(np.median(items["hist_price"][:, 0])))


def _config_json(cfg: SyntheticSource) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, **cfg.model_dump(mode="json")}


def _read_cached(cfg: SyntheticSource, work_dir: Path) -> dict[str, pa.Table] | None:
    manifest = work_dir / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("config") != _config_json(cfg):
        return None
    paths = {name: work_dir / f"{name}.parquet" for name in TABLE_NAMES}
    if not all(p.is_file() for p in paths.values()):
        return None
    tables = {name: pq.read_table(p) for name, p in paths.items()}
    if any(tables[n].schema != SCHEMAS[n] or tables[n].num_rows != meta["rows"].get(n) for n in TABLE_NAMES):
        return None
    return tables


def load_synthetic(cfg: SyntheticSource, work_dir: Path) -> RawData:
    """Generate (or reuse) the synthetic tables as Parquet under `work_dir` and return them.

    Writes events/users/items/purchases.parquet and manifest.json (config, row counts, mean CTR). When a
    manifest with the identical config (and generator version) exists, the Parquet files are read instead.
    """
    work_dir = Path(work_dir)
    paths = {name: work_dir / f"{name}.parquet" for name in TABLE_NAMES}
    tables = _read_cached(cfg, work_dir)
    if tables is None:
        tables = generate(cfg)
        work_dir.mkdir(parents=True, exist_ok=True)
        manifest = work_dir / MANIFEST_NAME
        manifest.unlink(missing_ok=True)  # a half-written cache is never mistaken for a valid one
        for name, path in paths.items():
            tmp = path.with_suffix(".parquet.tmp")
            pq.write_table(tables[name], tmp)
            os.replace(tmp, path)
        clicks = tables["events"].column("click").to_numpy()
        meta = {
            "config": _config_json(cfg),
            "rows": {name: tables[name].num_rows for name in TABLE_NAMES},
            "mean_ctr": float(clicks.mean()) if len(clicks) else 0.0,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tmp = manifest.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, manifest)
    return RawData(
        tables=tables,
        rows_read={name: tables[name].num_rows for name in TABLE_NAMES},
        paths={name: str(p) for name, p in paths.items()},
    )


# ------------------------------------------------------------------------------------------ criteo-shaped


def _zipf_ids(rng: np.random.Generator, n_rows: int, n_ids: int, a: float) -> np.ndarray:
    """Zipf-like ids in [1, n_ids]: discrete Pareto draws (P(X >= k) = k^(1-a)) folded into the range,
    then relabelled by a random permutation so the frequent ids differ per field."""
    x = np.floor(np.minimum((1.0 - rng.random(n_rows)) ** (-1.0 / (a - 1.0)), 2.0**62))
    folded = (x.astype(np.int64) - 1) % n_ids
    return rng.permutation(n_ids).astype(np.int64)[folded] + 1


def generate_criteo_schema(
    n_rows: int, *, n_ids: int = 100_000, zipf_a: float = 1.2, seed: int = 0, ctr: float = 0.25
) -> pa.Table:
    """A Criteo-shaped table for benchmarks: label, I1-I13 float32 counts (~5% nulls), C1-C26 int64 ids.

    Args:
        n_rows: number of rows.
        n_ids: ids of each categorical field lie in [1, n_ids], Zipf-distributed.
        zipf_a: Zipf exponent (> 1); larger is more skewed.
        seed: random seed; same arguments give an identical table.
        ctr: target mean of the label (the intercept is calibrated to it).

    The label follows a logistic model over I1, I3, I5, I7 (log counts) and per-id effects of C1, C2, C5,
    C9, C14 plus a C1 x C2 interaction, so a model's AUC is meaningful.
    """
    if n_rows < 1:
        raise ValueError(f"generate_criteo_schema: n_rows must be >= 1, got {n_rows}")
    if n_ids < 1:
        raise ValueError(f"generate_criteo_schema: n_ids must be >= 1, got {n_ids}")
    if not zipf_a > 1.0:
        raise ValueError(f"generate_criteo_schema: zipf_a must be > 1 (e.g. 1.2), got {zipf_a}")
    if not 0.0 < ctr < 1.0:
        raise ValueError(f"generate_criteo_schema: ctr must be in (0, 1), got {ctr}")
    rng = np.random.default_rng(seed)
    logit = np.zeros(n_rows)
    columns: dict[str, pa.Array] = {}
    weights = {1: 0.35, 3: -0.25, 5: 0.2, 7: 0.3}
    for j in range(1, 14):
        counts = np.floor(rng.lognormal(rng.uniform(0.0, 4.0), rng.uniform(0.8, 1.5), n_rows))
        missing = rng.random(n_rows) < 0.05
        if j in weights:
            z = np.log1p(counts)
            logit += weights[j] * np.where(missing, 0.0, (z - z.mean()) / (z.std() + 1e-9))
        columns[f"I{j}"] = pa.array(counts.astype(np.float32), mask=missing)
    effects = {1: 0.6, 2: 0.5, 5: 0.4, 9: 0.4, 14: 0.3}
    ids: dict[int, np.ndarray] = {}
    for f in range(1, 27):
        ids[f] = _zipf_ids(rng, n_rows, n_ids, zipf_a)
        if f in effects:
            logit += rng.normal(0.0, effects[f], n_ids + 1)[ids[f]]
        columns[f"C{f}"] = pa.array(ids[f])
    cross = rng.normal(0.0, 0.5, 4096)
    logit += cross[(ids[1] * 1_000_003 + ids[2]) % 4096]
    # Calibrate the intercept by bisection so the mean click probability is `ctr`.
    sample = logit[: min(n_rows, 200_000)]
    lo, hi = -20.0, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if _sigmoid(sample + mid).mean() > ctr:
            hi = mid
        else:
            lo = mid
    label = (rng.random(n_rows) < _sigmoid(logit + (lo + hi) / 2)).astype(np.float32)
    names = ["label"] + [f"I{j}" for j in range(1, 14)] + [f"C{f}" for f in range(1, 27)]
    return pa.Table.from_arrays([pa.array(label), *(columns[n] for n in names[1:])], names=names)
