"""Typed config of the retrieval stage (the `retrieval:` section of a scenario YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from feature_store.config import StrictModel


class TwoTowerConfig(StrictModel):
    """Tower shapes: both towers embed their fields, run an MLP and L2-normalise the output."""

    embedding_dim: int = Field(32, gt=0)
    embedding_init_std: float = Field(0.05, gt=0)
    tower_mlp: list[int] = Field(default_factory=lambda: [128])
    output_dim: int = Field(64, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    history_pooling: Literal["mean", "attention"] = Field(
        "mean", description="how the user tower pools behaviour sequences: mean, or attention with a learned query")
    recency_bias: bool = Field(
        False, description="attention pooling adds a learned score bias per position from the most recent element")
    temperature: float = Field(0.05, gt=0, description="softmax temperature (the start value when learned)")
    learn_temperature: bool = False
    feature_dropout: dict[str, float] = Field(
        default_factory=dict, description="field -> probability: while training, each row's code of that "
        "single-valued field is replaced by the out-of-vocabulary code with that probability, so the tower also "
        "learns to answer without it (e.g. {user_id: 0.3}: the behaviour history carries users whose id is weak)")
    item_bias: bool = Field(
        False, description="the item tower also outputs a learned score bias (a prior per item, e.g. popularity); "
        "vectors get one more column so that the inner product still equals the training logit x temperature")

    @model_validator(mode="after")
    def _consistent(self) -> TwoTowerConfig:
        bad = {k: p for k, p in self.feature_dropout.items() if not 0 <= p < 1}
        if bad:
            raise ValueError(f"model.feature_dropout: probabilities must lie in [0, 1), got {bad}")
        if self.recency_bias and self.history_pooling != "attention":
            raise ValueError("model.recency_bias biases the attention scores: it needs history_pooling: attention")
        return self


class NegativesConfig(StrictModel):
    """In-batch sampled softmax, optionally mixed with uniformly sampled corpus items and hard negatives."""

    logq_correction: bool = Field(True, description="subtract log(sampling probability) of each in-batch item")
    uniform: int = Field(0, ge=0, description="extra negatives per batch drawn uniformly from the corpus")
    hard: int = Field(0, ge=0, description="of the uniform negatives, keep only the `hard` highest-scoring per user")
    full_corpus: bool = Field(False, description="exact softmax over every corpus item instead of sampled "
                                                 "negatives (no sampling bias to correct; for corpora up to ~100k)")
    exclude_history: bool = Field(
        False, description="full_corpus only: the items in a row's own behaviour sequence are not its negatives "
        "(the evaluation and serving exclude what the user already has)")

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
    """`recforge train retrieval`: which spec features feed which tower, positives, split, training, metrics."""

    user_features: list[str] = Field(
        default_factory=list, description="spec features of the user tower (ids, profile, sequences, vectors)")
    item_features: list[str] = Field(default_factory=list, description="spec features of the item tower")
    positive_threshold: float = Field(0.5, description="rows whose label is >= this are positives")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="each user's latest interactions held out for test")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="each user's latest train interactions for valid")
    model: TwoTowerConfig = Field(default_factory=TwoTowerConfig)
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    positive_repeats: Literal["keep", "first"] = Field(
        "keep", description="first: train on each (user, item) pair's first positive only, later repeats of the pair "
        "are dropped from the training rows (the evaluation never asks for an item the user already has)")
    history: Literal["point_in_time", "ordered"] = Field(
        "point_in_time", description="the user tower's behaviour sequences over item fields, for training rows and "
        "the valid/test queries: point_in_time = as prepared (events at strictly earlier times); ordered = rebuilt "
        "from the positives before the row in (time, row) order, so the earlier lines of the same basket count and "
        "a query sees every row it excludes as seen, as a request does after the online store has the basket")
    user_balance: float = Field(
        0.0, ge=0, le=1, description="weight each train positive by n_u^-user_balance (n_u: its user's positives): "
                                     "0 = every positive counts the same, 1 = every user counts the same")
    batch_size: int = Field(1024, gt=1)
    max_epochs: int = Field(10, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="> 0: validation, the refit's result and the exported towers use an "
        "exponential moving average of the weights over training steps (this decay per step, warmed up as "
        "min(decay, (1 + n) / (10 + n))); 0 = the last step's weights")
    lr_decay: float = Field(
        1.0, gt=0, le=1, description="the learning rate is multiplied by this after every epoch (1 = constant); "
        "the refit trains with the same schedule for the selected number of epochs")
    patience: int = Field(2, ge=0, description="early stopping on valid recall@`select_k`")
    refit: bool = Field(True, description="after early stopping picks the epoch count, train a fresh model on "
                                          "train + valid positives for that many epochs (the baselines also fit "
                                          "on train + valid); false keeps the selected checkpoint")
    select_k: int = Field(50, gt=0)
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50, 100])
    baselines: list[Literal["most_popular", "item_knn", "als", "bpr"]] = Field(
        default_factory=lambda: ["most_popular", "item_knn", "als", "bpr"])
    seed: int = 42
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp"] = "auto"
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"
    num_threads: int | None = Field(None, gt=0)
    ray_workers: int = Field(0, ge=0, description=">0 trains through Ray Train with that many workers")
    query_sample: int = Field(2000, gt=0, description="user vectors exported for the index recall guard")
