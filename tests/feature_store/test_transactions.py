"""Retail semantics of the transactions reader: cancellations netted against purchases, non-product codes,
duplicate lines, on small files shaped like the raw UCI Online Retail export (the shared copy has no
cancellations), and invoice frequency / RFM as of the last day on the shared copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from feature_store.config import ConfigError, ProfilesConfig, TransactionsSource, load_config
from feature_store.profiles import DAY_SECONDS, fit_user_profiles, rfm_segments
from feature_store.readers import read_source
from feature_store.readers.base import RawData
from feature_store.readers.transactions import net_returns, non_product_regex
from tests.conftest import dataset

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def read(tmp: Path, lines: list[str], **cfg: object) -> RawData:
    (tmp / "t.csv").write_text(HEADER + "\n".join(lines) + "\n")
    return read_source(TransactionsSource(type="transactions", path=str(tmp / "t.csv"), **cfg), tmp)


def reasons(raw: RawData) -> list[tuple[int, str]]:
    table = raw.rejects.to_table()
    return list(zip(table.column("line").to_pylist(), table.column("reason").to_pylist()))


def rows(table: pa.Table) -> list[tuple[str, str, str, float, float, float]]:
    cols = [table.column(c).to_pylist() for c in ("invoice", "user_id", "item_id", "quantity", "revenue", "label")]
    return [(i, u, it, q, pytest.approx(r, rel=1e-6), lab) for i, u, it, q, r, lab in zip(*cols)]


# ------------------------------------------------------------------------------------------- cancellations


def test_a_cancellation_reduces_the_oldest_earlier_purchases_and_never_becomes_an_event(tmp_path: Path) -> None:
    raw = read(tmp_path, [
        "536366,71053,LANTERN,4,2010-12-01 09:00:00,3.00,17850.0,UK",
        "536367,71053,LANTERN,4,2010-12-02 09:00:00,3.50,17850.0,UK",
        "536367,22633,GLOVES,2,2010-12-02 09:00:00,2.10,17850.0,UK",
        "C536379,71053,LANTERN,-6,2010-12-03 09:00:00,3.00,17850.0,UK",
        "536380,71053,LANTERN,1,2010-12-04 09:00:00,3.50,17850.0,UK",
    ])
    # 6 returned units: all 4 of the first line (dropped as an event), 2 of the second; the later purchase stays
    assert rows(raw.events) == [
        ("536367", "17850", "71053", 2.0, 7.0, 1.0),
        ("536367", "17850", "22633", 2.0, 4.2, 1.0),
        ("536380", "17850", "71053", 1.0, 3.5, 1.0),
    ]
    purchases = raw.tables["purchases"]
    # the profile input keeps each line as bought and the return at its own time, valued at the purchase
    # prices of the units it cancels (4 x 3.00 + 2 x 3.50 = 19), so the revenues sum to the events' net revenue
    assert rows(purchases)[3] == ("C536379", "17850", "71053", -6.0, -19.0, 0.0)
    assert sum(purchases.column("revenue").to_pylist()) == pytest.approx(sum(raw.events.column("revenue").to_pylist()))
    assert purchases.column("ts").to_pylist()[3] == 1291366800
    assert raw.rejects.to_table().num_rows == 0
    assert raw.counts == {"purchase_lines": 4, "return_lines": 1, "fully_returned_lines": 1,
                          "partly_returned_lines": 1, "return_lines_partly_matched": 0}


def test_a_customer_who_returns_everything_has_no_event_and_no_monetary_value(tmp_path: Path) -> None:
    raw = read(tmp_path, [
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,UK",
        "536365,71053,LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,UK",
        "536366,85123A,HEART,2,2010-12-01 10:00:00,2.55,13047.0,UK",
        "C536379,85123A,HEART,-6,2010-12-05 10:00:00,2.55,17850.0,UK",
        "C536379,71053,LANTERN,-6,2010-12-05 10:00:00,3.39,17850.0,UK",
    ])
    assert raw.events.column("user_id").to_pylist() == ["13047"]
    assert set(raw.tables["purchases"].column("label").to_pylist()) == {0.0, 1.0}
    assert all(q > 0 for q in raw.events.column("quantity").to_pylist())
    profiles = fit_user_profiles(raw.tables["purchases"], None, ProfilesConfig(category=None, order="invoice"),
                                 train_end_ts=0)
    latest = {r["user_id"]: r for r in profiles.latest(1291600000).to_pylist()}
    assert latest["17850"]["rfm_monetary"] == pytest.approx(0.0, abs=1e-4)
    assert latest["17850"]["rfm_frequency"] == 1.0  # one order placed (then returned)
    assert latest["17850"]["last_purchase_ts"] == 1291191960  # a return is not a purchase
    assert latest["13047"]["rfm_monetary"] == pytest.approx(5.1)


def test_a_return_of_an_item_bought_before_the_data_starts_is_rejected_as_unmatched(tmp_path: Path) -> None:
    raw = read(tmp_path, [
        "C536370,22728,ALARM CLOCK,-2,2010-12-01 09:00:00,3.75,12583.0,France",
        "536371,22728,ALARM CLOCK,3,2010-12-02 09:00:00,3.75,12583.0,France",
        "536372,22727,ALARM CLOCK RED,5,2010-12-02 09:00:00,3.75,12583.0,France",
        "C536373,22727,ALARM CLOCK RED,-8,2010-12-03 09:00:00,3.75,12583.0,France",
        "C536374,22728,ALARM CLOCK,-1,2010-12-03 09:00:00,3.75,99999.0,France",
    ])
    # line 2 precedes every purchase of the item (a later purchase is not its match); line 6 is another
    # customer's; line 5 returns 8 of 5 bought: the 5 are netted, the line stays as a partly matched return
    assert reasons(raw) == [(2, "unmatched cancellation"), (6, "unmatched cancellation")]
    assert rows(raw.events) == [("536371", "12583", "22728", 3.0, 11.25, 1.0)]
    assert rows(raw.tables["purchases"])[-1] == ("C536373", "12583", "22727", -5.0, -18.75, 0.0)
    assert raw.counts["return_lines_partly_matched"] == 1 and raw.counts["fully_returned_lines"] == 1


def test_the_cancellation_rule_is_the_invoice_prefix_or_a_negative_quantity(tmp_path: Path) -> None:
    lines = [
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,UK",
        "C536366,85123A,HEART,1,2010-12-01 09:00:00,2.55,17850.0,UK",  # prefixed, positive quantity
        "536367,85123A,HEART,-2,2010-12-01 10:00:00,2.55,17850.0,UK",  # negative quantity, no prefix
    ]
    default = read(tmp_path, lines)
    assert default.events.column("quantity").to_pylist() == [3.0]
    no_prefix = read(tmp_path, lines, cancellation_prefix=None)
    # without a prefix rule the positive C-line is a purchase: 6 and 1 bought, 2 returned from the oldest
    assert no_prefix.events.column("quantity").to_pylist() == [4.0, 1.0]
    other = read(tmp_path, [lines[0], "R536366,85123A,HEART,1,2010-12-01 09:00:00,2.55,17850.0,UK"],
                 cancellation_prefix="R")
    assert other.events.column("quantity").to_pylist() == [5.0]


def _fifo_reference(
    customer: np.ndarray, item: np.ndarray, ts: np.ndarray, quantity: np.ndarray, is_return: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Line by line: each return, in time order (purchases first at equal times), takes units from the
    oldest purchases of the same customer and item that still have some."""
    lost, matched = np.zeros(len(quantity)), np.zeros(len(quantity))
    for r in sorted(range(len(quantity)), key=lambda i: (ts[i], is_return[i], i)):
        if not is_return[r]:
            continue
        want = abs(quantity[r])
        bought = [p for p in range(len(quantity)) if not is_return[p] and customer[p] == customer[r]
                  and item[p] == item[r] and (ts[p], p) < (ts[r], len(quantity))]
        for p in sorted(bought, key=lambda i: (ts[i], i)):
            take = min(want, quantity[p] - lost[p])
            lost[p] += take
            matched[r] += take
            want -= take
    return lost, matched


