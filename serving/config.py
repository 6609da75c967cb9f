"""Typed config of the serving side: the `registry:` section (model names, promotion gate) and the `serving:`
section (the Ray Serve application). Both are validated at the edge like every other section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feature_store.config import StrictModel


class GateConfig(StrictModel):
    """How much worse than the champion a candidate may be and still be promoted (absolute deltas)."""

    auc_tolerance: float = Field(0.002, ge=0, description="rankers: refuse when AUC drops by more than this")
    logloss_tolerance: float = Field(0.005, ge=0, description="rankers: refuse when logloss rises by more than this")
    recall_tolerance: float = Field(0.005, ge=0, description="retrievers: refuse when recall@k drops by more")
    recall_k: int = Field(50, gt=0, description="retrievers: the K of the gate's recall@K")


class RegistryConfig(StrictModel):
    """MLflow registered models of a scenario and the promotion gate. Names default to `<name>-ranker` and
    `<name>-retriever` (the scenario's `name`)."""

    ranker_name: str | None = None
    retriever_name: str | None = None
    gate: GateConfig = Field(default_factory=GateConfig)


class ServingConfig(StrictModel):
    """The Ray Serve application (`recforge serve`)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    ray_address: str | None = Field(None, description="attach to this Ray cluster; None starts a local Ray")
    alias: str = Field("champion", description="which registry alias the app serves")
    poll_seconds: float = Field(5.0, gt=0, description="how often the app checks the alias for a new version")
    candidates: int = Field(200, gt=0, description="retrieval top-N handed to the ranker")
    max_k: int = Field(100, gt=0, description="largest k a request may ask for (422 above)")
    max_items: int = Field(1000, gt=0, description="largest item list /predict accepts (422 above)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per ranker/retriever replica (0: CPU)")
    cpus_per_replica: float = Field(0.5, gt=0, description="Ray CPUs reserved per model replica (fused: per "
                                                          "ingress replica); torch uses max(1, int(this)) threads")
    topology: Literal["fused", "split"] = Field(
        "fused", description="fused: every ingress replica holds the retriever and the ranker and answers a "
                             "request in one process (fewest hops; the fastest on one machine); split: the ranker "
                             "and the retriever are deployments of their own that the ingress calls (scale or place "
                             "them apart, e.g. rankers on GPU nodes)")
    ingress_replicas: int = Field(2, gt=0, description="replicas of the HTTP ingress (fused: of the whole app)")
    ranker_replicas: int = Field(1, gt=0, description="split topology: replicas of the ranker deployment")
    retriever_replicas: int = Field(1, gt=0, description="split topology: replicas of the retriever deployment")
    ranker_batch_size: int = Field(
        1, gt=0, description="concurrent requests the ranker scores in one forward pass (@serve.batch); on CPU the "
                             "pass is compute-bound, so 1 (score each request at once) answers fastest; raise it "
                             "for GPU rankers")
    ranker_batch_wait_ms: float = Field(1.0, ge=0, description="how long a batch waits to fill")
    max_ongoing_requests: int = Field(64, gt=0, description="requests one model replica works on at once (Ray "
                                                           "Serve max_ongoing_requests; the ingress takes 4x)")
    admin_token: str | None = Field(None, description="token the admin reload endpoint requires (None: disabled)")


def model_names(scenario: str, cfg: RegistryConfig) -> tuple[str, str]:
    """(ranker, retriever) registered-model names of a scenario."""
    return cfg.ranker_name or f"{scenario}-ranker", cfg.retriever_name or f"{scenario}-retriever"
