"""Typed config of the serving side: the `registry:` section (model names, promotion gate), the `serving:`
section (the Ray Serve application) and the `experiments:` section (champion/challenger and bandit experiments on
the serving path). All are validated at the edge like every other section.

`AppSettings` is what the app takes instead of the whole scenario config: `serving` sits below `recforge` in the
import order, so the composition root (`recforge.config.app_settings`) picks the sections the app reads and
resolves the values it derives (tracking URI, model names) once."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from feature_store.config import FeaturesConfig, FeatureStoreConfig, OnlineStoreConfig, StrictModel
from feature_store.secrets import SecretText


class GateConfig(StrictModel):
    """How much worse than the champion a candidate may be and still be promoted, so that a retrained model that
    lost quality never reaches traffic unnoticed.

    Tolerances are absolute deltas measured on the same held-out data for both models (rankers: the scenario's
    raw test rows through each model's own feature spec; retrievers: the prepared test queries). A model's first
    promotion passes without comparison. `--force --reason "..."` overrides a refusal and records who and why.
    """

    auc_tolerance: float = Field(0.002, ge=0, description="rankers: refuse when the candidate's AUC is below the "
                                                          "champion's by more than this")
    logloss_tolerance: float = Field(0.005, ge=0, description="rankers: refuse when the candidate's logloss is "
                                                              "above the champion's by more than this")
    recall_tolerance: float = Field(0.005, ge=0, description="retrievers: refuse when recall@`recall_k` is below "
                                                             "the champion's by more than this")
    recall_k: int = Field(50, gt=0, description="retrievers: the K of the gate's recall@K")


class RegistryConfig(StrictModel):
    """The model registry and its promotion gate, used by `recforge register`, `promote`, `rollback` and
    `registry list` ([cli.md](cli.md)). The registry lives in the tracking store (`train.tracking.uri`, default
    `<output_dir>/mlflow.db`)."""

    ranker_name: str | None = Field(None, description="registered model name of the ranker; null = "
                                                      "`<name>-ranker` (the scenario's `name`)")
    retriever_name: str | None = Field(None, description="registered model name of the retriever; null = "
                                                         "`<name>-retriever`")
    gate: GateConfig = Field(default_factory=GateConfig, description="the promotion gate's tolerances")


class LimitsConfig(StrictModel):
    """What a client may cost the service: timeouts and sizes enforced at the edge (HAProxy) and in the app, so
    that no slow, idle or oversized request can hold the service (measured in docs/benchmarks.md, Reliability).

    HAProxy buffers a request's whole body before it forwards it, so a client that sends headers and part of a body
    holds one HAProxy connection (at most `header_timeout_s`), never a replica's request slot. The timeouts are
    HAProxy's (the default ingress); Ray's Python proxy (`RAY_SERVE_ENABLE_HA_PROXY=0`) enforces the sizes only.
    """

    header_timeout_s: int = Field(10, gt=0, description="a request's headers and body must arrive within this "
                                                        "(HAProxy `timeout http-request`); slower clients get 408")
    client_timeout_s: int = Field(30, gt=0, description="a client silent this long mid-request is disconnected "
                                                        "(HAProxy `timeout client`; Ray's default is 3600)")
    keepalive_timeout_s: int = Field(10, gt=0, description="an idle kept-alive connection is closed after this "
                                                           "(HAProxy `timeout http-keep-alive`)")
    max_body_bytes: int = Field(256 << 10, gt=0, description="largest request body (413 above), checked on "
                                                            "Content-Length at the edge and on the bytes read in the "
                                                            "app; HAProxy holds a request this large whole before "
                                                            "forwarding it (1,000 ids of 256 characters fit)")
    max_id_length: int = Field(256, gt=0, description="longest string user or item id (422 above)")
    max_context_fields: int = Field(64, gt=0, description="most keys in a request's `context` (422 above)")
    max_context_value_length: int = Field(1024, gt=0, description="longest string, and longest list, in a context "
                                                                  "value (422 above)")


CONSOLE_TOKEN_MIN = 16  # characters of `serving.console_token`


class ServingConfig(StrictModel):
    """The HTTP application of `recforge serve` on Ray Serve (endpoints and commands in
    [cli.md](cli.md#serving)). It serves `models:/<registry name>@<alias>` of the scenario's ranker and
    retriever.

    A local Ray (no `ray_address`) runs Ray Serve's high-throughput mode: HAProxy as the HTTP ingress and gRPC
    between replicas (`RAY_SERVE_ENABLE_HA_PROXY=1`, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, set before Ray starts
    unless the environment already sets them). Set `RAY_SERVE_ENABLE_HA_PROXY=0` for Ray's Python proxy. A
    cluster uses what its nodes were started with: set the same variables there. HAProxy listens on
    `host:port`; its read-only stats page and Prometheus metrics listen on `stats_host` (loopback by default) at
    free ports chosen at start (`RAY_SERVE_HAPROXY_STATS_PORT`, `RAY_SERVE_HAPROXY_METRICS_PORT` in the serving
    process's environment). A local Ray listens on loopback only. What is exposed and how to open it deliberately:
    [cli.md](cli.md#security).
    """

    host: str = Field("127.0.0.1", description="address the HTTP proxy (and, with HAProxy, each ingress replica) "
                                               "listens on; 0.0.0.0 to accept other machines")
    port: int = Field(8000, gt=0, lt=65536, description="HTTP port (`--port`)")
    ray_address: str | None = Field(None, description="attach to this Ray cluster (`--ray-address`, e.g. `auto`); "
                                                      "null starts a local Ray")
    proxy_location: Literal["every_node", "head_only"] = Field(
        "every_node", description="on a cluster, where Ray Serve runs an HTTP proxy on `host:port`: every node "
                                  "(put a load balancer in front of them) or the head node only (one address; "
                                  "also the choice where several nodes share one host and so one port)")
    alias: str = Field("champion", description="the registry alias served")
    poll_seconds: float = Field(5.0, gt=0, description="how often each model replica checks the alias; a moved "
                                                       "alias is loaded and swapped in atomically")
    candidates: int = Field(200, gt=0, description="retrieval top-N that the ranker scores per /recommend (at "
                                                   "least `k`): more finds more, costs ranker time")
    max_k: int = Field(100, gt=0, description="largest `k` of /recommend (422 above)")
    max_items: int = Field(1000, gt=0, description="largest `item_ids` list of /predict (422 above)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (fused: per ingress replica); > 0 runs "
                                                   "the ranker on CUDA")
    cpus_per_replica: float = Field(0.5, gt=0, description="Ray CPUs reserved per model replica (fused: per "
                                                          "ingress replica); torch uses max(1, int(this)) threads")
    topology: Literal["fused", "split"] = Field(
        "fused", description="fused: every ingress replica holds the retriever and the ranker and answers a "
                             "request in one process (fewest hops; the fastest on one machine); split: the ranker "
                             "and the retriever are deployments of their own that the ingress calls (scale or place "
                             "them apart, e.g. rankers on GPU nodes)")
    ingress_replicas: int = Field(2, gt=0, description="replicas of the HTTP ingress (fused: of the whole app; "
                                                       "one per core measured best on 2 cores)")
    ranker_replicas: int = Field(1, gt=0, description="split topology: replicas of the ranker deployment")
    retriever_replicas: int = Field(1, gt=0, description="split topology: replicas of the retriever deployment")
    ranker_batch_size: int = Field(
        1, gt=0, description="concurrent requests the ranker scores in one forward pass (@serve.batch); on CPU the "
                             "pass is compute-bound, so 1 (score each request at once) answers fastest; raise it "
                             "for GPU rankers")
    ranker_batch_wait_ms: float = Field(1.0, ge=0, description="how long a ranker batch waits to fill")
    request_path: Literal["fast", "baseline"] = Field(
        "fast", description="how a model replica answers: fast (the user's views read in one transaction; the user "
                            "side transformed once for retriever and ranker and cached, keyed by every feature value "
                            "read and the context (`user_cache_size`); the ranker gathers the cached item inputs "
                            "and scores them in one forward pass of the inference graph chosen when the version "
                            "loads, or, for DCN-V2 on CPU, from its first layers computed once per item and once "
                            "per request; answers encoded by orjson); baseline: each model transforms the "
                            "request's rows itself, as before the fast path, kept to measure both side by side "
                            "(same answers)")
    user_cache_size: int = Field(20_000, ge=0, description="fast request path: users whose request side (user "
                                                          "vector, ranker inputs) one replica keeps, keyed by every "
                                                          "feature value read and the context, so never stale; 0 "
                                                          "keeps none")
    max_ongoing_requests: int = Field(64, gt=0, description="requests one replica works on at once (Ray Serve "
                                                           "`max_ongoing_requests`; a split ingress takes 4x)")
    admin_token: SecretText | None = Field(None, description="token the `/admin/*` endpoints (reload, experiment "
                                                             "stop) require in `X-Admin-Token`; null disables them "
                                                             "(403); secret: redacted in every output")
    events_token: SecretText | None = Field(None, description="token `POST /events` requires in `X-Events-Token`; "
                                                              "null disables event ingestion over HTTP (403: "
                                                              "`recforge events push` still works); secret: "
                                                              "redacted in every output")
    read_token: SecretText | None = Field(None, description="token the read endpoints (/recommend, /predict, GET "
                                                            "/experiments, GET /models) require as `Authorization: "
                                                            "Bearer`; null: they are open (/healthz always is); "
                                                            "secret: redacted in every output")
    console_token: SecretText | None = Field(
        None, description="the token the read-only marketers' console at `/console` asks for (login form or "
                          "`Authorization: Bearer`); null: the console is off (every /console URL answers 404); at "
                          "least 16 characters; secret: redacted in every output")
    stats_host: str = Field("127.0.0.1", description="address HAProxy's stats page and Prometheus metrics listen on "
                                                     "(loopback: this machine only); 0.0.0.0 opens them to others")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="timeouts and request size limits")

    @model_validator(mode="after")
    def _console_token_length(self) -> ServingConfig:
        """A short console token could be guessed; checked here rather than with `min_length` so that the error
        never shows the value (a field error quotes its input)."""
        token = self.console_token
        if token is not None and len(token) < CONSOLE_TOKEN_MIN:
            raise ValueError(f"serving.console_token has {len(token)} characters; use at least {CONSOLE_TOKEN_MIN} "
                             "(e.g. from `python -c \"import secrets; print(secrets.token_urlsafe(24))\"`)")
        return self


def model_names(scenario: str, cfg: RegistryConfig) -> tuple[str, str]:
    """(ranker, retriever) registered-model names of a scenario."""
    return cfg.ranker_name or f"{scenario}-ranker", cfg.retriever_name or f"{scenario}-retriever"


# ------------------------------------------------------------------------------------------------ experiments
# The `experiments:` section. An experiment is defined here and run with `recforge experiment start NAME`
# (docs/cli.md#experiments): the definition says what is compared (arms: model versions or a non-model policy), on
# which traffic (a slice of the users), how traffic is split (fixed shares or Thompson sampling), what decides (the
# primary metric), what must not get worse (guardrails) and how much data it needs (the power calculation printed
# at start).
Metric = Literal["ctr", "conversion", "revenue_per_user"]
METRIC_DOC = ("ctr: clicked shown items per shown item (a ratio of per-user sums, tested with the delta method); "
              "conversion: the share of exposed users with a purchase; revenue_per_user: purchase value per exposed "
              "user")
VERSION = re.compile(r"^(@[A-Za-z0-9_.-]+|[0-9]+)$")


class ArmConfig(StrictModel):
    """One arm: what its users are served. A model arm names a registered version (`"7"`) or an alias
    (`"@challenger"`, resolved once at start and pinned) for the ranker and/or the retriever; a role left null is
    served by the version `serving.alias` points at when the experiment starts. `policy: popular` serves the most
    popular items (in popularity order, scored by the ranker): the non-model baseline."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the arm's name (letters, digits, `_.-`)")
    share: float | None = Field(None, ge=0, le=1, description="its share of the experiment's users; with "
                                                              "`allocation.type: fixed` every arm needs one and they "
                                                              "sum to 1; Thompson sampling starts from these (null: "
                                                              "equal shares)")
    ranker: str | None = Field(None, description="ranker version (`\"7\"`) or alias (`\"@challenger\"`); null = the "
                                                 "served alias's version at start")
    retriever: str | None = Field(None, description="retriever version or alias, like `ranker`")
    policy: Literal["model", "popular"] = Field("model", description="model: retrieval then ranking with the "
                                                                     "arm's versions; popular: the most popular "
                                                                     "items (no personalisation)")

    @field_validator("ranker", "retriever")
    @classmethod
    def _version_or_alias(cls, v: str | None) -> str | None:
        if v is not None and not VERSION.match(v):
            raise ValueError(f"'{v}' is neither a version number (\"7\") nor an alias (\"@challenger\")")
        return v


class AllocationConfig(StrictModel):
    """How the experiment's users are split between arms. Assignment is hash(salt, user) -> arm, with no storage:
    a user keeps their arm as long as the shares stay. Thompson sampling (Beta-Bernoulli on clicks per shown item)
    moves the shares towards the arm most likely best every `update_s`; a user near a moving boundary may change
    arm, which is why its results are read per exposure."""

    type: Literal["fixed", "thompson"] = Field("fixed", description="fixed: the arms' shares; thompson: shares from "
                                                                    "the posterior probability of being best")
    min_share: float = Field(0.05, ge=0, lt=0.5, description="thompson: no arm gets less (it keeps learning)")
    update_s: float = Field(60.0, gt=0, description="thompson: how often the shares are recomputed from the "
                                                    "outcomes so far (also how often guardrails are checked)")
    prior_alpha: float = Field(1.0, gt=0, description="thompson: Beta prior's alpha (prior clicks + 1)")
    prior_beta: float = Field(1.0, gt=0, description="thompson: Beta prior's beta (prior exposures without a "
                                                     "click + 1)")
    draws: int = Field(10_000, ge=100, description="thompson: posterior draws per update")


class TrafficConfig(StrictModel):
    """Which users are in the experiment: those whose traffic hash (salted by the scenario, the same for every
    experiment) falls in [offset, offset + share). Two running experiments whose ranges intersect would share
    users and are refused; the users outside every running experiment get the champion."""

    offset: float = Field(0.0, ge=0, lt=1, description="start of the experiment's slice of users")
    share: float = Field(1.0, gt=0, le=1, description="width of the slice (the experiment's share of users)")

    @model_validator(mode="after")
    def _inside(self) -> TrafficConfig:
        if self.offset + self.share > 1 + 1e-9:
            raise ValueError(f"offset {self.offset:g} + share {self.share:g} exceeds 1: the slice must lie in [0, 1)")
        return self


class GuardrailConfig(StrictModel):
    """A metric no challenger may make worse: when its always-valid confidence interval of (challenger -
    control) lies entirely below `-tolerance`, the challenger stops receiving traffic (its share goes to the
    control arm) and the report says when and why."""

    metric: Metric = Field(description=METRIC_DOC)
    tolerance: float = Field(0.0, ge=0, description="absolute drop accepted before the guardrail fires")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="error rate of the always-valid interval")


class DesignConfig(StrictModel):
    """The power calculation: users per arm for a two-sided test at `alpha` to detect a lift of `mde` over a
    `baseline` rate with probability `power` (statsmodels' NormalIndPower), printed at start and used as the
    planned sample size in every report."""

    baseline: float = Field(0.05, gt=0, lt=1, description="the control's expected rate of the primary metric "
                                                          "(for revenue_per_user: of conversion)")
    mde: float = Field(0.01, gt=0, lt=1, description="minimum detectable effect: absolute lift of that rate")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance level (two-sided)")
    power: float = Field(0.8, gt=0, lt=1, description="probability of detecting an effect of `mde`")

    @model_validator(mode="after")
    def _rate(self) -> DesignConfig:
        if self.baseline + self.mde >= 1:
            raise ValueError(f"baseline {self.baseline:g} + mde {self.mde:g} is not a rate below 1")
        return self


class ExperimentConfig(StrictModel):
    """One experiment on the serving path (`recforge experiment start NAME`)."""

    description: str = Field("", description="what is tested and why (shown in the report)")
    arms: list[ArmConfig] = Field(min_length=2, description="the arms; the first is the control unless `control` "
                                                            "names another")
    control: str | None = Field(None, description="the control arm's name; null = the first arm")
    allocation: AllocationConfig = Field(default_factory=AllocationConfig, description="how users are split")
    traffic: TrafficConfig = Field(default_factory=TrafficConfig, description="the slice of users in the experiment")
    unit: Literal["user"] = Field("user", description="the randomisation unit")
    salt: str | None = Field(None, description="assignment salt; null = the experiment's name (a new salt "
                                               "reshuffles users)")
    primary: Metric = Field("ctr", description="the metric that decides: " + METRIC_DOC)
    guardrails: list[GuardrailConfig] = Field(default_factory=list, description="metrics a challenger must not "
                                                                                "worsen (automatic stop)")
    design: DesignConfig = Field(default_factory=DesignConfig, description="the power calculation")
    sequential_tau: float | None = Field(None, gt=0, description="standard deviation of the mSPRT's normal mixture "
                                                                 "over the true difference (the effect size it is "
                                                                 "most sensitive to); null = `design.mde`")
    attribution_window_s: float = Field(3600.0, gt=0, description="an outcome without `exposure_id` is credited to "
                                                                  "the user's latest exposure showing that item "
                                                                  "within this many seconds before it")
    pre_period_s: float = Field(14 * 86400.0, ge=0, description="CUPED covariate: each user's same metric over "
                                                                "this long before the start (0: no CUPED)")

    @model_validator(mode="after")
    def _arms(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms {names} repeat a name; each arm needs its own")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control '{self.control}' is not an arm (arms: {', '.join(names)})")
        shares = [a.share for a in self.arms]
        if self.allocation.type == "fixed" and any(s is None for s in shares):
            missing = [a.name for a in self.arms if a.share is None]
            raise ValueError(f"allocation.type fixed needs a share on every arm; {missing} have none")
        given = [s for s in shares if s is not None]
        if given and (len(given) != len(shares) or not math.isclose(sum(given), 1.0, abs_tol=1e-6)):
            raise ValueError(f"the arms' shares {shares} must all be set and sum to 1 (they sum to {sum(given):g})")
        if self.allocation.type == "thompson" and self.allocation.min_share * len(self.arms) > 1:
            raise ValueError(f"allocation.min_share {self.allocation.min_share:g} x {len(self.arms)} arms exceeds 1")
        return self

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0].name

    def initial_shares(self) -> list[float]:
        if self.arms[0].share is None:
            return [1.0 / len(self.arms)] * len(self.arms)
        return [float(a.share or 0.0) for a in self.arms]


class ExperimentsConfig(StrictModel):
    """Experiments on the serving path (docs/cli.md#experiments): their definitions, where their state lives, and
    how exposures reach the event log. The state (which experiment runs since when, its current shares, why it
    stopped) is in `store_path`, which `recforge serve` polls every `poll_s`."""

    definitions: dict[str, ExperimentConfig] = Field(default_factory=dict,
                                                     description="experiments by name (`recforge experiment start "
                                                                     "NAME`)")
    store_path: str | None = Field(None, description="the experiments' state (SQLite); null = "
                                                     "`<output_dir>/experiments.db`")
    poll_s: float = Field(2.0, gt=0, description="how often a serving replica re-reads which experiments run")
    exposure_type: str = Field("impression", description="the event type exposures are logged as (one of "
                                                         "`events.types`, not a positive type)")
    click_types: list[str] = Field(["click"], min_length=1, description="event types that count as a click")
    max_pending_exposures: int = Field(200_000, gt=0, description="exposure events a replica holds while the bus "
                                                                  "is unreachable; more are counted as dropped "
                                                                  "(`GET /experiments`), never silently")
    reports_dir: str | None = Field(None, description="where reports are written; null = "
                                                      "`<output_dir>/experiments`")

    @field_validator("definitions")
    @classmethod
    def _names(cls, v: dict[str, ExperimentConfig]) -> dict[str, ExperimentConfig]:
        bad = [k for k in v if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", k)]
        if bad:
            raise ValueError(f"experiment names {bad} must be 1-64 letters, digits or `_.-`")
        return v


@dataclass(frozen=True)
class AppSettings:
    """What the recommendation app (serving.app.build_app, serving.server) needs of a scenario.

    Attributes:
        name: the scenario's name (recorded in a detached server's state file).
        output_dir: the scenario's output directory (the default SQLite online store is `online.db` there).
        serving: the `serving:` section.
        tracking_uri: the MLflow store whose registry aliases the app serves.
        ranker_model: the registered-model name of the scenario's rankers.
        retriever_model: the registered-model name of the scenario's retrievers.
        features: the `features:` section (user and item keys, which sequences hold seen items).
        online_store: the `online_store:` section.
        has_retriever: whether the scenario has a retrieval model (both towers configured); without one the app
            answers /predict only.
        feature_store: the feature-store sections (`POST /events` checks events against `events:` and publishes
            them to the scenario's bus; `events.stream.serve` runs the stream processor beside the app).
        experiments: the `experiments:` section (the replicas route users to the running experiments' arms).
        analytics_dir: the analyses' output directory (`analytics.output_dir`, else `<output_dir>/analytics`),
            which the console reads; resolved by the composition root because `analytics` sits above `serving`.
    """

    name: str
    output_dir: Path
    serving: ServingConfig
    tracking_uri: str
    ranker_model: str
    retriever_model: str
    features: FeaturesConfig
    online_store: OnlineStoreConfig
    has_retriever: bool
    feature_store: FeatureStoreConfig
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    analytics_dir: Path | None = None  # where `recforge segment` & co. write; None: `<output_dir>/analytics`