@pytest.mark.parametrize("seed", range(5))
def test_columnar_netting_equals_a_line_by_line_fifo_simulation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    customer, item = rng.integers(0, 6, n), rng.integers(0, 4, n)
    ts = rng.integers(0, 40, n)
    is_return = rng.random(n) < 0.35
    quantity = np.where(is_return, -rng.integers(1, 9, n), rng.integers(0, 7, n)).astype(np.float64)
    lost, matched = net_returns(customer, item, ts, quantity, is_return)
    want_lost, want_matched = _fifo_reference(customer, item, ts, quantity, is_return)
    assert np.array_equal(lost, want_lost) and np.array_equal(matched, want_matched)
    assert 0 < (matched == 0)[is_return].sum() < is_return.sum()  # the case has unmatched and matched returns


# ------------------------------------------------------------------------------- non-products and duplicates


def test_non_product_codes_are_rejected_with_their_code(tmp_path: Path) -> None:
    raw = read(tmp_path, [
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,UK",
        "536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.00,17850.0,UK",
        "536366,m,Manual,1,2010-12-01 09:00:00,0.85,17850.0,UK",
        "536367,BANK CHARGES,Bank Charges,1,2010-12-01 09:10:00,15.00,17850.0,UK",
        "536368,gift_0001_20,Dotcomgiftshop Gift Voucher,1,2010-12-01 09:20:00,17.02,17850.0,UK",
        "536369,TEST001,This is a test product.,5,2010-12-01 09:30:00,4.50,17850.0,UK",
        "536370, DOT ,DOTCOM POSTAGE,1,2010-12-01 09:40:00,11.17,17850.0,UK",
        "C536371,D,Discount,-1,2010-12-01 09:50:00,27.50,17850.0,UK",
        "536372,DCGSSBOY,BOYS PARTY BAG,1,2010-12-01 10:00:00,3.29,17850.0,UK",
    ])
    assert reasons(raw) == [
        (3, "non-product code: POST"),
        (4, "non-product code: m"),
        (5, "non-product code: BANK CHARGES"),
        (6, "non-product code: gift_0001_20"),
        (7, "non-product code: TEST001"),
        (8, "non-product code: DOT"),
        (9, "non-product code: D"),
    ]
    assert raw.events.column("item_id").to_pylist() == ["85123A", "DCGSSBOY"]
    everything = read(tmp_path, ["536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.00,17850.0,UK"],
                      non_product_codes=[])
    assert everything.events.num_rows == 1


