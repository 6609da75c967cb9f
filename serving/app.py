"""The recommendation HTTP API (FastAPI behind Ray Serve) and the application graph `build_app(settings)` deploys.

Work per /recommend: `RetrieverModel.candidates` (the user's online features -> user tower -> index top-N, history
excluded) -> `RankerModel.rank` (the candidates' online features -> CTR model, `@serve.batch`) -> top-k; /predict
goes to the ranker only. Two request paths (`serving.request_path`, same answers): fast (the default) reads the
user's views in one transaction, caches the user side (the tower's vector, the ranker's request-side inputs) keyed
by every feature value read and the context, transforms a user row once for both models, gathers the ranker's
inputs from cached item tensors and scores them with the inference graph chosen at load (serving.inference);
baseline is the path before that, kept to measure both (docs/benchmarks.md, Serving). Two topologies
(`serving.topology`):
- fused (default): every `Ingress` replica holds a retriever and a ranker in its own process and calls them
  directly (`InProcess`), so a request costs one hop (proxy -> replica). On one machine this is the fastest: a
  Serve call between replicas costs milliseconds of CPU on both sides (docs/benchmarks.md, Serving).
- split: HTTP -> `Ingress` -> `RetrieverModel` and `RankerModel` deployments of their own (two Serve calls per
  /recommend, one per /predict), to scale or place the stages apart (e.g. rankers on GPU nodes).
The online store is read inside the model classes in both (see serving.deployments).

Endpoints (OpenAPI docs at /docs):
- POST /recommend {user_id, k, context?, exclude_seen?}: the top-k items with scores. Users the online store does
  not know get the most popular items (ranked the same way) and `fallback: "popular"`.
- POST /predict {user_id, item_ids, context?}: click probability per item; ids the online store does not know are
  reported per item (`status: "unknown_item"`, `score: null`), never a failure of the request.
- POST /events {events: [...]}: user events checked one by one against the contract (feature_store.events);
  the accepted ones go to the scenario's event bus, the rejected ones are answered and kept with their reasons.
  The check runs in a worker thread, so an ingesting replica keeps answering /recommend (docs/benchmarks.md).
- GET /healthz (503 until every model has a version loaded), GET /models (versions, since when, last error),
  POST /admin/reload (checks the aliases now; needs the `X-Admin-Token` header; disabled without
  `serving.admin_token`).
- GET /console and its pages: the read-only marketers' console (serving.console; off without
  `serving.console_token`, and outside the OpenAPI schema).
Bad bodies get 422 naming the field (`k` above `serving.max_k`, empty or too long `item_ids`, wrong types,
unknown context fields, and whatever the models cannot take: integers outside int64, invalid Unicode, NaN and
infinities, oversized ids or context); a body above `serving.limits.max_body_bytes` gets 413. Error bodies never
echo the input back (a lone surrogate could not even be written as JSON). Scores sent are always finite.
Every answer says which model versions produced it and how long each stage took (`timings_ms` and a
`Server-Timing` header: features = online-store reads, retrieval, ranking, calls = the rest of the time inside
Serve calls (routing, queueing, batching), total = the ingress's wall time).

Reliability: split: a model call that fails because its replica died (Ray Serve does not retry a request already
sent to a replica) is retried by the ingress up to `RETRIES` times; Serve routes the retry to a live or restarted
replica. Model calls are read-only, so a retry is safe. An ingress replica that dies (in the fused topology, the
model process) loses the requests it was answering; the proxy sends every later one to a live replica.
"""

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)
from ray import serve
from ray.exceptions import RayActorError

from feature_store import pseudonymise
from feature_store.config import FeatureStoreConfig
from feature_store.events.bus import EventBus
from feature_store.events.ingest import IngestReport, ingest
from feature_store.events.scenario import open_bus
from feature_store.secrets import scrub
from feature_store.values import Int64, Number, printable, text
from serving.config import AppSettings
from serving.console import ConsoleSettings, console_settings, mount_console
from serving.deployments import (
    Candidates,
    ModelSource,
    RankerBatching,
    RankerModel,
    ReplicaSettings,
    RetrieverModel,
    Scored,
    StoreSettings,
    loopback_replica_grpc,
)
from serving.experiments.live import ExperimentRouter, ExperimentSource, ExposureLog, Route, exposure_events
from serving.experiments.store import ExperimentState, ExperimentStateError, ExperimentStore, experiment_store_path

APP_NAME = "recforge"
RETRIES = 3
RETRY_BACKOFF_S = (0.05, 0.25, 1.0)
BUS_RETRY_S = 5.0  # how long POST /events waits for an unreachable bus before its 503 (clients time out later)

