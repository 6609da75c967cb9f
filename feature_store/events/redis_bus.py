"""The Redis event bus: Redis Streams with consumer groups (XADD, XREADGROUP, XACK, XAUTOCLAIM).

Keys, for namespace `ns`: `ns:events` (the stream; one entry per batch, fields `n` and `p` = Arrow IPC bytes),
`ns:events:rejected` (a stream of rejected events: `event_id`, `reason`, `event`), `ns:events:rejected:kinds`
(hash: reason kind -> count). A publish is accepted once XADD returns: how durable that is depends on the
server's persistence (`appendonly yes` with `appendfsync everysec` loses at most a second on a power cut;
docs/cli.md#events).

When the server goes away, every call retries with backoff for `retry_s` before it raises a ConnectionError that
names the URL (credentials masked); the stream processor keeps retrying and resumes where its group stands.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from feature_store.events.bus import Entry, EventBus, decode, encode, reason_kind, rejected_text
from feature_store.secrets import redact_url, scrub

T = TypeVar("T")
REJECTED_MAXLEN = 1_000_000  # the dead-letter stream keeps about this many events (the counts keep all)


class RedisStreamBus(EventBus):
    """Event bus on a Redis server (Redis >= 6.2: XAUTOCLAIM)."""

    name = "redis"

    def __init__(self, url: str, namespace: str = "recforge", *, retry_s: float = 30.0) -> None:
        import redis

        self.url, self.namespace, self.retry_s = url, namespace, retry_s
        self._errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
        self._response_error = redis.ResponseError
        self._r = redis.Redis.from_url(url, decode_responses=False, health_check_interval=10)
        self.stream = f"{namespace}:events"
        self.dead = f"{namespace}:events:rejected"
        self.kinds = f"{namespace}:events:rejected:kinds"
        self._call(self._r.ping)

    def __repr__(self) -> str:
        return f"RedisStreamBus({redact_url(self.url)!r}, namespace={self.namespace!r})"

    def describe(self) -> str:
        return f"redis:{redact_url(self.url)} stream {self.stream}"

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args)`, retried with backoff while the server is unreachable, for up to `retry_s`."""
        deadline = time.monotonic() + self.retry_s
        wait = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except self._errors as exc:
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"event bus: Redis at {redact_url(self.url)} unreachable for "
                                          f"{self.retry_s:.0f}s ({scrub(str(exc))}); start it or fix "
                                          "events.bus.url / online_store.url") from None
                time.sleep(wait)
                wait = min(wait * 2, 1.0)

    def publish(self, events: pa.Table) -> str:
        entry = self._call(self._r.xadd, self.stream, {"n": events.num_rows, "p": encode(events)})
        return entry.decode()

    def ensure_group(self, group: str) -> None:
        try:
            self._call(self._r.xgroup_create, self.stream, group, id="0", mkstream=True)
        except self._response_error as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def _entries(reply: Any) -> list[Entry]:
        out = []
        for entry_id, fields in reply or []:
            if fields is None or b"p" not in fields:  # trimmed while pending: nothing left to apply
                continue
            out.append(Entry(entry_id.decode(), decode(fields[b"p"])))
        return out

    def read(self, group: str, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
        # no BLOCK for 0: Redis reads BLOCK 0 as "forever", and BLOCK 1 waits for the next entry in practice
        reply = self._call(self._r.xreadgroup, group, consumer, {self.stream: ">"}, count=count,
                           block=block_ms if block_ms > 0 else None)
        return self._entries(reply[0][1]) if reply else []

    def pending(self, group: str, consumer: str, *, count: int) -> list[Entry]:
        reply = self._call(self._r.xreadgroup, group, consumer, {self.stream: "0"}, count=count)
        return self._entries(reply[0][1]) if reply else []

    def reclaim(self, group: str, consumer: str, *, min_idle_s: float, count: int) -> list[Entry]:
        reply = self._call(self._r.xautoclaim, self.stream, group, consumer, int(min_idle_s * 1000),
                           start_id="0-0", count=count)
        return self._entries(reply[1])

    def ack(self, group: str, ids: Sequence[str]) -> None:
        if ids:
            self._call(self._r.xack, self.stream, group, *ids)

    def lag(self, group: str) -> dict[str, int]:
        for info in self._call(self._r.xinfo_groups, self.stream):
            if info["name"].decode() == group:
                return {"pending": int(info["pending"]), "unread": int(info.get("lag") or 0)}
        raise KeyError(f"event bus: no consumer group '{group}' on {self.stream} (ensure_group first)")

    def trim(self) -> int:
        floor: tuple[int, int] | None = None
        for info in self._call(self._r.xinfo_groups, self.stream):
            ms, seq = (int(x) for x in info["last-delivered-id"].decode().split("-"))
            candidate = (ms, seq + 1)  # everything before it was delivered
            if int(info["pending"]):
                summary = self._call(self._r.xpending, self.stream, info["name"])
                ms, seq = (int(x) for x in summary["min"].decode().split("-"))
                candidate = min(candidate, (ms, seq))
            floor = candidate if floor is None else min(floor, candidate)
        if floor is None:
            return 0
        return int(self._call(self._r.xtrim, self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))

    def reject(self, rejected: Sequence[tuple[str | None, str, Any]]) -> None:
        if not rejected:
            return
        pipe = self._r.pipeline(transaction=True)
        now = time.time()
        for eid, reason, event in rejected:
            pipe.xadd(self.dead, {"at": now, "event_id": eid or "", "reason": reason,
                                  "event": rejected_text(event) or ""}, maxlen=REJECTED_MAXLEN, approximate=True)
            pipe.hincrby(self.kinds, reason_kind(reason), 1)
        self._call(pipe.execute)

    def rejected(self, limit: int = 20) -> list[dict[str, Any]]:
        out = []
        for _, f in self._call(self._r.xrevrange, self.dead, count=limit):
            out.append({"at": float(f[b"at"]), "event_id": f[b"event_id"].decode() or None,
                        "reason": f[b"reason"].decode(), "event": f[b"event"].decode() or None})
        return out

    def rejected_counts(self) -> dict[str, int]:
        counts = {k.decode(): int(v) for k, v in self._call(self._r.hgetall, self.kinds).items()}
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def close(self) -> None:
        self._r.close()
