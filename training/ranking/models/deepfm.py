"""DeepFM (Guo et al., 2017): LR term + FM interactions + an MLP, the FM and MLP sharing one embedding."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from training.common.embedding import SparseEmbedding
from training.common.features import FeatureLayout
from training.common.layers import MLP, LinearLogit, backend_of, fields_with_pooled_sequences, fm_interaction
from training.ranking.models.base import CTRModel, MLPModelConfig


class DeepFMConfig(MLPModelConfig):
    """DeepFM (Guo et al., 2017): LR term + FM pairwise interactions + an MLP over [flattened field embeddings,
    dense features], the FM and the MLP sharing one embedding."""

    mlp: list[int] = Field(default_factory=lambda: [256, 128],
                           description="hidden layer widths of the deep part; the output layer (1) is added")


class DeepFM(CTRModel):
    """logit = LR(batch) + FM(fields) + MLP([flattened fields, dense]); FM and MLP share fields."""

    config_class = DeepFMConfig

    def __init__(self, layout: FeatureLayout, cfg: DeepFMConfig,
                 embedding: SparseEmbedding | None = None) -> None:
        super().__init__(layout, cfg, embedding)
        self.linear = LinearLogit(layout, backend_of(self.embedding), init_std=cfg.embedding_init_std)
        in_dim = self.num_fields * cfg.embedding_dim + self.dense_dim
        self.mlp = MLP(in_dim, cfg.mlp, out_dim=1, **cfg.mlp_options())

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        fields = fields_with_pooled_sequences(self.embedding(batch))
        deep = self.mlp(torch.cat([fields.flatten(1), self.dense(batch)], dim=1))
        return (self.linear(batch) + fm_interaction(fields) + deep).squeeze(-1)
