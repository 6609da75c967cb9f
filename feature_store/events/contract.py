"""The event contract: what one event is, how a batch of raw events is checked, and its columnar form.

An event says what a user did with an item. Every entry point (`POST /events`, `recforge events push`) checks a
batch with `check_events` against the scenario's `EventsConfig`: each event is accepted or rejected with its own
reason (naming the field), never the batch as a whole, and nothing is dropped without a reason. Accepted events
become one Arrow table of `EVENT_SCHEMA` (`received_at` is the receiving clock, for freshness figures), which is
what the bus carries and the offline log stores.

The field checks are pydantic's (one `TypeAdapter` call over the whole batch, about 2 us per event); what depends
on the scenario (types, id kind, lengths, clock skew, ids repeated inside the batch) is checked on the columns.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from feature_store.config import EventsConfig
from feature_store.values import INT64_MAX, INT64_MIN, Text, printable

Scalar = StrictBool | StrictInt | StrictFloat | Text | None


class Event(BaseModel):
    """One user action. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")

    event_id: Text | StrictInt = Field(description="idempotency key: an event sent twice is applied once")
    ts: StrictInt | StrictFloat | Text = Field(
        description="when it happened: Unix seconds (UTC), or ISO 8601 text with a UTC offset")
    user_id: StrictInt | Text = Field(description="the user (the scenario's user key)")
    item_id: StrictInt | Text = Field(description="the item (the scenario's item key)")
    type: Text = Field(description="one of the scenario's `events.types` (impression, click, purchase, ...)")
    value: StrictInt | StrictFloat | None = Field(None, description="revenue of a purchase (finite), else optional")
    context: dict[Text, Scalar] | None = Field(None, description="request-time columns (channel, device, ...)")
    exposure_id: Text | None = Field(None, description="the served answer this event follows, when known")

    @field_validator("ts")
    @classmethod
    def _seconds(cls, v: int | float | str) -> float:
        if isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v)
            except ValueError:
                raise ValueError("must be Unix seconds or ISO 8601 text (2026-12-05T10:00:00Z)") from None
            if parsed.tzinfo is None:
                raise ValueError("ISO 8601 text needs a UTC offset (Z or +00:00): a local time is ambiguous")
            return parsed.timestamp()
        if not 0 <= v < 2**40:  # also false for NaN; compared as given, so a huge int cannot overflow a float
            raise ValueError("must be finite Unix seconds after 1970")
        return float(v)

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not -1e300 < v < 1e300:  # also false for NaN and infinities; no int-to-float overflow
            raise ValueError("must be a finite number")
        return v

    @field_validator("context")
    @classmethod
    def _finite_context(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, x in (v or {}).items():
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"'{key[:64]}' must be a finite number")
        return v


EVENTS = TypeAdapter(list[Annotated[Event, Field()]])


def event_schema(id_type: str) -> pa.Schema:
    key = pa.int64() if id_type == "int" else pa.string()
    return pa.schema([("event_id", pa.string()), ("ts", pa.int64()), ("ts_ms", pa.int64()), ("user_id", key),
                      ("item_id", key), ("type", pa.string()), ("value", pa.float64()), ("context", pa.string()),
                      ("exposure_id", pa.string()), ("received_at", pa.float64())])


@dataclass(frozen=True)
class Unreadable:
    """An input that could not even be parsed as an event (a line that is not JSON): rejected with `reason`."""

    reason: str
    text: str = ""


@dataclass(frozen=True)
class Rejected:
    """One event that was not accepted: its position in the batch, its id when readable, and why."""

    index: int
    event_id: str | None
    reason: str
    event: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "event_id": self.event_id, "reason": self.reason}


@dataclass
class Checked:
    """A checked batch: the accepted events as one table, and every rejected one with its reason."""

    accepted: pa.Table
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.accepted.num_rows + len(self.rejected)


