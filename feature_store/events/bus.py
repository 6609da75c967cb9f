"""The event bus contract: a durable, ordered log of event batches read by consumer groups.

Semantics both buses follow (Redis Streams' consumer groups; `tests/feature_store/test_event_bus.py` runs the same
suite against both):
- `publish` appends one entry (a batch of checked events as Arrow IPC bytes) and returns its id once it is
  durable: the caller may then answer "accepted".
- A group reads every entry once (`read`, from its last delivered entry on); a read entry is *pending* for the
  consumer that read it until `ack`. A consumer that restarts first re-reads its own pending entries
  (`pending`); entries pending longer than `min_idle_s` with a consumer that died are taken over with `reclaim`.
- `trim` drops the entries every group has acknowledged; `lag` says how far a group is behind.
- Rejected events (the dead-letter log) are kept with their reason: `reject`, `rejected`, `rejected_counts`.

Entry ids are text that sorts in log order within one bus (SQLite: the row id; Redis: the stream id).
"""

from __future__ import annotations

import io
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

MAX_REJECTED_EVENT_CHARS = 4096  # a rejected event is kept up to this much of its JSON text


@dataclass(frozen=True)
class Entry:
    """One bus entry: its id and the batch of events it carries."""

    id: str
    events: pa.Table


def encode(events: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, events.schema) as writer:
        writer.write_table(events)
    return sink.getvalue()


def decode(payload: bytes) -> pa.Table:
    return ipc.open_stream(pa.py_buffer(payload)).read_all()


_NUMBERS = re.compile(r"\b\d+(\.\d+)?\b")
_QUOTED = re.compile(r"'[^']*'")


def reason_kind(reason: str) -> str:
    """A rejection reason with its particulars (numbers, quoted values) taken out: what `rejected_counts` groups
    by, e.g. "ts: N is N s in the future of the receiving clock (more than events.max_clock_skew_s N)"."""
    return _QUOTED.sub("'…'", _NUMBERS.sub("N", reason))[:300]


def rejected_text(event: Any) -> str | None:
    if event is None:
        return None
    try:
        text = json.dumps(event, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(event)
    return text[:MAX_REJECTED_EVENT_CHARS]


class EventBus(ABC):
    """A durable log of event batches with consumer groups (see the module docstring)."""

    name: str = "bus"

    def identity(self) -> str:
        """What tells this bus's entry ids from another's with the same ids ("" where entry ids are unique across
        buses already, e.g. Redis streams' time-based ids). The stream processor marks committed entries by it."""
        return ""

    @abstractmethod
    def publish(self, events: pa.Table) -> str:
        """Append one batch; returns its entry id once it is durable."""

    @abstractmethod
    def ensure_group(self, group: str) -> None:
        """Create `group` reading from the first entry, if it does not exist."""

    @abstractmethod
    def read(self, group: str, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` entries the group has not delivered yet, now pending for `consumer`; waits up to
        `block_ms` for the first one."""

    @abstractmethod
    def pending(self, group: str, consumer: str, *, count: int) -> list[Entry]:
        """Up to `count` entries pending for `consumer` (read, not acknowledged), oldest first."""

    @abstractmethod
    def reclaim(self, group: str, consumer: str, *, min_idle_s: float, count: int) -> list[Entry]:
        """Entries pending for any consumer for at least `min_idle_s`, now pending for `consumer`."""

    @abstractmethod
    def ack(self, group: str, ids: Sequence[str]) -> None:
        """Acknowledge entries: the group is done with them."""

    @abstractmethod
    def lag(self, group: str) -> dict[str, int]:
        """{"pending": entries read and not acknowledged, "unread": entries not delivered yet}."""

    @abstractmethod
    def trim(self) -> int:
        """Drop the entries every group has acknowledged; returns how many went."""

    @abstractmethod
    def reject(self, rejected: Sequence[tuple[str | None, str, Any]]) -> None:
        """Keep (event_id, reason, event) of rejected events in the dead-letter log."""

    @abstractmethod
    def rejected(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest `limit` rejected events, newest first: {at, event_id, reason, event}."""

    @abstractmethod
    def rejected_counts(self) -> dict[str, int]:
        """Rejected events per reason kind (`reason_kind`)."""

    def close(self) -> None:  # noqa: B027 - optional for a backend
        """Release connections."""

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