@dataclass(frozen=True)
class ApiSettings:
    """What the ingress needs from the config: limits, keys, which history columns hold seen items."""

    max_k: int
    max_items: int
    max_id_length: int
    max_context_fields: int
    max_context_value_length: int
    max_body_bytes: int
    candidates: int
    admin_token: str | None
    user_key: str
    item_key: str
    seen_columns: tuple[str, ...]
    has_retriever: bool
    events_token: str | None
    feature_store: FeatureStoreConfig
    read_token: str | None = None  # None: the read endpoints are open
    experiments: ExperimentSource | None = None  # None: experiments are off (no `experiments.definitions`)
    exposure_type: str = "impression"
    max_pending_exposures: int = 200_000
    console: ConsoleSettings | None = None  # None: the console is off (no `serving.console_token`)
    request_path: str = "fast"  # serving.request_path (fast: answers encoded by orjson)


# ------------------------------------------------------------------------------------------------ API models
class ModelVersion(BaseModel):
    name: str
    version: str
    alias: str


class RecommendedItem(BaseModel):
    item_id: Any
    score: float = Field(description="click probability from the ranker")
    retrieval_score: float | None = Field(description="two-tower similarity (null for the popularity fallback)")


class ExperimentArm(BaseModel):
    name: str = Field(description="the experiment")
    arm: str | None = Field(description="the arm that answered; null when the arm's model was not loaded and the "
                                        "champion answered instead")


class RecommendResponse(BaseModel):
    user_id: Any
    exposure_id: str = Field(description="this answer's id: send it as an event's `exposure_id` to tie what the "
                                         "user did to what was shown")
    experiment: ExperimentArm | None = Field(None, description="the experiment and arm of this user (null: none)")
    items: list[RecommendedItem]
    fallback: str | None = Field(description='"popular" when the user is unknown to the online store')
    models: dict[str, ModelVersion]
    timings_ms: dict[str, float]


class Prediction(BaseModel):
    item_id: Any
    score: float | None
    status: str = Field(description='"ok", "unknown_item" (no score) or "invalid_score" (the model gave a '
                                    'non-finite score: no score)')


class PredictResponse(BaseModel):
    user_id: Any
    user_status: str = Field(description='"known" or "unknown" (scored with out-of-vocabulary user features)')
    predictions: list[Prediction]
    models: dict[str, ModelVersion]
    timings_ms: dict[str, float]


class RejectedEvent(BaseModel):
    index: int = Field(description="position of the event in the request's `events`")
    event_id: str | None = Field(description="its event_id, when it had a readable one")
    reason: str = Field(description="the field and what is wrong with it")


class EventsResponse(BaseModel):
    received: int
    accepted: int = Field(description="events published to the bus (the stream processor applies them)")
    rejected: list[RejectedEvent] = Field(description="every event not accepted, with its reason (also kept in "
                                                      "the dead-letter log: `recforge events rejected`)")


class EventsRequest(BaseModel):
    """A batch of events. Each event is checked on its own against the contract (docs/cli.md#events): a bad one is
    rejected with its reason and the others are accepted, so the items are not validated as a whole here."""

    model_config = ConfigDict(extra="forbid")
    events: list[Any] = Field(description="events: {event_id, ts, user_id, item_id, type, value?, context?, "
                                          "exposure_id?}; at most `events.max_batch_events` (413 above)")


