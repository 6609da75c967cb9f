"""Customers from the scenario's purchases: orders, per-customer RFM at a cut-off, and what came next.

Every analysis of this package reads the same purchases the feature store's profiles read (`profiles.table`,
`profiles.user_key`, `profiles.amount`, `profiles.order` of the scenario), through the scenario's reader, so a
segment, a churn risk and a lifetime value describe the customers the models see.

Rules (each counted in `Orders.counts`, none silent):
- A row without a user or a time is dropped ("rows_without_user" / "rows_without_time"); the reader has already
  rejected unparsable lines with their file and line.
- Rows are summed into orders (`profiles.order`, e.g. the invoice; every row is its own order when null). An
  order whose net amount is not positive (a return, a cancellation, a zero-value order) is not a purchase: it
  counts in neither frequency nor recency, but its amount is netted into the customer's monetary value, as the
  profiles do ("non_positive_orders").
- A customer is in the table at a cut-off only with at least one purchase at or before it; customers whose only
  orders before the cut-off are returns are left out and counted ("customers_without_purchase").

The time split: the last `holdout_days` of the data are the next period. An analysis fits on what is known at
`calibration_end` and is scored on what customers did in (`calibration_end`, `data_end`].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import ConfigError, FeatureStoreConfig
from feature_store.layout import RunLayout
from feature_store.offline import as_array, encode_keys
from feature_store.readers import read_scenario_source

DAY = 86_400.0


@dataclass(frozen=True)
class Orders:
    """One row per order: `user` codes into `users` (the ids as the source types them), `ts` (Unix seconds, the
    order's first row), `amount` (net). `data_end` is the last order's time; `counts` what the rules did."""

    users: pa.Array
    user: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    user_key: str
    counts: dict[str, int] = field(default_factory=dict)
    # per user code: the value of each profile column on the customer's earliest row (known whenever the customer
    # is, so no analysis at a cut-off sees a later value), as strings; null where that row had none
    profile: dict[str, pa.Array] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return int(self.ts.min())

    @property
    def data_end(self) -> int:
        return int(self.ts.max())

    def split(self, holdout_days: float) -> int:
        """`calibration_end` of the time split: `holdout_days` before the end of the data. Refuses a holdout that
        leaves no calibration period (a horizon longer than the data)."""
        span_days = (self.data_end - self.data_start) / DAY
        if holdout_days >= span_days:
            raise ConfigError(f"analytics.holdout_days {holdout_days:g} is not shorter than the data, which spans "
                              f"{span_days:.1f} days; choose fewer days (at most about a third of the span)")
        return int(self.data_end - holdout_days * DAY)


def orders_from_rows(table: pa.Table, *, user_key: str, amount: str, order: str | None, ts: str = "ts",
                     where: str = "purchases", profile_columns: tuple[str, ...] = ()) -> Orders:
    """Sum purchase rows into orders (columnar: one group-by). `where` names the table in error messages;
    `profile_columns` are carried per customer (`Orders.profile`)."""
    needed = [c for c in (user_key, amount, ts, order) if c is not None]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ConfigError(f"{where}: column(s) {missing} not found (profiles.user_key / amount / order); it has "
                          f"{table.column_names}")
    unknown = [c for c in profile_columns if c not in table.column_names]
    if unknown:
        raise ConfigError(f"analytics.churn.profile_columns: {unknown} not in {where}, which has "
                          f"{table.column_names}: name columns of it or remove them")
    needed += [c for c in profile_columns if c not in needed]
    counts = {"rows": table.num_rows}
    t = table.select(needed)
    no_user = pc.is_null(t.column(user_key))
    no_time = pc.is_null(t.column(ts))
    counts["rows_without_user"] = int(pc.sum(no_user).as_py() or 0)
    counts["rows_without_time"] = int(pc.sum(pc.and_(pc.invert(no_user), no_time)).as_py() or 0)
    t = t.filter(pc.invert(pc.or_(no_user, no_time)))
    if t.num_rows == 0:
        raise ConfigError(f"{where}: no row has both a user ({user_key}) and a time ({ts}); nothing to analyse")
    codes, users = encode_keys(as_array(t.column(user_key)))
    amounts = np.nan_to_num(as_array(t.column(amount)).to_numpy(zero_copy_only=False).astype(np.float64))
    times = as_array(t.column(ts)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    if order is None:
        o_user, o_ts, o_amount = codes.astype(np.int64), times, amounts
    else:
        # (user, order) pairs: an order id is only unique per user in some sources, so group by both
        o_codes, _ = encode_keys(as_array(t.column(order)).cast(pa.string()))
        g = pa.table({"u": codes.astype(np.int64), "o": o_codes.astype(np.int64), "t": times, "a": amounts})
        agg = g.group_by(["u", "o"], use_threads=False).aggregate([("t", "min"), ("a", "sum")])
        o_user = agg.column("u").to_numpy()
        o_ts = agg.column("t_min").to_numpy()
        o_amount = agg.column("a_sum").to_numpy()
    counts["orders"] = len(o_user)
    counts["non_positive_orders"] = int(np.sum(o_amount <= 0))
    profile = {}
    if profile_columns:
        earliest = np.lexsort((times, codes))  # by user, then time: each user's first row leads its run
        lead = earliest[np.r_[True, codes[earliest][1:] != codes[earliest][:-1]]]
        for c in profile_columns:
            profile[c] = as_array(t.column(c)).cast(pa.string()).take(pa.array(lead))
    return Orders(users=users, user=o_user, ts=o_ts, amount=o_amount, user_key=user_key, counts=counts,
                  profile=profile)


def read_orders(cfg: FeatureStoreConfig, work_dir: Path | None = None, profile_columns: tuple[str, ...] = ()
                ) -> Orders:
    """The scenario's purchases (its `profiles` columns) as orders, with `profile_columns` per customer."""
    raw = read_scenario_source(cfg, Path(work_dir) if work_dir else RunLayout(Path(cfg.output_dir)).raw)
    p = cfg.profiles
    if p.table not in raw.tables:
        raise ConfigError(f"profiles.table: the source ({cfg.source.type}) has no table '{p.table}' (it has "
                          f"{sorted(raw.tables)}); the analyses read purchases from it: name the table of purchases "
                          f"or use a source with one (transactions, synthetic)")
    orders = orders_from_rows(raw.tables[p.table], user_key=p.user_key, amount=p.amount, order=p.order,
                              where=f"table '{p.table}'", profile_columns=tuple(profile_columns))
    orders.counts["rows_rejected_by_reader"] = len(raw.rejects)
    return orders


def customers_at(orders: Orders, as_of: int) -> pa.Table:
    """Per customer with a purchase at or before `as_of`: RFM and two profile features, columnar (bincount).

    Columns: the user key; `recency_days` (days from the last purchase to `as_of`), `frequency` (purchases),
    `monetary` (net amount: purchases minus returns, floored at 0), `tenure_days` (days since the first purchase),
    `avg_order_value` (gross purchase amount per purchase), `first_ts`, `last_ts`; then the orders' profile
    columns (strings).
    """
    n = len(orders.users)
    known = orders.ts <= as_of
    buy = known & (orders.amount > 0)
    u_buy = orders.user[buy]
    frequency = np.bincount(u_buy, minlength=n)
    gross = np.bincount(u_buy, weights=orders.amount[buy], minlength=n)
    net = np.bincount(orders.user[known], weights=orders.amount[known], minlength=n)
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, u_buy, orders.ts[buy])
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, u_buy, orders.ts[buy])
    has = frequency > 0
    returns_only = np.bincount(orders.user[known], minlength=n) > 0
    orders.counts["customers_without_purchase"] = int(np.sum(returns_only & ~has))
    idx = np.flatnonzero(has)
    return pa.table({
        orders.user_key: orders.users.take(pa.array(idx)),
        "recency_days": (as_of - last[idx]) / DAY,
        "frequency": frequency[idx].astype(np.int64),
        "monetary": np.maximum(net[idx], 0.0),
        "tenure_days": (as_of - first[idx]) / DAY,
        "avg_order_value": gross[idx] / frequency[idx],
        "first_ts": first[idx],
        "last_ts": last[idx],
        **{c: values.take(pa.array(idx)) for c, values in orders.profile.items()},
    })


def next_period(orders: Orders, customers: pa.Table, start: int, end: int) -> pa.Table:
    """What each customer of `customers` did in (`start`, `end`]: `next_purchases`, `next_revenue` (net),
    `days_to_next` (days from `start` to the first purchase; NaN without one)."""
    codes, _ = encode_keys(as_array(customers.column(orders.user_key)), orders.users)
    n = len(orders.users)
    inside = (orders.ts > start) & (orders.ts <= end)
    buy = inside & (orders.amount > 0)
    purchases = np.bincount(orders.user[buy], minlength=n)
    revenue = np.bincount(orders.user[inside], weights=orders.amount[inside], minlength=n)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, orders.user[buy], orders.ts[buy])
    days = np.where(purchases > 0, (first - start) / DAY, np.nan)
    return pa.table({
        orders.user_key: customers.column(orders.user_key),
        "next_purchases": purchases[codes].astype(np.int64),
        "next_revenue": revenue[codes],
        "days_to_next": days[codes],
    })
