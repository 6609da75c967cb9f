"""FinalMLP (Mao et al., 2023): two MLP streams, each behind its own feature gate, fused by multi-head
bilinear interaction into one logit."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from training.common.embedding import SparseEmbedding
from training.common.features import FeatureLayout
from training.common.layers import MLP, fields_with_pooled_sequences
from training.ranking.models.base import CTRModel, MLPModelConfig


class FinalMLPConfig(MLPModelConfig):
    """FinalMLP (Mao et al., 2023): two MLP streams over x = [flattened field embeddings, dense features], each
    behind its own feature gate (conditioned on the field embeddings), fused into the logit by a multi-head
    bilinear interaction of their outputs. `num_heads` must divide the last widths of `mlp1` and `mlp2`. The MLP
    options apply to both streams (the feature gates keep plain ReLU MLPs)."""

    mlp1: list[int] = Field(default_factory=lambda: [256, 128], min_length=1,
                            description="hidden layer widths of the first stream")
    mlp2: list[int] = Field(default_factory=lambda: [256, 128], min_length=1,
                            description="hidden layer widths of the second stream")
    feature_gating: bool = Field(True, description="gate each stream's input (x * 2 sigmoid(MLP(fields))), so the "
                                                   "two streams learn to look at different features")
    gate_mlp: list[int] = Field(default_factory=lambda: [64],
                                description="hidden widths of each stream's gate MLP")
    num_heads: int = Field(1, ge=1, description="heads of the bilinear fusion: more heads, fewer parameters "
                                                "((d1/h) x (d2/h) per head)")

    @model_validator(mode="after")
    def _heads_divide_streams(self) -> FinalMLPConfig:
        if self.mlp1[-1] % self.num_heads or self.mlp2[-1] % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide the last sizes of mlp1 "
                             f"({self.mlp1[-1]}) and mlp2 ({self.mlp2[-1]})")
        return self


class FeatureGate(nn.Module):
    """Stream-specific feature selection: x * 2 * sigmoid(MLP(context)), gate as wide as x, ~1 at init."""

    def __init__(self, context_dim: int, out_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.mlp = MLP(context_dim, hidden, out_dim=out_dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return x * (2.0 * torch.sigmoid(self.mlp(context)))


class BilinearFusion(nn.Module):
    """Multi-head bilinear fusion: y = w1.o1 + w2.o2 + sum_h o1_h^T W_h o2_h + b (o_i split into heads).

    Args:
        dim1, dim2: widths of the two stream outputs (each divisible by `heads`).
        heads: number of heads; each head's bilinear term costs (dim1/heads) x (dim2/heads) parameters.
    """

    def __init__(self, dim1: int, dim2: int, heads: int) -> None:
        super().__init__()
        if dim1 % heads or dim2 % heads:
            raise ValueError(f"BilinearFusion: heads ({heads}) must divide both stream widths "
                             f"({dim1}, {dim2})")
        self.heads = heads
        self.w1 = nn.Linear(dim1, 1)
        self.w2 = nn.Linear(dim2, 1, bias=False)
        self.w12 = nn.Parameter(torch.empty(heads, dim1 // heads, dim2 // heads))
        nn.init.xavier_normal_(self.w12)

    def forward(self, o1: Tensor, o2: Tensor) -> Tensor:
        b = o1.shape[0]
        h1, h2 = o1.reshape(b, self.heads, -1), o2.reshape(b, self.heads, -1)
        bilinear = torch.einsum("bhi,hij,bhj->b", h1, self.w12, h2).unsqueeze(-1)
        return self.w1(o1) + self.w2(o2) + bilinear


class FinalMLP(CTRModel):
    """x = [flattened fields, dense]; o_i = MLP_i(gate_i(x)) with gate_i conditioned on the field embeddings;
    logit = BilinearFusion(o1, o2)."""

    config_class = FinalMLPConfig

    def __init__(self, layout: FeatureLayout, cfg: FinalMLPConfig,
                 embedding: SparseEmbedding | None = None) -> None:
        super().__init__(layout, cfg, embedding)
        field_dim = self.num_fields * cfg.embedding_dim
        in_dim = field_dim + self.dense_dim
        if cfg.feature_gating:
            self.gate1: FeatureGate | None = FeatureGate(field_dim, in_dim, cfg.gate_mlp)
            self.gate2: FeatureGate | None = FeatureGate(field_dim, in_dim, cfg.gate_mlp)
        else:
            self.gate1 = self.gate2 = None
        self.mlp1 = MLP(in_dim, cfg.mlp1, **cfg.mlp_options())
        self.mlp2 = MLP(in_dim, cfg.mlp2, **cfg.mlp_options())
        self.fusion = BilinearFusion(self.mlp1.out_dim, self.mlp2.out_dim, cfg.num_heads)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        fields = fields_with_pooled_sequences(self.embedding(batch)).flatten(1)
        x = torch.cat([fields, self.dense(batch)], dim=1)
        x1 = self.gate1(x, fields) if self.gate1 is not None else x
        x2 = self.gate2(x, fields) if self.gate2 is not None else x
        return self.fusion(self.mlp1(x1), self.mlp2(x2)).squeeze(-1)