def request_models(s: ApiSettings) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request bodies, with this deployment's limits (k <= max_k, 1..max_items item ids, ids within int64 or
    at most max_id_length characters, a bounded context). Whatever the models cannot take is refused here with a
    422 naming the field: integers outside int64, invalid Unicode, NaN and infinities (which would make NaN scores
    that JSON cannot carry)."""
    Id = Int64 | text(s.max_id_length)
    n = s.max_context_value_length
    Scalar = text(n) | Number | StrictBool
    ContextValue = Scalar | Annotated[list[text(n) | Number], Field(max_length=n)] | None
    Context = Annotated[dict[text(128), ContextValue], Field(max_length=s.max_context_fields)]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: Id
        k: StrictInt = Field(10, ge=1, le=s.max_k, description=f"items to return (at most {s.max_k})")
        context: Context | None = Field(
            None, description="request-time raw columns (e.g. channel, device, hour); override stored values")
        exclude_seen: StrictBool = Field(True, description="leave out items in the user's behaviour history")

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: Id
        item_ids: list[Id] = Field(min_length=1, max_length=s.max_items,  # type: ignore[valid-type]
                                   description=f"1 to {s.max_items} item ids")
        context: Context | None = None

    return RecommendRequest, PredictRequest


def install_error_handlers(api: FastAPI, max_body_bytes: int) -> None:
    """Errors in one shape, none of which can fail to render (a 500 instead of the 4xx):
    - 422: FastAPI's validation errors without the offending `input` (a lone surrogate in it cannot be written as
      JSON; a 1 MB string need not be sent back) and without pydantic's union-branch names in `loc` (`user_id`,
      not `user_id.constrained-int`);
    - 413: a body above `serving.limits.max_body_bytes` (FastAPI's own limit, which also counts chunked bodies),
      naming the setting as the edge's 413 does."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from feature_store.edge import too_large_body

    async def validation(_: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": [p if isinstance(p, int) else printable(str(p))
                                                 for p in e.get("loc", ()) if _field_part(p)],
                                         "msg": printable(str(e.get("msg", ""))), "type": e.get("type", "")}
                                        for e in exc.errors()]}, status_code=422)

    async def http_error(_: Any, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return JSONResponse(json.loads(too_large_body(max_body_bytes)), status_code=413)
        return JSONResponse({"detail": printable(str(exc.detail))}, status_code=exc.status_code,
                            headers=exc.headers)

    api.add_exception_handler(RequestValidationError, validation)  # type: ignore[arg-type]
    api.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]


def _field_part(part: Any) -> bool:
    """Whether a `loc` element names a field or a position (not a union branch such as `constrained-int` or
    `function-after[...]`, nor a type tag such as `str`)."""
    if isinstance(part, int):
        return True
    p = str(part)
    return not (p.startswith(("constrained-", "function-")) or "[" in p or p in ("int", "str", "float", "bool",
                                                                                    "list", "dict"))


def same_token(given: str | None, want: str) -> bool:
    """Whether a request's token is the configured one, in constant time (no timing tells how much matched)."""
    return given is not None and hmac.compare_digest(given.encode("utf-8"), want.encode("utf-8"))


def field_error(status: int, loc: list[Any], msg: str) -> JSONResponse:
    """An error in FastAPI's validation shape: {"detail": [{"loc": [...], "msg": ..., "type": ...}]}."""
    return JSONResponse({"detail": [{"loc": loc, "msg": msg, "type": "value_error"}]}, status_code=status)


def _unavailable(msg: str) -> JSONResponse:
    return JSONResponse({"detail": msg}, status_code=503)


def _answer(body: dict[str, Any], timings: dict[str, float], fast: bool = False) -> Response:
    """The 200 answer, serialised here (its shape is the route's response_model, which documents it; returning a
    Response skips FastAPI's re-validation of what this module built) with a `Server-Timing` header. `fast`
    (serving.request_path): encoded by orjson (a /recommend body in 8 us instead of the standard library's 40;
    the same JSON for these bodies, whose floats are finite), else by JSONResponse."""
    headers = {"Server-Timing": ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())}
    if fast:
        try:
            return Response(orjson.dumps(body), media_type="application/json", headers=headers)
        except (TypeError, orjson.JSONEncodeError):  # e.g. an integer id beyond 64 bits: the standard encoder
            pass
    return JSONResponse(body, headers=headers)


class _Clock:
    """Wall time per stage of one request, in ms."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}

    async def time(self, stage: str, call: Awaitable[Any]) -> Any:
        t = time.perf_counter()
        out = await call
        self.stages[stage] = self.stages.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
        return out

    def done(self, inside: dict[str, float]) -> dict[str, float]:
        """`inside`: the replicas' own stage times; `calls` is the rest of the time spent in Serve calls
        (routing, queueing, batching, transfer), `total` the ingress's wall time for the request."""
        calls = sum(self.stages.values()) - sum(inside.values())
        return {**{k: round(v, 3) for k, v in inside.items()}, "calls": round(max(calls, 0.0), 3),
                "total": round((time.perf_counter() - self.t0) * 1e3, 3)}


# ------------------------------------------------------------------------------------------------ ingress
Answered = tuple[Candidates, Scored] | JSONResponse  # the two stages' results, or the error response
@dataclass(frozen=True)
class InProcess:
    """Fused topology: build this model deployment's class inside the ingress replica (`build`) and call it there
    through the same `handle.method.remote(*args)` interface a DeploymentHandle offers."""

    deployment: Any  # RankerModel or RetrieverModel (a serve.Deployment)
    args: tuple[Any, ...]

    def build(self) -> Any:
        model = self.deployment.func_or_class(*self.args)

        class Local:
            instance = model  # the model object itself (the ingress checks its loaded versions)

            def __getattr__(self, method: str) -> SimpleNamespace:
                return SimpleNamespace(remote=getattr(model, method))  # async methods: .remote() is awaitable

        return Local()


