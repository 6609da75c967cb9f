"""Factorization machine (Rendle, 2010): the LR term plus pairwise interactions of the field embeddings."""

from __future__ import annotations

from torch import Tensor

from training.common.embedding import SparseEmbedding
from training.common.features import FeatureLayout
from training.common.layers import LinearLogit, backend_of, fields_with_pooled_sequences, fm_interaction
from training.ranking.models.base import CTRModel, ModelConfig


class FMConfig(ModelConfig):
    """Factorization machine (Rendle, 2010): the LR term plus the pairwise dot products of all field embeddings,
    every second-order cross at linear cost. Dense features enter the LR term only."""


class FM(CTRModel):
    """logit = LR(batch) + FM(fields), fields = B x F' x D (sparse fields, bags, mean-pooled sequences).

    Dense features enter the LR term only (they have no embedding to interact with).
    """

    config_class = FMConfig

    def __init__(self, layout: FeatureLayout, cfg: FMConfig,
                 embedding: SparseEmbedding | None = None) -> None:
        super().__init__(layout, cfg, embedding)
        self.linear = LinearLogit(layout, backend_of(self.embedding), init_std=cfg.embedding_init_std)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        fields = fields_with_pooled_sequences(self.embedding(batch))
        return (self.linear(batch) + fm_interaction(fields)).squeeze(-1)
