"""Building blocks shared by the CTR models: MLP, cross network v2, FM and dot interactions, pooling, LR term.

Shapes follow the TorchRec docstring convention: B = batch, F = embedded fields, D = embedding dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from training.common.embedding import (
    Backend,
    EmbeddingOutput,
    SparseEmbedding,
    TorchRecEmbedding,
    build_embedding,
    masked_mean,
)
from training.common.features import DENSE, FeatureLayout


class MLP(nn.Module):
    """Linear -> (BatchNorm) -> activation -> dropout, per hidden size; optional output layer."""

    def __init__(self, in_dim: int, hidden: Sequence[int], *, out_dim: int | None = None, dropout: float = 0.0,
                 batch_norm: bool = False, activation: Literal["relu", "gelu", "silu"] = "relu") -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(act())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def first_linear(self) -> nn.Linear:
        """The layer applied to the input itself."""
        first = self.net[0]
        assert isinstance(first, nn.Linear)
        return first

    def forward(self, x: Tensor, first: Tensor | None = None) -> Tensor:
        """`first`: `first_linear()(x)` when the caller has it already (serving adds it up from an item part and a
        request part computed once each); the rest of the network runs on it."""
        return self.net(x) if first is None else self.net[1:](first)


class CrossNetV2(nn.Module):
    """DCN-V2 cross layers: x_{l+1} = x0 * (W x_l + b) + x_l; W full rank or U V^T (low rank)."""

    def __init__(self, dim: int, layers: int, low_rank: int | None = None) -> None:
        super().__init__()
        if low_rank:
            self.u = nn.ModuleList(nn.Linear(dim, low_rank, bias=False) for _ in range(layers))
            self.v = nn.ModuleList(nn.Linear(low_rank, dim) for _ in range(layers))
            self.w = None
        else:
            self.w = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.layers = layers

    def first_linear(self) -> nn.Linear:
        """The layer applied to x0 itself: W of the first cross layer (U when low rank)."""
        return self.w[0] if self.w is not None else self.u[0]

    def forward(self, x0: Tensor, first: Tensor | None = None) -> Tensor:
        """`first`: `first_linear()(x0)` when the caller has it already (see `MLP.forward`)."""
        x = x0
        for i in range(self.layers):
            pre = first if i == 0 and first is not None else (self.w[i] if self.w is not None else self.u[i])(x)
            xw = pre if self.w is not None else self.v[i](pre)
            x = x0 * xw + x
        return x


def fm_interaction(emb: Tensor) -> Tensor:
    """Factorization-machine pairwise term: B x F x D -> B x 1 (0.5 * ((sum)^2 - sum of squares))."""
    s = emb.sum(dim=1)
    return 0.5 * (s * s - (emb * emb).sum(dim=1)).sum(dim=1, keepdim=True)


def dot_interaction(emb: Tensor) -> Tensor:
    """DLRM pairwise dot products of the F vectors, upper triangle: B x F x D -> B x F(F-1)/2."""
    z = torch.bmm(emb, emb.transpose(1, 2))
    f = emb.shape[1]
    iu = torch.triu_indices(f, f, offset=1, device=emb.device)
    return z[:, iu[0], iu[1]]


def fields_with_pooled_sequences(out: EmbeddingOutput) -> Tensor:
    """B x F' x D: the pooled fields plus each behaviour sequence mean-pooled into one more field."""
    if not out.sequences:
        return out.pooled
    pooled = [masked_mean(e, lens).unsqueeze(1) for e, lens in out.sequences.values()]
    return torch.cat([out.pooled, *pooled], dim=1)


# ------------------------------------------------------------------------------ first-order (LR) term


def backend_of(embedding: SparseEmbedding) -> Literal["fused", "torchrec"]:
    """The backend an embedding layer uses, so a model's extra tables (e.g. its LR term) match it."""
    return "torchrec" if isinstance(embedding, TorchRecEmbedding) else "fused"


def first_order(out: EmbeddingOutput) -> Tensor:
    """B x F' x 1 width-1 embeddings (fields, bags, mean-pooled sequences) summed over fields: B x 1."""
    return fields_with_pooled_sequences(out).sum(dim=1)


class LinearLogit(nn.Module):
    """The logistic-regression term: one weight per id (its own width-1 embedding) summed over the fields,
    plus `Linear(dense)` and a bias: batch -> B x 1.

    Args:
        layout: the model-input layout.
        backend: embedding backend of the width-1 tables ("fused" or "torchrec"; "auto" = fused).
        init_std: standard deviation of the id weights' normal init.
    """

    def __init__(self, layout: FeatureLayout, backend: Backend = "auto", *, init_std: float = 0.01) -> None:
        super().__init__()
        self.embedding = build_embedding(layout, 1, backend, init_std=init_std)
        self.dense = nn.Linear(layout.dense_dim, 1, bias=False) if layout.dense_dim else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        out = first_order(self.embedding(batch)) + self.bias
        if self.dense is not None:
            out = out + self.dense(batch[DENSE])
        return out
