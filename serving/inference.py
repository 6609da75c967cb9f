"""The fast request path's compute: the ranker's inference graph chosen per machine at start-up, and the cache of
what a request computes from the user side alone.

`RankerGraph` scores model inputs with whichever of these is the fastest on this machine while answering like
the eager model within `TOLERANCE` (the largest difference in click probability that the /predict parity tests
allow): the eager `nn.Module`, a traced and frozen TorchScript graph (`torch.jit.freeze`: constants folded,
linear + activation fused by oneDNN), and the eager module under bfloat16 autocast (on CPUs with AVX512-BF16 or
AMX). Each candidate is checked on two synthetic batches of different sizes (a traced graph that depended on the
batch would differ) and timed on a batch of the serving size; the choice and the figures are logged. Measured on
the demo's DCNv2 with 200 candidates (docs/benchmarks.md, Serving): eager 1.78 ms, frozen graph 1.51 ms with a
largest difference of 3e-8, bf16 1.48 ms but 9e-4 off, so bf16 is refused at this tolerance.

`UserSide` caches, per user, what the request side of /recommend computes: the user tower's vector and the
ranker's request-side inputs. It is keyed by the content the online store returned for the user (every feature
value) and the request's context, so a cached entry is used only when the same inputs would be computed again:
an event that changes a user's features (the event stream writes the online store) changes the key, and a
`recforge materialize` that changes them too. Nothing can serve stale features, which a key of the views'
versions alone could (the stream updates rows inside a version). Bounded (least recently used first out).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from training.common.features import DENSE, SPARSE, FeatureLayout, bag_key, bag_len_key, seq_key, seq_len_key

log = logging.getLogger("recforge.serving")

TOLERANCE = 1e-6  # largest |probability difference| from the eager model (the /predict parity tests' atol)
SAMPLE_ROWS = 200  # rows of the timing batch (serving.candidates' default)
Batch = dict[str, Tensor]


def synthetic_batch(layout: FeatureLayout, n: int, seed: int) -> Batch:
    """Valid random model inputs: ids within each table's cardinality, lengths within each sequence's."""
    g = torch.Generator().manual_seed(seed)
    out: Batch = {SPARSE: torch.stack([torch.randint(0, max(f.cardinality, 1), (n,), generator=g)
                                       for f in layout.sparse], dim=1) if layout.sparse
                  else torch.zeros((n, 0), dtype=torch.int64),
                  DENSE: torch.randn((n, layout.dense_dim), generator=g)}
    cards = {f.name: f.cardinality for f in layout.tables}
    for f in layout.bags:
        out[bag_key(f.name)] = torch.randint(0, max(f.cardinality, 1), (n, f.max_len), generator=g)
        out[bag_len_key(f.name)] = torch.randint(0, f.max_len + 1, (n,), generator=g)
    for s in layout.sequences:
        out[seq_key(s.name)] = torch.randint(0, max(cards.get(s.source, 1), 1), (n, s.max_len), generator=g)
        out[seq_len_key(s.name)] = torch.randint(0, s.max_len + 1, (n,), generator=g)
    return out


def _cpu_time_ms(fn: Callable[[], Any], repeat: int) -> float:
    for _ in range(3):
        fn()
    t = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t) / repeat * 1e3


class RankerGraph:
    """Click probabilities of a ranker's model inputs through the graph chosen at start-up (see the module).

    Args:
        model: the ranker's `nn.Module` in eval mode (left unchanged).
        layout: its feature layout (for the synthetic batches).
        device: "cpu" chooses among the candidates; any other device keeps the eager module.
        repeat: timed calls per candidate.
    """

    def __init__(self, model: nn.Module, layout: FeatureLayout, device: str = "cpu", repeat: int = 20) -> None:
        self.eager = model
        self.kind = "eager"
        self.timings_ms: dict[str, float] = {}
        self.refused: dict[str, str] = {}
        self._fn: Callable[[Batch], Tensor] = model
        if device == "cpu":
            self._choose(layout, repeat)

    def _candidates(self, sample: Batch) -> dict[str, Callable[[Batch], Tensor]]:
        out: dict[str, Callable[[Batch], Tensor]] = {}
        try:
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(copy.deepcopy(self.eager).eval(), (sample,), strict=False,
                                         check_trace=False)
                out["frozen graph"] = torch.jit.freeze(traced.eval())
        except Exception as exc:  # a model TorchScript cannot trace stays eager
            self.refused["frozen graph"] = f"cannot be traced: {type(exc).__name__}: {str(exc)[:200]}"
        if torch.backends.mkldnn.is_available() and _cpu_has_bf16():
            def bf16(batch: Batch) -> Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return self.eager(batch)
            out["bf16"] = bf16
        else:
            self.refused["bf16"] = "this CPU has no AVX512-BF16 or AMX"
        return out

    def _choose(self, layout: FeatureLayout, repeat: int) -> None:
        big, small = synthetic_batch(layout, SAMPLE_ROWS, 0), synthetic_batch(layout, 7, 1)
        with torch.inference_mode():
            want = {n: torch.sigmoid(self.eager(b).float()) for n, b in (("big", big), ("small", small))}
            self.timings_ms["eager"] = _cpu_time_ms(lambda: self.eager(big), repeat)
        for name, fn in self._candidates(big).items():
            try:
                with torch.inference_mode():
                    err = max(float((torch.sigmoid(fn(b).float()) - want[n]).abs().max())
                              for n, b in (("big", big), ("small", small)))
            except Exception as exc:
                self.refused[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
                continue
            if not err <= TOLERANCE:
                self.refused[name] = f"largest difference {err:.1e} > {TOLERANCE:.0e}"
                continue
            with torch.inference_mode():
                self.timings_ms[name] = _cpu_time_ms(lambda f=fn: f(big), repeat)  # type: ignore[misc]
            if self.timings_ms[name] < self.timings_ms[self.kind]:
                self.kind, self._fn = name, fn
        log.info("ranker inference graph: %s (CPU ms per %d rows: %s%s)", self.kind, SAMPLE_ROWS,
                 ", ".join(f"{k} {v:.2f}" for k, v in self.timings_ms.items()),
                 "".join(f"; {k} refused: {v}" for k, v in self.refused.items()))

    def probabilities(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(self._fn(batch).float()).cpu().numpy()

    def status(self) -> dict[str, Any]:
        return {"graph": self.kind, "cpu_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
                "refused": dict(self.refused)}


class SplitScorer:
    """Scores many candidates of one request from the first layers' parts: per item, once, and per request, once.

    A splittable ranker (`CTRModel.splittable`, e.g. DCN-V2) starts with linear layers over one flat input x0
    whose columns each come from one feature. With the item-side columns (`item_features`) and the request-side
    ones apart, `W x0 + b = W x0_item + (W x0_request + b)`: the first part is computed when an item enters the
    cache (`items`), the second once per request (`request`, cached per user with the rest of its side), and
    scoring 200 candidates adds the two instead of multiplying 200 x0 rows by every first layer's weights; the
    rest of the network runs as in `forward`. Only the order of the sums differs from the eager model's: each
    ranker version is checked on its first request against the model's own forward (`check`, `TOLERANCE`) and
    scored this way only if it agrees. Measured on the demo's DCN-V2 with 200 candidates: 1.60 ms -> 0.92 ms of
    CPU per forward (docs/benchmarks.md, Serving).
    """

    def __init__(self, model: nn.Module, layout: FeatureLayout, item_features: list[str],
                 request_features: list[str]) -> None:
        from training.common.data import row_to_tensors, zero_row

        self.model = model
        self.layout = layout
        self.request_features = list(request_features)
        items = set(item_features)
        self.item_cols = torch.tensor([o in items for o in model.flat_input_features()])
        self.linears = model.first_linears()
        self.zero_request = row_to_tensors(zero_row(layout), layout, only=set(request_features))
        self.generation: int | None = None
        self.verified: bool | None = None  # None: not checked yet
        self.largest_difference = float("nan")
        self._x = torch.zeros((0, len(self.item_cols)))
        self._parts = [torch.zeros((0, lin.out_features)) for lin in self.linears]

    def items(self, tensors: Batch, generation: int) -> None:
        """Bring the per-item parts up to the rows of the item cache's `tensors` (its `generation` changes when
        the cache starts over)."""
        from training.common.data import add_sides

        if generation != self.generation:
            self.generation = generation
            self._x = self._x[:0]
            self._parts = [p[:0] for p in self._parts]
        done, n = len(self._x), len(tensors[SPARSE])
        if n <= done:
            return
        with torch.inference_mode():
            part = {k: v[done:n] for k, v in tensors.items()}
            full = add_sides(part, torch.arange(n - done), self.zero_request, self.layout)
            x = self.model.flat_input(full).masked_fill(~self.item_cols, 0.0)
            self._x = torch.cat([self._x, x])
            self._parts = [torch.cat([p, torch.nn.functional.linear(x, lin.weight)])
                           for p, lin in zip(self._parts, self.linears)]

    def request(self, full_row: Batch) -> tuple[Tensor, list[Tensor]]:
        """The request's x0 part and first layers' parts (bias included) from one full row of its inputs."""
        with torch.inference_mode():
            x = self.model.flat_input(full_row).masked_fill(self.item_cols, 0.0)
            return x, [lin(x) for lin in self.linears]

    def probabilities(self, slots: Tensor, request: tuple[Tensor, list[Tensor]]) -> np.ndarray:
        x_request, parts = request
        with torch.inference_mode():
            x0 = self._x.index_select(0, slots) + x_request
            first = [p.index_select(0, slots) + r for p, r in zip(self._parts, parts)]
            return torch.sigmoid(self.model.forward_from(x0, first).float()).numpy()

    def check(self, got: np.ndarray, want: np.ndarray) -> bool:
        """Record whether this version's split answers like its forward (`want`) on the first request."""
        self.largest_difference = float(np.abs(got - want).max()) if len(got) else 0.0
        self.verified = self.largest_difference <= TOLERANCE
        log.info("ranker split scoring %s: largest difference %.1e from the forward on %d candidates (tolerance "
                 "%.0e)", "on" if self.verified else "refused", self.largest_difference, len(got), TOLERANCE)
        return self.verified

    def status(self) -> dict[str, Any]:
        """What GET /models shows: on / refused / not checked yet (None), the checked difference, items held."""
        checked = self.verified is not None
        return {"split": self.verified, "split_difference": self.largest_difference if checked else None,
                "split_items": len(self._x)}


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def freeze(value: Any) -> Hashable:
    """A hashable stand-in of a feature value as the online store returns it (JSON types)."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return (type(value).__name__, value) if isinstance(value, bool | float) else value


def request_side_key(key: Any, values: Mapping[str, Any], context: Mapping[str, Any] | None) -> Hashable:
    """What the request side of a /recommend depends on: the user's id, every feature value read, the context."""
    return (freeze(key), tuple((k, freeze(v)) for k, v in values.items()), freeze(dict(context or {})))


