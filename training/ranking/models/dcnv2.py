"""DCN-V2 (Wang et al., 2021): a cross network and a deep network, stacked or in parallel, optional low rank."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from training.common.embedding import SparseEmbedding
from training.common.features import FeatureLayout
from training.common.layers import MLP, CrossNetV2, fields_with_pooled_sequences
from training.ranking.models.base import CTRModel, MLPModelConfig


class DCNv2Config(MLPModelConfig):
    """DCN-V2 (Wang et al., 2021), the default model: a cross network (`x_(l+1) = x0 * (W x_l + b) + x_l`, explicit
    feature crosses of growing degree) and a deep MLP over x0 = [flattened field embeddings, dense features],
    stacked or in parallel, then a linear head. The MLP options apply to the deep MLP."""

    structure: Literal["stacked", "parallel"] = Field(
        "parallel", description="stacked: MLP(Cross(x0)); parallel: [Cross(x0), MLP(x0)] concatenated")
    cross_layers: int = Field(3, ge=1, description="cross layers: the highest crossing degree is this + 1")
    low_rank: int | None = Field(None, gt=0, description="factor each cross matrix W as U V^T of this rank (fewer "
                                                         "parameters, faster on wide inputs); null = full rank")
    mlp: list[int] = Field(default_factory=lambda: [256, 128], description="hidden layer widths of the deep part")


class DCNv2(CTRModel):
    """x0 = [flattened field embeddings, dense]; stacked: MLP(Cross(x0)); parallel: [Cross(x0), MLP(x0)]."""

    config_class = DCNv2Config

    def __init__(self, layout: FeatureLayout, cfg: DCNv2Config, embedding: SparseEmbedding | None = None) -> None:
        super().__init__(layout, cfg, embedding)
        in_dim = self.num_fields * cfg.embedding_dim + self.dense_dim
        self.cross = CrossNetV2(in_dim, cfg.cross_layers, cfg.low_rank)
        self.mlp = MLP(in_dim, cfg.mlp, **cfg.mlp_options())
        head_in = self.mlp.out_dim if cfg.structure == "stacked" else in_dim + self.mlp.out_dim
        self.head = nn.Linear(head_in, 1)

    splittable = True

    def flat_input(self, batch: dict[str, Tensor]) -> Tensor:
        """x0: the flattened field embeddings (sequences mean-pooled) and the dense features."""
        fields = fields_with_pooled_sequences(self.embedding(batch))
        return torch.cat([fields.flatten(1), self.dense(batch)], dim=1)

    def first_linears(self) -> list[nn.Linear]:
        """The layers applied to x0 itself: the first cross layer's, and the MLP's first when in parallel."""
        return [self.cross.first_linear()] + ([self.mlp.first_linear()] if self.cfg.structure == "parallel" else [])

    def forward_from(self, x0: Tensor, first: list[Tensor]) -> Tensor:
        """The logits from x0 and `first` (each of `first_linears()` applied to x0)."""
        if self.cfg.structure == "stacked":
            h = self.mlp(self.cross(x0, first[0]))
        else:
            h = torch.cat([self.cross(x0, first[0]), self.mlp(x0, first[1])], dim=1)
        return self.head(h).squeeze(-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x0 = self.flat_input(batch)
        return self.forward_from(x0, [layer(x0) for layer in self.first_linears()])