@serve.ingress()
class Ingress:
    """The HTTP entry point: validates requests, calls the model deployments, shapes the answers."""

    def __init__(self, ranker: Any, retriever: Any | None, settings: ApiSettings) -> None:
        loopback_replica_grpc()
        self.ranker = ranker.build() if isinstance(ranker, InProcess) else ranker
        self.retriever = retriever.build() if isinstance(retriever, InProcess) else retriever
        self.s = settings
        self.retries = 0  # model calls retried after a replica died
        self._bus: EventBus | None = None  # opened by the first POST /events
        self._bus_lock = threading.Lock()
        self.router: ExperimentRouter | None = None
        self.exposures: ExposureLog | None = None
        if settings.experiments is not None:
            self.router = ExperimentRouter(settings.experiments, ready=self._arms_loaded)
            self.exposures = ExposureLog(self._publish_exposures, settings.max_pending_exposures)
        self._exposure_bus: EventBus | None = None  # the exposure thread's own connection
        # pseudonymisation: the request's user id is looked up, routed and logged by its pseudonym (the key is
        # checked by `recforge serve` before deploying; here it is read again in this replica's process)
        self.pseudonyms = pseudonymise.load(settings.feature_store.pseudonymisation)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    async def call(self, handle: Any, method: str, *args: Any) -> Any:
        """`handle.method.remote(*args)`, retried when the replica died mid-request (see module docstring)."""
        for attempt in range(RETRIES + 1):
            try:
                return await getattr(handle, method).remote(*args)
            except RayActorError:
                if attempt == RETRIES:
                    raise
                self.retries += 1
                await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
        raise AssertionError("unreachable")

    def _context_error(self, context: dict[str, Any] | None) -> JSONResponse | None:
        for key in (self.s.user_key, self.s.item_key):
            if context and key in context:
                return field_error(422, ["body", "context", key],
                                   f"'{key}' is a key, not context: pass it as the request's "
                                   f"{'user_id' if key == self.s.user_key else 'item_ids'}")
        return None

    @staticmethod
    def _failed(result: Scored | Candidates) -> JSONResponse:
        if result.error_field:
            return field_error(422, ["body", *result.error_field.split(".")], str(result.error))
        return _unavailable(str(result.error))

    async def recommend(self, user_id: Any, k: int, context: dict[str, Any] | None, exclude_seen: bool) -> Any:
        bad = self._context_error(context)
        if bad is not None:
            return bad
        if self.retriever is None:
            return _unavailable("this scenario has no retriever (no `retrieval:` features); use /predict")
        clock = _Clock()
        sent_id, user_id = user_id, self._user(user_id)
        route = self.router.route(user_id) if self.router is not None else None
        answered = await self._recommend(clock, route, user_id, k, context, exclude_seen)
        if isinstance(answered, JSONResponse) and route is not None:  # the arm could not answer: the champion does
            answered = await self._recommend(clock, None, user_id, k, context, exclude_seen)
            route = dataclasses.replace(route, arm=None)
        if isinstance(answered, JSONResponse):
            return answered
        cands, scored = answered
        raw = np.asarray(scored.scores, dtype=np.float64)  # None (unknown) -> nan
        known = np.asarray(scored.known, dtype=bool) & np.isfinite(raw)  # a non-finite score is no score
        probs = np.where(known, raw, -np.inf)
        if route is not None and route.arm is not None and route.policy == "popular":  # popularity order
            top = np.flatnonzero(known)[:k]
        else:
            top = np.argsort(-probs, kind="stable")[: min(k, int(known.sum()))]  # candidates the store lacks: last
        ids = np.empty(len(cands.ids), dtype=object)
        ids[:] = cands.ids
        retrieval = np.empty(len(cands.scores), dtype=object)
        retrieval[:] = cands.scores
        timings = clock.done({"features": cands.ms["features"] + scored.ms["features"],
                              "retrieval": cands.ms["retrieval"], "ranking": scored.ms["ranking"]})
        exposure_id = uuid.uuid4().hex
        shown = ids[top].tolist()
        if route is not None and self.exposures is not None:
            versions = {"retriever": cands.model.version, "ranker": scored.model.version}
            self.exposures.put(exposure_events(exposure_id, user_id, shown, route, versions, self.s.exposure_type,
                                               time.time(), self.s.feature_store.events.max_value_length))
        return _answer({
            "user_id": sent_id,
            "exposure_id": exposure_id,
            "experiment": {"name": route.experiment, "arm": route.arm} if route is not None else None,
            "items": [{"item_id": i, "score": p, "retrieval_score": r if r is None or np.isfinite(r) else None}
                      for i, p, r in zip(shown, probs[top].tolist(), retrieval[top].tolist())],
            "fallback": cands.fallback,
            "models": {"retriever": cands.model.to_json(), "ranker": scored.model.to_json()},
            "timings_ms": timings,
        }, timings, self.s.request_path == "fast")

    async def _recommend(self, clock: _Clock, route: Route | None, user_id: Any, k: int,
                         context: dict[str, Any] | None, exclude_seen: bool) -> Answered:
        """Retrieval then ranking with the route's versions (None: the champion's); an error as its response."""
        retriever_version = route.retriever if route is not None else None
        ranker_version = route.ranker if route is not None else None
        popular = route is not None and route.policy == "popular"
        cands: Candidates = await clock.time(
            "retriever_call", self.call(self.retriever, "candidates", user_id, context,
                                        max(self.s.candidates, k), exclude_seen, retriever_version, popular))
        if cands.error is not None:
            return self._failed(cands)
        scored: Scored = await clock.time("ranker_call", self.call(self.ranker, "rank", cands.user, cands.ids,
                                                                   context, ranker_version))
        if scored.error is not None:
            return self._failed(scored)
        return cands, scored

    def _user(self, user_id: Any) -> Any:
        """The id the stores know the user by: its pseudonym when pseudonymisation is on, else as sent."""
        return user_id if self.pseudonyms is None else self.pseudonyms.value(user_id)

    def _arms_loaded(self, state: ExperimentState) -> bool:
        """Fused topology: whether the in-process models have every arm's versions loaded. Split: the model
        replicas are elsewhere; an arm they cannot serve yet is answered by the champion (logged without arm)."""
        models = {"ranker": getattr(self.ranker, "instance", None), "retriever": getattr(self.retriever, "instance",
                                                                                        None)}
        for role, model in models.items():
            pinned = getattr(model, "versions", None)
            if pinned is not None and not all(pinned.has(getattr(a, role)) for a in state.arms):
                return False
        return True

    def _publish_exposures(self, events: list[dict[str, Any]]) -> int:
        """The exposure thread's publish: one bus entry per batch; the number of events the contract rejected."""
        if self._exposure_bus is None:
            self._exposure_bus = open_bus(self.s.feature_store, retry_s=BUS_RETRY_S)
        try:
            return len(ingest(events, self.s.feature_store, self._exposure_bus, pseudonymised=True).rejected)
        except Exception:
            bus, self._exposure_bus = self._exposure_bus, None
            with contextlib.suppress(Exception):
                bus.close()
            raise

    async def predict(self, user_id: Any, item_ids: list[Any], context: dict[str, Any] | None) -> Any:
        bad = self._context_error(context)
        if bad is not None:
            return bad
        clock = _Clock()
        scored: Scored = await clock.time("ranker_call", self.call(self.ranker, "predict", self._user(user_id),
                                                                   item_ids, context))
        if scored.error is not None:
            return self._failed(scored)
        known = np.asarray(scored.known, dtype=bool)
        raw = np.asarray(scored.scores, dtype=np.float64)  # None (unknown) -> nan
        finite = np.isfinite(raw)
        status = np.where(~known, "unknown_item", np.where(finite, "ok", "invalid_score"))
        scores = np.empty(len(raw), dtype=object)
        scores[:] = None
        scores[known & finite] = raw[known & finite]
        timings = clock.done({"features": scored.ms["features"], "ranking": scored.ms["ranking"]})
        return _answer({
            "user_id": user_id,
            "user_status": "known" if scored.user_known else "unknown",
            "predictions": [{"item_id": i, "score": p, "status": st}
                            for i, p, st in zip(item_ids, scores.tolist(), status.tolist())],
            "models": {"ranker": scored.model.to_json()},
            "timings_ms": timings,
        }, timings, self.s.request_path == "fast")

    async def events(self, raws: list[Any], token: str | None) -> JSONResponse:
        """Check a batch, publish the accepted events to the bus as one entry, keep the rejected ones (see
        feature_store.events.ingest). A bus that cannot be reached is a 503 and nothing of the batch is accepted;
        sending it again is safe (an event_id is applied once)."""
        want = self.s.events_token
        if want is None:
            return JSONResponse({"detail": "event ingestion over HTTP is off: set serving.events_token (clients send "
                                           "it as X-Events-Token); `recforge events push` works without it"},
                                status_code=403)
        if not same_token(token, want):
            return JSONResponse({"detail": "missing or wrong X-Events-Token header"}, status_code=401)
        limit = self.s.feature_store.events.max_batch_events
        if len(raws) > limit:
            return JSONResponse({"detail": f"{len(raws)} events in one request; events.max_batch_events is {limit}: "
                                           f"send them in batches of at most {limit}"}, status_code=413)
        try:
            report = await asyncio.to_thread(self._ingest, raws)
        except (OSError, sqlite3.Error) as exc:  # OSError includes the Redis bus's ConnectionError
            with self._bus_lock:
                bus, self._bus = self._bus, None
            if bus is not None:  # the next request opens a fresh one
                with contextlib.suppress(Exception):
                    bus.close()
            return _unavailable(f"event bus unavailable ({scrub(str(exc))}); nothing of this request was accepted: "
                                "send it again (each event_id is applied once)")
        return JSONResponse({"received": report.received, "accepted": report.accepted, "rejected": report.rejected})

    def _ingest(self, raws: list[Any]) -> IngestReport:
        with self._bus_lock:
            if self._bus is None:
                self._bus = open_bus(self.s.feature_store, retry_s=BUS_RETRY_S)
            bus = self._bus
        return ingest(raws, self.s.feature_store, bus)

    def _model_handles(self) -> dict[str, Any]:
        return {"ranker": self.ranker, **({"retriever": self.retriever} if self.retriever is not None else {})}

    async def models(self) -> dict[str, Any]:
        handles = self._model_handles()
        got = dict(zip(handles, await asyncio.gather(*(self.call(h, "status") for h in handles.values()))))
        store = got["ranker"].pop("online_store")
        return {**got, "online_store": store, "ingress": {"retries": self.retries, "replica_pid": os.getpid()}}

    async def experiments(self) -> dict[str, Any]:
        """The running experiments as this replica sees them, and its exposure log's counters."""
        if self.router is None or self.exposures is None:
            return {"enabled": False, "running": []}
        return {"enabled": True, **self.router.status(), "exposures": self.exposures.status(),
                "replica_pid": os.getpid()}

    async def healthz(self) -> JSONResponse:
        handles = self._model_handles()
        got = dict(zip(handles, await asyncio.gather(*(self.call(h, "status") for h in handles.values()))))
        missing = {role: s["last_error"] for role, s in got.items() if not s["version"]}
        body: dict[str, Any] = {"status": "unavailable" if missing else "ok",
                                "models": {role: s["version"] for role, s in got.items()}}
        if missing:
            body["missing"] = missing
        return JSONResponse(body, status_code=503 if missing else 200)

    def _admin_refusal(self, token: str | None) -> JSONResponse | None:
        """403 while no admin token is set, 401 for a missing or wrong one, None when the caller may act."""
        if self.s.admin_token is None:
            return JSONResponse({"detail": "the /admin endpoints are off: set serving.admin_token to enable them"},
                                status_code=403)
        if not same_token(token, self.s.admin_token):
            return JSONResponse({"detail": "missing or wrong X-Admin-Token header"}, status_code=401)
        return None

    async def stop_experiment(self, name: str, token: str | None, reason: str | None) -> JSONResponse:
        """Stop a running experiment for every replica (the store they poll); its report keeps the reason."""
        refused = self._admin_refusal(token)
        if refused is not None:
            return refused
        if self.s.experiments is None:
            return JSONResponse({"detail": "this app runs no experiments (experiments.definitions is empty)"},
                                status_code=404)
        store = ExperimentStore(Path(self.s.experiments.path))
        try:
            await asyncio.to_thread(store.get, name)
        except ExperimentStateError as exc:  # never started here
            return JSONResponse({"detail": printable(str(exc))}, status_code=404)
        try:
            state = await asyncio.to_thread(store.stop, name, printable(reason or "stopped through POST /admin/"
                                                                                  f"experiments/{name}/stop"))
        except ExperimentStateError as exc:
            return JSONResponse({"detail": printable(str(exc))}, status_code=409)
        return JSONResponse({"stopped": name, "stopped_at": state.stopped_at, "reason": state.stop_reason})

    async def reload(self, token: str | None) -> JSONResponse:
        refused = self._admin_refusal(token)
        if refused is not None:
            return refused
        handles = self._model_handles()
        got = await asyncio.gather(*(self.call(h, "reload") for h in handles.values()))
        return JSONResponse(dict(zip(handles, got)))


