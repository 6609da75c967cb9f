"""Wide & Deep (Cheng et al., 2016): a wide linear (LR) term plus a deep MLP over the embeddings."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from training.common.embedding import SparseEmbedding
from training.common.features import FeatureLayout
from training.common.layers import MLP, LinearLogit, backend_of, fields_with_pooled_sequences
from training.ranking.models.base import CTRModel, MLPModelConfig


class WideDeepConfig(MLPModelConfig):
    """Wide & Deep (Cheng et al., 2016): a wide linear (LR) term over ids and dense features, with its own
    tables, plus a deep MLP over [flattened field embeddings, dense features]."""

    mlp: list[int] = Field(default_factory=lambda: [256, 128],
                           description="hidden layer widths of the deep part; the output layer (1) is added")


class WideDeep(CTRModel):
    """logit = wide(batch) + deep([flattened fields, dense]); wide = LR over ids and dense (own tables)."""

    config_class = WideDeepConfig

    def __init__(self, layout: FeatureLayout, cfg: WideDeepConfig,
                 embedding: SparseEmbedding | None = None) -> None:
        super().__init__(layout, cfg, embedding)
        self.wide = LinearLogit(layout, backend_of(self.embedding), init_std=cfg.embedding_init_std)
        in_dim = self.num_fields * cfg.embedding_dim + self.dense_dim
        self.deep = MLP(in_dim, cfg.mlp, out_dim=1, **cfg.mlp_options())

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        fields = fields_with_pooled_sequences(self.embedding(batch))
        deep = self.deep(torch.cat([fields.flatten(1), self.dense(batch)], dim=1))
        return (self.wide(batch) + deep).squeeze(-1)
