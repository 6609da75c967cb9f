"""`recforge simulate`: synthetic visitors against the live service, behaving as the built-in generator's users.

Each visit draws a user (by the generator's activity weights) and a context (channel, device, the current hour),
asks `POST /recommend` for k items, and lets the user click each shown item with the generator's true click
probability at its position (`ClickModel`); a click becomes a purchase with the generator's price-dependent
rate. Clicks and purchases go to `POST /events` carrying the answer's `exposure_id`, so the service sees what a
real client would send. Because the true probabilities are known, every arm's true CTR (the mean click
probability of the items it showed) is reported beside what was observed, and the regret of the traffic split:
the expected clicks lost against showing every impression the truly best arm's CTR.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from feature_store.config import EventsConfig, SyntheticSource
from feature_store.readers.synthetic import CHANNEL_PROBS, CHANNELS, DEVICE_GIVEN_CHANNEL, DEVICES, click_model
from serving.client import request

EVENT_BATCH = 200


class _Tally:
    """Per-arm counters, shared by the worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arms: dict[str, dict[str, float]] = {}
        self.errors: list[str] = []
        self.pending: list[dict[str, Any]] = []
        self.sent = self.accepted = self.rejected = 0

    def add(self, arm: str, true_clicks: float, shown: int, clicks: int, purchases: int, revenue: float) -> None:
        with self.lock:
            a = self.arms.setdefault(arm, {"exposures": 0, "impressions": 0, "true_clicks": 0.0, "clicks": 0,
                                           "purchases": 0, "revenue": 0.0})
            a["exposures"] += 1
            a["impressions"] += shown
            a["true_clicks"] += true_clicks
            a["clicks"] += clicks
            a["purchases"] += purchases
            a["revenue"] += revenue


def run_simulation(source: SyntheticSource, url: str, *, requests: int, users: int | None = None,
                   concurrency: int = 4, k: int = 10, seed: int = 0, events: EventsConfig | None = None,
                   progress: Callable[[int], None] | None = None, pause_s: float = 0.0,
                   events_token: str | None = None, read_token: str | None = None) -> dict[str, Any]:
    """`requests` visits against `url`; per-arm true and observed rates, regret, and the events' fate. The tokens:
    the app's `serving.events_token` (POST /events) and `serving.read_token` (/recommend, when it has one)."""
    post_headers = {"X-Events-Token": events_token} if events_token else None
    read_headers = {"Authorization": f"Bearer {read_token}"} if read_token else None
    model = click_model(source)
    rng = np.random.default_rng(seed)
    n_users = min(users or len(model.activity), len(model.activity))
    weights = model.activity[:n_users] / model.activity[:n_users].sum()
    first = model.cfg.first_user_id
    visitors = rng.choice(np.arange(first, first + n_users), size=requests, p=weights)
    channel = rng.choice(len(CHANNELS), size=requests, p=CHANNEL_PROBS)
    device = np.array([rng.choice(len(DEVICES), p=DEVICE_GIVEN_CHANNEL[c]) for c in channel])
    draws = rng.random((requests, k, 2))  # the click and purchase draws of each shown slot
    click_type = "click"
    purchase_type = (events.purchase_types[0] if events and events.purchase_types else "purchase")
    tally = _Tally()
    t0 = time.perf_counter()

    def flush(force: bool = False) -> None:
        with tally.lock:
            if not tally.pending or (len(tally.pending) < EVENT_BATCH and not force):
                return
            batch, tally.pending = tally.pending, []
        code, body = request(url, "/events", {"events": batch}, headers=post_headers)
        with tally.lock:
            tally.sent += len(batch)
            if code == 200:
                tally.accepted += body["accepted"]
                tally.rejected += len(body["rejected"])
            else:
                tally.errors.append(f"POST /events: HTTP {code} {str(body)[:200]}")

    def visit(i: int) -> None:
        user = int(visitors[i])
        now = time.time()
        hour = int(now // 3600) % 24
        ctx = {"channel": CHANNELS[channel[i]], "device": DEVICES[device[i]], "hour": hour}
        try:
            code, body = request(url, "/recommend", {"user_id": user, "k": k, "context": ctx}, headers=read_headers)
        except OSError as exc:
            with tally.lock:
                tally.errors.append(f"POST /recommend: {exc}")
            return
        if code != 200:
            with tally.lock:
                tally.errors.append(f"POST /recommend: HTTP {code} {str(body)[:200]}")
            return
        items = np.array([it["item_id"] for it in body["items"]], dtype=np.int64)
        exp = body.get("experiment") or {}
        arm = str(exp.get("arm")) if exp.get("arm") else "(champion)"
        n = len(items)
        if n == 0:
            tally.add(arm, 0.0, 0, 0, 0, 0.0)
            return
        ts = np.full(n, int(now))
        p = model.click_probability(np.full(n, user), items, channel=np.full(n, ctx["channel"]),
                                    device=np.full(n, ctx["device"]), hour=np.full(n, hour),
                                    position=np.arange(1, n + 1), ts=ts)
        clicked = draws[i, :n, 0] < p
        bought = clicked & (draws[i, :n, 1] < model.purchase_probability(items, ts))
        price = model.prices(items, ts)
        eid = body["exposure_id"]
        out = [{"event_id": f"{eid}.click.{j + 1}", "ts": now + 1, "user_id": user, "item_id": int(items[j]),
                "type": click_type, "exposure_id": eid} for j in np.flatnonzero(clicked)]
        out += [{"event_id": f"{eid}.buy.{j + 1}", "ts": now + 2, "user_id": user, "item_id": int(items[j]),
                 "type": purchase_type, "value": round(float(price[j]), 2), "exposure_id": eid}
                for j in np.flatnonzero(bought)]
        tally.add(arm, float(p.sum()), n, int(clicked.sum()), int(bought.sum()), float(price[bought].sum()))
        if out:
            with tally.lock:
                tally.pending.extend(out)
            flush()
        if progress is not None:
            progress(1)
        if pause_s:
            time.sleep(pause_s)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(visit, range(requests)))
    flush(force=True)
    arms = {}
    for name, a in sorted(tally.arms.items()):
        n = max(a["impressions"], 1)
        arms[name] = {"exposures": int(a["exposures"]), "impressions": int(a["impressions"]),
                      "true_ctr": a["true_clicks"] / n, "observed_ctr": a["clicks"] / n, "clicks": int(a["clicks"]),
                      "purchases": int(a["purchases"]), "revenue": round(a["revenue"], 2)}
    best = max((a["true_ctr"] for a in arms.values()), default=0.0)
    regret = sum(a["impressions"] * (best - a["true_ctr"]) for a in arms.values())
    shown = max(sum(a["impressions"] for a in arms.values()), 1)
    return {"url": url, "visits": requests, "completed": sum(a["exposures"] for a in arms.values()),
            "seconds": round(time.perf_counter() - t0, 2), "arms": arms,
            "regret": {"expected_clicks_lost": round(regret, 2), "per_impression": round(regret / shown, 5)},
            "events": {"sent": tally.sent, "accepted": tally.accepted, "rejected": tally.rejected},
            "errors": tally.errors[:20], "error_count": len(tally.errors)}