EXPECTED = {"event_id": "must be a string or an integer", "ts": "must be Unix seconds or ISO 8601 text",
            "user_id": "must be an integer or a string", "item_id": "must be an integer or a string",
            "type": "must be a string", "value": "must be a number or null", "exposure_id": "must be a string or null",
            "context": "must be an object of strings, numbers, booleans or nulls"}


def _describe(err: dict[str, Any]) -> tuple[int, str]:
    """(event index, reason naming the field) of one pydantic error; index -1: the batch itself."""
    loc = list(err.get("loc", ()))
    index = int(loc[0]) if loc and isinstance(loc[0], int) else -1
    name = str(loc[1]) if len(loc) > 1 else ""
    kind = str(err.get("type", ""))
    if not name and kind in ("model_type", "model_attributes_type", "dict_type"):
        return index, "an event must be a JSON object"
    if kind == "missing":
        return index, f"{name}: required"
    if kind == "extra_forbidden":
        return index, f"{name}: unknown field (the fields are {', '.join(Event.model_fields)})"
    if name == "context" and len(loc) > 2 and kind.endswith(("_type", "_parsing")):
        return index, f"context.{str(loc[2])[:64]}: must be a string, number, boolean or null"
    if kind.endswith(("_type", "_parsing")) and name in EXPECTED:
        return index, f"{name}: {EXPECTED[name]}"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    return index, f"{name}: {msg}" if name else msg


def _raw_id(raw: Any) -> str | None:
    if isinstance(raw, dict):
        v = raw.get("event_id")
        if isinstance(v, str | int) and not isinstance(v, bool):
            return printable(str(v)[:256])
    return None


def _field_errors(raws: Sequence[Any]) -> dict[int, str]:
    """Index -> the first problem pydantic finds in that event (an index of -1 means the batch is not a list)."""
    try:
        EVENTS.validate_python(list(raws))
        return {}
    except ValidationError as exc:
        out: dict[int, str] = {}
        for err in exc.errors(include_url=False, include_input=False):
            index, reason = _describe(err)
            out.setdefault(index, reason)
        return out


def check_events(raws: Sequence[Any], cfg: EventsConfig, *, now: float | None = None) -> Checked:
    """Check a batch of raw events (dicts as parsed from JSON or read from a file) against the contract."""
    now = time.time() if now is None else now
    unreadable = {i: r.reason for i, r in enumerate(raws) if isinstance(r, Unreadable)}
    errors = {**_field_errors([{} if isinstance(r, Unreadable) else r for r in raws]), **unreadable}
    valid_idx = [i for i in range(len(raws)) if i not in errors]
    events: list[Event] = EVENTS.validate_python([raws[i] for i in valid_idx]) if valid_idx else []
    reasons: dict[int, str] = dict(errors)
    rows: dict[str, list[Any]] = {k: [] for k in ("event_id", "ts", "user_id", "item_id", "type", "value",
                                                   "context", "exposure_id")}
    types = set(cfg.types)
    for i, e in zip(valid_idx, events):
        reason = _scenario_problem(e, cfg, types, now)
        if reason:
            reasons[i] = reason
            continue
        rows["event_id"].append(str(e.event_id))
        rows["ts"].append(e.ts)
        rows["user_id"].append(e.user_id)
        rows["item_id"].append(e.item_id)
        rows["type"].append(e.type)
        rows["value"].append(None if e.value is None else float(e.value))
        rows["context"].append(None if not e.context else json.dumps(e.context, separators=(",", ":"),
                                                                      sort_keys=True))
        rows["exposure_id"].append(e.exposure_id)
    kept = [i for i in valid_idx if i not in reasons]
    table = _to_table(rows, cfg.id_type, now)
    table, dup_positions = _drop_repeats(table)
    for pos in dup_positions:
        reasons[kept[pos]] = "event_id: repeated in this batch (the first one is kept)"
    rejected = [Rejected(i, _raw_id(raws[i]) if i >= 0 else None, printable(reasons[i]),
                         (raws[i].text if isinstance(raws[i], Unreadable) else raws[i]) if i >= 0 else None)
                for i in sorted(reasons)]
    return Checked(table, rejected)


