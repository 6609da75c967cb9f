"""DIN (Zhou et al., 2018): the candidate item attends over the user's behaviour sequence (activation unit).

For each behaviour sequence whose source is the item field, an activation unit scores every history item
against the candidate (`MLP([q, k, q - k, q * k]) -> weight`, padded positions masked). As in the paper the
weights are not normalised (`attention_softmax: true` switches to a masked softmax); the weighted sum of the
history replaces the sequence's mean pooling. Other sequences stay mean-pooled. An MLP over
[flattened fields, attended / pooled sequences, dense] gives the logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from training.common.embedding import SparseEmbedding, masked_mean
from training.common.features import FeatureLayout
from training.common.layers import MLP
from training.ranking.models.base import CTRModel, MLPModelConfig


class DINConfig(MLPModelConfig):
    """DIN (Zhou et al., 2018): the candidate item attends over the user's behaviour sequence, so the history
    items that resemble the candidate count most. Needs `features.item_key` among the categorical features and a
    `features.sequence` whose source is that item field; other sequences are mean-pooled. An MLP over
    [flattened fields, attended and pooled sequences, dense features] gives the logit. The MLP options apply to that
    final MLP (the activation unit has `attention_activation`)."""

    attention_mlp: list[int] = Field(default_factory=lambda: [64, 32],
                                     description="hidden widths of the activation unit that scores each history "
                                                 "item against the candidate (from [q, k, q - k, q * k])")
    attention_activation: Literal["relu", "gelu", "silu"] = Field(
        "relu", description="activation of the activation unit's hidden layers")
    attention_softmax: bool = Field(False, description="normalise the attention weights with a softmax over the "
                                                       "history; false keeps them unnormalised, as in the paper, so "
                                                       "the pooled vector also carries how much history matches")
    mlp: list[int] = Field(default_factory=lambda: [256, 128],
                           description="hidden layer widths of the final MLP; the output layer (1) is added")


class ActivationUnit(nn.Module):
    """DIN local activation unit: (q: B x D, keys: B x L x D, lengths: B) -> B x D weighted sum of the keys.

    Args:
        dim: embedding dim D.
        hidden: hidden sizes of the scoring MLP over [q, k, q - k, q * k] (4D wide).
        activation: the scoring MLP's activation.
        softmax: normalise the weights with a softmax over the valid positions (the paper does not).
    """

    def __init__(self, dim: int, hidden: Sequence[int], activation: Literal["relu", "gelu", "silu"] = "relu",
                 softmax: bool = False) -> None:
        super().__init__()
        self.score = MLP(4 * dim, hidden, out_dim=1, activation=activation)
        self.softmax = softmax

    def forward(self, q: Tensor, keys: Tensor, lengths: Tensor) -> Tensor:
        qe = q.unsqueeze(1).expand_as(keys)
        w = self.score(torch.cat([qe, keys, qe - keys, qe * keys], dim=-1)).squeeze(-1)  # B x L
        mask = torch.arange(keys.shape[1], device=keys.device)[None, :] < lengths[:, None]
        if self.softmax:
            w = w.masked_fill(~mask, torch.finfo(w.dtype).min).softmax(dim=-1)
        w = w * mask.to(w.dtype)  # padded positions (and empty histories) contribute nothing
        return (w.unsqueeze(-1) * keys).sum(dim=1)


class DIN(CTRModel):
    """Candidate = the item field's embedding; each item-sourced sequence is attention-pooled against it."""

    config_class = DINConfig

    def __init__(self, layout: FeatureLayout, cfg: DINConfig,
                 embedding: SparseEmbedding | None = None) -> None:
        if layout.item_field is None:
            raise ValueError("model 'din' needs the item field as a categorical feature (features.item_key "
                             "must name one of features.categorical); this layout has no item field")
        if not layout.sequences:
            raise ValueError("model 'din' needs a behaviour sequence: add one under features.sequence with "
                             f"source: {layout.item_field} (this layout has none)")
        attended = [s.name for s in layout.sequences if s.source == layout.item_field]
        if not attended:
            have = ", ".join(f"{s.name} (source {s.source})" for s in layout.sequences)
            raise ValueError(f"model 'din': no behaviour sequence has the item field '{layout.item_field}' "
                             f"as its source (have: {have}); add one under features.sequence with "
                             f"source: {layout.item_field}")
        super().__init__(layout, cfg, embedding)
        self.item_index = layout.index_of(layout.item_field)
        self.attended = tuple(attended)
        self.attention = nn.ModuleList(
            ActivationUnit(cfg.embedding_dim, cfg.attention_mlp, cfg.attention_activation,
                           cfg.attention_softmax)
            for _ in attended
        )
        in_dim = self.num_fields * cfg.embedding_dim + self.dense_dim
        self.mlp = MLP(in_dim, cfg.mlp, out_dim=1, dropout=cfg.dropout, batch_norm=cfg.batch_norm,
                       activation=cfg.activation)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.embedding(batch)
        q = out.pooled[:, self.item_index]
        parts = [out.pooled.flatten(1)]
        for s in self.layout.sequences:
            keys, lengths = out.sequences[s.name]
            if s.name in self.attended:
                parts.append(self.attention[self.attended.index(s.name)](q, keys, lengths))
            else:
                parts.append(masked_mean(keys, lengths))
        parts.append(self.dense(batch))
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)
