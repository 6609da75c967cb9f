"""Typed config of the retrieval stage (the `retrieval:` section of a scenario YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from feature_store.config import StrictModel
from training.common.config import (
    CompileMode,
    RetrievalOptimConfig,
    RuntimeConfig,
    TrackingConfig,
    compile_mode,
)


class TwoTowerConfig(StrictModel):
    """Tower shapes: both towers embed their fields, run an MLP and L2-normalise the output."""

    embedding_dim: int = Field(32, gt=0, description="width of every field's embedding (one shared table per field)")
    embedding_init_std: float = Field(0.05, gt=0, description="standard deviation of the initial embedding rows")
    tower_mlp: list[int] = Field(default_factory=lambda: [128], description="hidden layer widths of each tower's MLP")
    output_dim: int = Field(64, gt=0, description="width of the user and item vectors (the index's dimension)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden layer of the towers")
    history_pooling: Literal["mean", "attention"] = Field(
        "mean", description="how the user tower pools behaviour sequences: mean, or attention with a learned query")
    temperature: float = Field(0.05, gt=0, description="softmax temperature: logits are cosine / temperature")
    feature_dropout: dict[str, float] = Field(
        default_factory=dict, description="field -> probability: while training, each row's code of that "
        "single-valued field is replaced by the out-of-vocabulary code with that probability, so the tower also "
        "learns to answer without it (e.g. {user_id: 0.3}: the behaviour history carries users whose id is weak)")

    @model_validator(mode="after")
    def _consistent(self) -> TwoTowerConfig:
        bad = {k: p for k, p in self.feature_dropout.items() if not 0 <= p < 1}
        if bad:
            raise ValueError(f"model.feature_dropout: probabilities must lie in [0, 1), got {bad}")
        return self


class NegativesConfig(StrictModel):
    """In-batch sampled softmax, optionally mixed with uniformly sampled corpus items and hard negatives."""

    logq_correction: bool = Field(True, description="subtract log(sampling probability) of each in-batch item")
    uniform: int = Field(0, ge=0, description="extra negatives per batch drawn uniformly from the corpus")
    hard: int = Field(0, ge=0, description="of the uniform negatives, keep only the `hard` highest-scoring per user")
    full_corpus: bool = Field(False, description="exact softmax over every corpus item instead of sampled "
                                                 "negatives (no sampling bias to correct; for corpora up to ~100k)")
    exclude_history: bool = Field(
        False, description="full_corpus only: the items of a row's own behaviour sequence other than its positive "
        "are not its negatives (the evaluation and serving exclude what the user already has)")

    @model_validator(mode="after")
    def _hard_needs_uniform(self) -> NegativesConfig:
        if self.hard and self.hard > self.uniform:
            raise ValueError(f"negatives.hard ({self.hard}) must be <= negatives.uniform ({self.uniform}): hard "
                             f"negatives are mined from the uniformly sampled ones")
        if self.full_corpus and (self.uniform or self.hard):
            raise ValueError("negatives.full_corpus scores every corpus item; uniform/hard sampling must be 0 with it")
        if self.exclude_history and not self.full_corpus:
            raise ValueError("negatives.exclude_history masks history items in the full-corpus softmax: set "
                             "negatives.full_corpus: true with it")
        return self


class RetrievalConfig(StrictModel):
    """`recforge train retrieval`: which spec features feed which tower, positives, split, training, metrics.

    The corpus is every item with a row in the prepared train split (features from its latest row); the queries
    are the user-side features of each user's first held-out row, point-in-time (with `history: ordered`, its
    sequences hold the user's latest train/valid positives, up to `max_len`). Items the user has in train/valid
    are excluded from the ranking. The baselines (`most_popular`, `item_knn`: cosine item-item, `als` and `bpr`
    from the `implicit` library) are fitted on train + valid and scored on the same test queries.

    `history: ordered` needs `positive_only: true` sequences whose source is an item-tower field (config errors
    otherwise). On Online Retail 36% of the test queries have an empty point-in-time history although their
    user has bought before (the first test line shares its invoice time with earlier lines).

    Measured on MovieLens and Online Retail (docs/benchmarks.md, "Retrieval experiments"): `ema_decay: 0.998`
    (configs/movielens.yaml, configs/retail.yaml) raised recall@10 at every seed measured;
    `negatives.exclude_history` is on in configs/movielens.yaml and configs/retail.yaml, where it raised the
    three-seed means; on Online Retail it pays with `history: ordered`, and measured lower with point-in-time
    histories.

    The run writes the retrieval bundle to `<output_dir>/retrieval/bundle` (and logs it to MLflow as
    `retrieval_bundle`): `bundle.json` (format, this config, corpus size, test metrics), `two_tower.pt`, `spec/`,
    `embeddings/` (item vectors with raw `item_id` and corpus position `item_code`; a sample of held-out user
    vectors), `popularity.parquet` (the unknown-user fallback) and, after `recforge index build`, `index/`.
    `training.retrieval.bundle.load_retriever(dir)` loads it for serving.
    """

    user_features: list[str] = Field(
        default_factory=list, description="spec features of the user tower (ids, profile, sequences, vectors); a "
        "behaviour sequence belongs here and needs its source (the item id) in `item_features`; an unknown name is an "
        "error listing the spec's features")
    item_features: list[str] = Field(default_factory=list, description="spec features of the item tower")
    positive_threshold: float = Field(0.5, description="rows whose label is >= this are positives: clicks, "
                                      "ratings >= 4 through the MovieLens label, every purchase line of transactions")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="each user's latest interactions held out for test")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="each user's latest train interactions for valid")
    model: TwoTowerConfig = Field(default_factory=TwoTowerConfig, description="the towers' shapes")
    negatives: NegativesConfig = Field(default_factory=NegativesConfig, description="which negatives the loss uses")
    history: Literal["point_in_time", "ordered"] = Field(
        "point_in_time", description="the user tower's behaviour sequences over item fields, for training rows and "
        "the valid/test queries: point_in_time = as prepared (events at strictly earlier times); ordered = rebuilt "
        "from the positives before the row in (time, row) order, so the earlier lines of the same basket count and "
        "a query sees every row it excludes as seen, as a request does after the online store has the basket")
    batch_size: int = Field(1024, gt=1, description="positives per batch (also the in-batch negatives)")
    compile: CompileMode = Field(
        "auto", description="torch.compile the towers for training: off, on, or auto = on when training on CUDA; "
                            "the bundle keeps the plain model's keys")
    max_epochs: int = Field(10, gt=0, description="upper bound on epochs of the selection run")
    optim: RetrievalOptimConfig = Field(default_factory=RetrievalOptimConfig,
                                        description="optimisers and learning-rate schedule of the towers")
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="> 0: validation, the refit's result and the exported towers use an "
        "exponential moving average of the weights over training steps (this decay per step, warmed up as "
        "min(decay, (1 + n) / (10 + n))); 0 = the last step's weights")
    patience: int = Field(2, ge=0, description="early stopping on valid recall@`select_k`")
    refit: bool = Field(True, description="after early stopping picks the epoch count, train a fresh model on "
                                          "train + valid positives for that many epochs (the baselines also fit "
                                          "on train + valid); false keeps the selected checkpoint")
    select_k: int = Field(50, gt=0, description="early stopping and the best checkpoint on valid recall@select_k")
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50, 100],
                          description="the K of the reported recall@K, ndcg@K and hit_rate@K (MRR within the largest)")
    baselines: list[Literal["most_popular", "item_knn", "als", "bpr"]] = Field(
        default_factory=lambda: ["most_popular", "item_knn", "als", "bpr"],
        description="baselines scored on the same test queries (fitted on train + valid)")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig,
                                   description="seed, device, precision, threads and Ray Train workers (each worker "
                                               "takes its share of every epoch; the best checkpoint by valid recall "
                                               "is kept)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="the MLflow run of the job")
    query_sample: int = Field(2000, gt=0, description="user vectors exported for the index recall guard")

    _compile_words = field_validator("compile", mode="before")(compile_mode)