def build_api(ingress: Ingress) -> FastAPI:
    """The FastAPI app of one ingress replica (routes call the ingress; request models carry its limits)."""
    RecommendRequest, PredictRequest = request_models(ingress.s)
    api = FastAPI(title="RecForge recommendation API", version="1", max_body_size=ingress.s.max_body_bytes,
                  description="Two-stage recommender: online features -> two-tower retrieval -> CTR ranking.")
    install_error_handlers(api, ingress.s.max_body_bytes)

    async def reader(authorization: str | None = Header(None)) -> None:
        """The read endpoints' token (`serving.read_token`), when one is set: `Authorization: Bearer <token>`."""
        want = ingress.s.read_token
        if want is None:
            return
        given = authorization[7:] if authorization and authorization[:7].lower() == "bearer " else None
        if not same_token(given, want):
            raise HTTPException(401, "missing or wrong `Authorization: Bearer` token (serving.read_token)",
                                headers={"WWW-Authenticate": "Bearer"})

    read = [Depends(reader)]

    @api.post("/recommend", response_model=RecommendResponse, dependencies=read,
              responses={401: {"description": "serving.read_token is set and the Bearer token does not match"},
                         422: {"description": "a field is invalid (named in detail[].loc)"},
                         503: {"description": "a model has no version loaded"}})
    async def recommend(body: RecommendRequest) -> Any:  # type: ignore[valid-type]
        """Top-k items for a user: retrieval over the item index, ranked by the CTR model."""
        return await ingress.recommend(body.user_id, body.k, body.context, body.exclude_seen)

    @api.post("/predict", response_model=PredictResponse, dependencies=read,
              responses={401: {"description": "serving.read_token is set and the Bearer token does not match"},
                         422: {"description": "a field is invalid (named in detail[].loc)"},
                         503: {"description": "the ranker has no version loaded"}})
    async def predict(body: PredictRequest) -> Any:  # type: ignore[valid-type]
        """Click probability of each item for a user."""
        return await ingress.predict(body.user_id, body.item_ids, body.context)

    @api.post("/events", response_model=EventsResponse,
              responses={401: {"description": "X-Events-Token does not match serving.events_token"},
                         403: {"description": "serving.events_token is not set: ingestion over HTTP is off"},
                         413: {"description": "more events than events.max_batch_events, or a body above "
                                            "serving.limits.max_body_bytes"},
                         422: {"description": "the body is not {\"events\": [...]}"},
                         503: {"description": "the event bus cannot be reached; nothing was accepted"}})
    async def events(body: EventsRequest, x_events_token: str | None = Header(None)) -> Any:
        """Ingest a batch of user events: each is checked on its own; the accepted ones go to the event bus (the
        stream processor applies them to the online features), the rejected ones are listed with their reasons
        and kept in the dead-letter log."""
        return await ingress.events(body.events, x_events_token)

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 when every model has a version loaded, else 503 naming what is missing."""
        return await ingress.healthz()

    @api.get("/experiments", dependencies=read)
    async def experiments() -> dict[str, Any]:
        """The running experiments this replica routes to (with their current shares) and its exposure log's
        counters (queued, published, rejected, dropped, pending)."""
        return await ingress.experiments()

    @api.get("/models", dependencies=read)
    async def models() -> dict[str, Any]:
        """Per model: the registry version served, since when, the last alias check and the last load error."""
        return await ingress.models()

    @api.post("/admin/reload")
    async def reload(x_admin_token: str | None = Header(None)) -> JSONResponse:
        """Check the aliases now (instead of waiting for the next poll) and load moved versions."""
        return await ingress.reload(x_admin_token)

    @api.post("/admin/experiments/{name}/stop")
    async def stop_experiment(name: str, reason: str | None = None,
                              x_admin_token: str | None = Header(None)) -> JSONResponse:
        """Stop a running experiment now (every replica routes its users to the champion at its next poll)."""
        return await ingress.stop_experiment(name, x_admin_token, reason)

    mount_console(api, ingress.s.console)  # read-only dashboard under /console (serving.console)
    return api


# ------------------------------------------------------------------------------------------------ graph
def api_settings(app: AppSettings) -> ApiSettings:
    """The ingress's ApiSettings of an app's settings."""
    f = app.features
    sources = {c.name: c.source_column for c in f.categorical}
    seen = tuple(s.name for s in f.sequence if sources.get(s.source) == f.item_key)
    s = app.serving
    lim = s.limits
    return ApiSettings(max_k=s.max_k, max_items=s.max_items, max_id_length=lim.max_id_length,
                       max_context_fields=lim.max_context_fields,
                       max_context_value_length=lim.max_context_value_length, max_body_bytes=lim.max_body_bytes,
                       candidates=s.candidates, admin_token=s.admin_token,
                       user_key=f.user_key, item_key=f.item_key, seen_columns=seen, has_retriever=app.has_retriever,
                       events_token=s.events_token, read_token=s.read_token, feature_store=app.feature_store,
                       experiments=experiment_source(app), exposure_type=app.experiments.exposure_type,
                       max_pending_exposures=app.experiments.max_pending_exposures, console=console_settings(app),
                       request_path=s.request_path)


def experiment_source(app: AppSettings) -> ExperimentSource | None:
    """Where the replicas read the running experiments; None when the scenario defines none (no polling)."""
    e = app.experiments
    if not e.definitions:
        return None
    return ExperimentSource(str(experiment_store_path(app.output_dir, e)), e.poll_s, app.name)


def _model_args(app: AppSettings, settings: ApiSettings) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The ranker's and the retriever's constructor arguments (RankerModel / RetrieverModel)."""
    s = app.serving
    uri = app.tracking_uri
    replica = ReplicaSettings(threads=max(1, int(s.cpus_per_replica)), device="cuda" if s.num_gpus > 0 else "cpu",
                              request_path=s.request_path, user_cache_size=s.user_cache_size)
    store = StoreSettings(app.online_store.model_dump(), str(Path(app.output_dir) / "online.db"),
                          settings.user_key, settings.item_key, settings.seen_columns)
    ranker_args = (ModelSource("ranker", app.ranker_model, s.alias, uri, s.poll_seconds), replica, store,
                   RankerBatching(s.ranker_batch_size, s.ranker_batch_wait_ms / 1e3), settings.experiments)
    retriever_args = (ModelSource("retriever", app.retriever_model, s.alias, uri, s.poll_seconds), replica, store,
                      settings.experiments)
    return ranker_args, retriever_args