def _scenario_problem(e: Event, cfg: EventsConfig, types: set[str], now: float) -> str | None:
    if e.type not in types:
        return f"type: '{e.type[:64]}' is not one of this scenario's events.types {cfg.types}"
    for name in ("event_id", "exposure_id"):
        v = getattr(e, name)
        if v is not None and (len(str(v)) == 0 or len(str(v)) > cfg.max_id_length):
            return f"{name}: must be 1 to {cfg.max_id_length} characters"
    for name in ("user_id", "item_id"):
        v = getattr(e, name)
        if cfg.id_type == "int":
            if isinstance(v, str):
                text = v.strip()
                if not text.lstrip("+-").isdigit():
                    return f"{name}: must be an integer in this scenario (events.id_type int)"
                v = int(text)
                setattr(e, name, v)
            if not INT64_MIN <= v <= INT64_MAX:
                return f"{name}: must fit in a 64-bit signed integer"
        else:
            if not isinstance(v, str):
                setattr(e, name, str(v))
            elif not 0 < len(v) <= cfg.max_id_length:
                return f"{name}: must be 1 to {cfg.max_id_length} characters"
    if isinstance(e.ts, float) and e.ts > now + cfg.max_clock_skew_s:
        return (f"ts: {e.ts:.0f} is {e.ts - now:.0f} s in the future of the receiving clock (more than "
                f"events.max_clock_skew_s {cfg.max_clock_skew_s:g})")
    if e.context:
        if len(e.context) > cfg.max_context_fields:
            return f"context: {len(e.context)} keys, more than events.max_context_fields {cfg.max_context_fields}"
        for k, v in e.context.items():
            if len(k) > cfg.max_id_length or (isinstance(v, str) and len(v) > cfg.max_value_length):
                return f"context.{k[:64]}: longer than events.max_value_length {cfg.max_value_length}"
            if isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
                return f"context.{k[:64]}: must fit in a 64-bit signed integer"
    return None


def _to_table(rows: dict[str, list[Any]], id_type: str, now: float) -> pa.Table:
    schema = event_schema(id_type)
    seconds = np.asarray(rows["ts"], dtype=np.float64)
    cols = {
        "event_id": pa.array(rows["event_id"], pa.string()),
        "ts": pa.array(np.floor(seconds).astype(np.int64)),
        "ts_ms": pa.array(np.floor(seconds * 1000).astype(np.int64)),
        "user_id": pa.array(rows["user_id"], schema.field("user_id").type),
        "item_id": pa.array(rows["item_id"], schema.field("item_id").type),
        "type": pa.array(rows["type"], pa.string()),
        "value": pa.array(rows["value"], pa.float64()),
        "context": pa.array(rows["context"], pa.string()),
        "exposure_id": pa.array(rows["exposure_id"], pa.string()),
        "received_at": pa.array(np.full(len(seconds), now, np.float64)),
    }
    return pa.table(cols, schema=schema)


def first_occurrence(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where an id appears for the first time in `ids` (in order)."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    pos = pc.index_in(arr, value_set=pc.unique(arr)).to_numpy(zero_copy_only=False)
    _, first = np.unique(pos, return_index=True)
    out = np.zeros(len(arr), dtype=bool)
    out[first] = True
    return out


def _drop_repeats(table: pa.Table) -> tuple[pa.Table, list[int]]:
    """The table without rows whose event_id appeared earlier in it, and the positions dropped."""
    if table.num_rows < 2:
        return table, []
    keep = first_occurrence(table.column("event_id"))
    dropped = np.flatnonzero(~keep).tolist()
    return (table.filter(pa.array(keep)), dropped) if dropped else (table, [])


def concat(tables: Sequence[pa.Table], id_type: str) -> pa.Table:
    """One table of `EVENT_SCHEMA` from several (an empty one for none)."""
    schema = event_schema(id_type)
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