def test_non_product_globs_match_the_whole_code_and_treat_other_characters_literally() -> None:
    pattern = non_product_regex(["A?C", "x.y*", "BANK CHARGES", "(1)"])
    assert pattern is not None
    codes = ["ABC", "abc", "ABBC", "AC", "x.y", "X.Yz", "xzy", "BANK CHARGES", "BANK CHARGES2", "(1)", "1"]
    hits = pc.match_substring_regex(pa.array(codes), pattern, ignore_case=True).to_pylist()
    assert dict(zip(codes, hits)) == {"ABC": True, "abc": True, "ABBC": False, "AC": False, "x.y": True,
                                      "X.Yz": True, "xzy": False, "BANK CHARGES": True, "BANK CHARGES2": False,
                                      "(1)": True, "1": False}
    assert non_product_regex([]) is None


def test_exact_duplicate_lines_are_rejected_after_the_first_copy(tmp_path: Path) -> None:
    first = "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,UK"
    raw = read(tmp_path, [
        first,
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,",  # another country: not a duplicate
        first,
        "536365,85123A,HEART,7,2010-12-01 08:26:00,2.55,17850.0,UK",
        first,
    ])
    assert reasons(raw) == [(4, "duplicate line"), (6, "duplicate line")]
    assert raw.events.column("quantity").to_pylist() == [6.0, 6.0, 7.0]
    assert raw.rejects.to_table().column("raw").to_pylist()[0] == first