def fused_parts(app: AppSettings) -> tuple[InProcess, InProcess | None, ApiSettings]:
    """What a fused ingress replica is built from: its in-process ranker and retriever and its settings (also
    used to run the ingress outside Ray Serve, e.g. to profile one request)."""
    settings = api_settings(app)
    ranker_args, retriever_args = _model_args(app, settings)
    retriever = InProcess(RetrieverModel, retriever_args) if settings.has_retriever else None
    return InProcess(RankerModel, ranker_args), retriever, settings


def local_ingress(app: AppSettings, timeout_s: float = 120.0) -> Any:
    """An ingress of the fused topology built in this process, outside Ray Serve, once its models are loaded: to
    profile one request (scripts.bench.serve_profile) or compare the request paths (its methods answer as the
    HTTP routes do; `build_api(ingress)` is its ASGI app). Raises TimeoutError naming the roles not loaded."""
    cls = next(c for c in Ingress.__mro__[1:] if c.__name__ == "Ingress" and c.__module__ == __name__)
    ranker, retriever, settings = fused_parts(app)
    ingress = object.__new__(cls)  # the class itself, without Ray Serve's ASGI wrapper (`@serve.ingress`)
    cls.__init__(ingress, ranker, retriever, settings)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [role for role, h in (("ranker", ingress.ranker), ("retriever", ingress.retriever))
                   if h is not None and h.instance.slot.current() is None]
        if not missing:
            return ingress
        if time.monotonic() > deadline:
            raise TimeoutError(f"no version of the {' and '.join(missing)} loaded in {timeout_s:.0f} s: is a "
                               f"'{app.serving.alias}' alias set (`recforge promote`)?")
        time.sleep(0.1)


