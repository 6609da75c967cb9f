"""Logistic regression: one weight per id (a width-1 embedding) summed over fields, plus Linear(dense)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.common.embedding import SparseEmbedding, build_embedding
from training.common.features import FeatureLayout
from training.common.layers import first_order
from training.ranking.models.base import CTRModel, ModelConfig


class LRConfig(ModelConfig):
    """Logistic regression: one learned weight per id, summed over the fields (bags and sequences mean-pooled),
    plus a linear term of the dense features: the baseline every other model should beat. `embedding_dim` does
    not apply (the id weights are width 1)."""


class LR(CTRModel):
    """logit = sum over fields of w[id] (bags and sequences mean-pooled) + w_dense . dense + b.

    The model's `embedding` IS its id weights: a width-1 table per field on the configured backend. An
    injected embedding must therefore have `dim == 1`.
    """

    config_class = LRConfig

    def __init__(self, layout: FeatureLayout, cfg: LRConfig,
                 embedding: SparseEmbedding | None = None) -> None:
        if embedding is not None and embedding.dim != 1:
            raise ValueError(f"model 'lr': the injected embedding has dim {embedding.dim}; LR's id weights "
                             f"are a width-1 embedding (build it with build_embedding(layout, 1, backend))")
        emb = embedding or build_embedding(layout, 1, cfg.embedding_backend, init_std=cfg.embedding_init_std)
        super().__init__(layout, cfg, emb)
        self.dense_linear = nn.Linear(self.dense_dim, 1, bias=False) if self.dense_dim else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        logit = first_order(self.embedding(batch)) + self.bias
        if self.dense_linear is not None:
            logit = logit + self.dense_linear(self.dense(batch))
        return logit.squeeze(-1)