def test_the_removed_negative_quantity_switch_is_a_config_error_naming_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("type: transactions\npath: t.csv\nallow_negative_quantity: true\n")
    with pytest.raises(ConfigError, match="'allow_negative_quantity' was removed") as err:
        load_config(tmp_path / "c.yaml", TransactionsSource)
    assert "c.yaml" in str(err.value) and "delete the key" in str(err.value)


# ------------------------------------------------------------------------------------- the shared data set


@pytest.fixture(scope="module")
def online_retail(tmp_path_factory: pytest.TempPathFactory) -> RawData:
    path = dataset("online-retail") / "online_retail.parquet"
    return read_source(TransactionsSource(type="transactions", path=str(path)), tmp_path_factory.mktemp("r"))


@pytest.mark.slow
def test_online_retail_frequency_counts_invoices_and_the_end_profile_includes_the_last_day(
    online_retail: RawData,
) -> None:
    purchases = online_retail.tables["purchases"]
    profiles = fit_user_profiles(purchases, None, ProfilesConfig(category=None, order="invoice"), train_end_ts=0)
    frame = purchases.select(["user_id", "invoice", "ts", "revenue"]).to_pandas()
    want = frame.groupby("user_id").agg(orders=("invoice", "nunique"), lines=("invoice", "size"),
                                        money=("revenue", "sum"), last=("ts", "max"))
    as_of = int(frame["ts"].max()) + 1  # materialize's default: one second after the last event
    got = profiles.latest(as_of).to_pandas().set_index("user_id").loc[want.index]
    assert (got["rfm_frequency"].to_numpy() == want["orders"].to_numpy()).all()
    assert (want["lines"] > want["orders"]).mean() > 0.9  # most customers order baskets of several lines
    assert np.allclose(got["rfm_monetary"].to_numpy(), want["money"].to_numpy(), rtol=1e-4)
    assert np.allclose(got["rfm_recency_days"].to_numpy(), (as_of - want["last"].to_numpy()) / DAY_SECONDS,
                       rtol=1e-5)
    segments = rfm_segments(profiles.rfm, as_of=as_of, user_key="user_id", data_end_ts=profiles.data_end_ts)
    assert segments.num_rows == len(want)  # every customer, also those who first bought on the last day
    last_day = as_of // DAY_SECONDS * DAY_SECONDS
    on_last_day = frame.loc[frame["ts"] >= last_day, "user_id"].unique()
    assert len(on_last_day) > 0
    before = frame[frame["ts"] < last_day].groupby("user_id")["invoice"].nunique()
    strict = rfm_segments(profiles.rfm, as_of=as_of, user_key="user_id").to_pandas().set_index("user_id")
    assert len(strict) < len(want)  # the next-day rule alone would leave last-day-only customers out
    assert (strict.loc[before.index.intersection(on_last_day), "frequency"]
            == before.loc[before.index.intersection(on_last_day)]).all()


@pytest.mark.slow
def test_online_retail_events_never_see_purchases_of_their_own_day(online_retail: RawData) -> None:
    purchases = online_retail.tables["purchases"]
    profiles = fit_user_profiles(purchases, None, ProfilesConfig(category=None, order="invoice"), train_end_ts=0)
    events = online_retail.events
    with_rfm = profiles.add_to(events).select(["user_id", "ts", "rfm_frequency"]).to_pandas()
    frame = purchases.select(["user_id", "invoice", "ts"]).to_pandas()
    frame["day"] = frame["ts"] // DAY_SECONDS
    with_rfm["day"] = with_rfm["ts"] // DAY_SECONDS
    sample = with_rfm.iloc[:: 997]
    first_day = frame.groupby(["user_id", "invoice"])["day"].min().reset_index()
    for row in sample.itertuples():
        orders = ((first_day["user_id"] == row.user_id) & (first_day["day"] < row.day)).sum()
        if orders == 0:
            assert pd.isna(row.rfm_frequency)
        else:
            assert row.rfm_frequency == orders
    assert sample["rfm_frequency"].isna().any() and sample["rfm_frequency"].notna().any()