def build_app(app: AppSettings) -> Any:
    """The bound Ray Serve application of a scenario's `AppSettings` (serve.run it, or use
    serving.server.start_app)."""
    s = app.serving
    if s.topology == "fused":
        ranker, retriever, settings = fused_parts(app)
        ingress_opts = {"ray_actor_options": {"num_cpus": s.cpus_per_replica, "num_gpus": s.num_gpus},
                        "max_ongoing_requests": s.max_ongoing_requests}
    else:
        settings = api_settings(app)
        ranker_args, retriever_args = _model_args(app, settings)
        model_opts = {"ray_actor_options": {"num_cpus": s.cpus_per_replica, "num_gpus": s.num_gpus},
                      "max_ongoing_requests": s.max_ongoing_requests}
        ranker = RankerModel.options(num_replicas=s.ranker_replicas, **model_opts).bind(*ranker_args)
        retriever = None
        if settings.has_retriever:
            retriever = RetrieverModel.options(num_replicas=s.retriever_replicas, **model_opts).bind(*retriever_args)
        ingress_opts = {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 4 * s.max_ongoing_requests}
    ingress = serve.deployment(Ingress, name="Ingress", num_replicas=s.ingress_replicas, **ingress_opts)
    return ingress.bind(ranker, retriever, settings)