class UserSide:
    """Least-recently-used cache: key (`request_side_key`) -> {what: value} (a user vector, a version's ranker
    inputs), plus the one transform of the user side that the models of one feature spec share.

    Args:
        size: users kept (0: nothing is kept, every request computes its user side).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, dict[Hashable, Any]] = OrderedDict()
        self._needs: dict[str, dict[str, list[str]]] = {}  # spec id -> role -> features
        self.hits = 0
        self.misses = 0
        self.transforms = 0

    def _entry(self, key: Hashable) -> dict[Hashable, Any] | None:
        if self.size <= 0:
            return None
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = {}
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry

    def get(self, key: Hashable, what: Hashable, make: Callable[[], Any]) -> Any:
        """The cached `what` of `key`, made (and kept) when absent; nothing is kept when `size` is 0."""
        entry = self._entries.get(key) if self.size > 0 else None
        if entry is not None and what in entry:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[what]
        self.misses += 1
        value = make()
        entry = self._entry(key)
        if entry is not None:
            entry[what] = value
        return value

    def transformed(self, key: Hashable, spec_id: str, role: str, features: list[str],
                    transform: Callable[[list[str]], Any]) -> Any:
        """The user side transformed through one spec for `role`'s `features`.

        Every role that asked for spec `spec_id` is remembered; the first of them to miss transforms the
        features of all (`transform(features)` -> {feature: model input}: one transform where the retriever and
        the ranker would make two), and the row waits in the entry until each of the other roles took it."""
        roles = self._needs.setdefault(spec_id, {})
        roles[role] = features
        what = ("transformed", spec_id)
        entry = self._entries.get(key) if self.size > 0 else None
        held = entry.get(what) if entry is not None else None
        if held is not None and role in held[1] and all(f in held[0] for f in features):
            table, waiting = held
            waiting.discard(role)
            if not waiting:
                del entry[what]  # type: ignore[union-attr]
            return table
        table = transform(list(dict.fromkeys(f for fs in roles.values() for f in fs)))
        self.transforms += 1
        others = set(roles) - {role}
        entry = self._entry(key) if others else None
        if entry is not None:
            entry[what] = (table, others)
        return table

    def stats(self) -> dict[str, int]:
        return {"users": len(self._entries), "hits": self.hits, "misses": self.misses,
                "transforms": self.transforms}


_SPEC_IDS: dict[int, tuple[Any, str]] = {}


def spec_id(spec: Any) -> str:
    """A feature spec's fingerprint, computed once per spec object (it hashes the vocabularies)."""
    got = _SPEC_IDS.get(id(spec))
    if got is None or got[0] is not spec:
        got = _SPEC_IDS[id(spec)] = (spec, spec.fingerprint())
    return got[1]


_SHARED: dict[int, UserSide] = {}


def shared_user_side(size: int) -> UserSide:
    """The process's user-side cache (the retriever and the ranker of a fused replica share it)."""
    cache = _SHARED.get(size)
    if cache is None:
        cache = _SHARED[size] = UserSide(size)
    return cache
