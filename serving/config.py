"""Typed config of the serving side: the `registry:` section (model names, promotion gate) and the `serving:`
section (the Ray Serve application). Both are validated at the edge like every other section.

`AppSettings` is what the app takes instead of the whole scenario config: `serving` sits below `recforge` in the
import order, so the composition root (`recforge.config.app_settings`) picks the sections the app reads and
resolves the values it derives (tracking URI, model names) once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

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
    max_ongoing_requests: int = Field(64, gt=0, description="requests one replica works on at once (Ray Serve "
                                                           "`max_ongoing_requests`; a split ingress takes 4x)")
    admin_token: SecretText | None = Field(None, description="token `POST /admin/reload` requires in "
                                                             "`X-Admin-Token`; null disables the endpoint; secret: "
                                                             "redacted in every output")
    events_token: SecretText | None = Field(None, description="token `POST /events` requires in `X-Events-Token`; "
                                                              "null: the endpoint is as open as /recommend; secret: "
                                                              "redacted in every output")
    stats_host: str = Field("127.0.0.1", description="address HAProxy's stats page and Prometheus metrics listen on "
                                                     "(loopback: this machine only); 0.0.0.0 opens them to others")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="timeouts and request size limits")


def model_names(scenario: str, cfg: RegistryConfig) -> tuple[str, str]:
    """(ranker, retriever) registered-model names of a scenario."""
    return cfg.ranker_name or f"{scenario}-ranker", cfg.retriever_name or f"{scenario}-retriever"


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
