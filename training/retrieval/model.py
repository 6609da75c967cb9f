"""The two-tower retrieval model and its in-batch sampled-softmax loss (logQ correction, mixed negatives).

`TwoTower` embeds every tower field with one `FusedEmbedding` (one lookup per batch; a behaviour sequence reads
the item-id table, so the user's history and the candidate share item embeddings). The user tower concatenates
its fields, its pooled sequences (mean, or attention with a learned query and an optional recency bias) and its
dense columns; the item tower its fields and dense columns; each runs an MLP and L2-normalises, so a score is a
cosine similarity and the FAISS index searches by inner product (with `item_bias`, one extra column carries an item
prior and the inner product stays exact). `feature_dropout` hides a field's code on a share of training rows.
The nn.Module knows nothing of Lightning, losses or files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.common.embedding import FusedEmbedding, masked_mean
from training.common.features import DENSE, SPARSE
from training.common.layers import MLP
from training.retrieval.config import NegativesConfig, TwoTowerConfig

if TYPE_CHECKING:  # the model runs without scipy (data.py's sparse matrices), e.g. on a bare GPU box
    from training.retrieval.layout import TowerLayout


class AttentionPooling(nn.Module):
    """Softmax attention of a learned query over a padded sequence: (B x L x D, lengths B) -> B x D."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        scores = self.key(seq) @ self.query / seq.shape[-1] ** 0.5
        pos = torch.arange(seq.shape[1], device=seq.device)[None, :]
        mask = pos < lengths[:, None]
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=1) * mask.to(seq.dtype)
        return (weights.unsqueeze(-1) * seq).sum(1)


class TwoTower(nn.Module):
    """User and item towers over one shared embedding; outputs are unit vectors of `cfg.output_dim`, scored by
    their inner product / `cfg.temperature` (a fixed temperature: learning it measured lower, docs/benchmarks.md)."""

    def __init__(self, towers: TowerLayout, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.towers = towers
        self.cfg = cfg
        d = cfg.embedding_dim
        self.embedding = FusedEmbedding(towers.layout, d, init_std=cfg.embedding_init_std)
        n_seq = len(towers.user_sequences)
        self.pools = nn.ModuleDict(
            {s.name: AttentionPooling(d) for s in towers.layout.sequences
             if s.name in towers.user_sequences} if cfg.history_pooling == "attention" else {})
        user_in = (len(towers.user_fields) + n_seq) * d + len(towers.user_dense)
        item_in = len(towers.item_fields) * d + len(towers.item_dense)
        self.user_mlp = MLP(user_in, cfg.tower_mlp, out_dim=cfg.output_dim, dropout=cfg.dropout)
        self.item_mlp = MLP(item_in, cfg.tower_mlp, out_dim=cfg.output_dim, dropout=cfg.dropout)
        self.log_temperature = nn.Parameter(torch.tensor(float(cfg.temperature)).log(),
                                            requires_grad=False)
        self.register_buffer("_user_fields", torch.tensor(towers.user_fields, dtype=torch.long), persistent=False)
        self.register_buffer("_item_fields", torch.tensor(towers.item_fields, dtype=torch.long), persistent=False)
        self.register_buffer("_user_dense", torch.tensor(towers.user_dense, dtype=torch.long), persistent=False)
        self.register_buffer("_item_dense", torch.tensor(towers.item_dense, dtype=torch.long), persistent=False)
        sparse = [f.name for f in towers.layout.sparse]
        unknown = sorted(set(cfg.feature_dropout) - set(sparse))
        if unknown:
            raise ValueError(f"retrieval.model.feature_dropout: {unknown} are not single-valued tower fields; "
                             f"choose from {sparse}")
        self._dropout_fields = [(sparse.index(n), p) for n, p in cfg.feature_dropout.items() if p > 0]

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def _user(self, batch: dict[str, Tensor], out: object) -> Tensor:
        pooled = out.pooled  # type: ignore[attr-defined]
        parts = [pooled.index_select(1, self._user_fields).flatten(1)]
        for name in self.towers.user_sequences:
            seq, lengths = out.sequences[name]  # type: ignore[attr-defined]
            parts.append(self.pools[name](seq, lengths) if name in self.pools else masked_mean(seq, lengths))
        if len(self.towers.user_dense):
            parts.append(batch[DENSE].index_select(1, self._user_dense))
        return F.normalize(self.user_mlp(torch.cat(parts, 1)), dim=-1)

    def _item(self, batch: dict[str, Tensor], out: object) -> Tensor:
        pooled = out.pooled  # type: ignore[attr-defined]
        parts = [pooled.index_select(1, self._item_fields).flatten(1)]
        if len(self.towers.item_dense):
            parts.append(batch[DENSE].index_select(1, self._item_dense))
        return F.normalize(self.item_mlp(torch.cat(parts, 1)), dim=-1)

    def _lookup(self, batch: dict[str, Tensor]) -> object:
        """The embedding lookup, with `cfg.feature_dropout` applied to the single-valued fields while training."""
        if self.training and self._dropout_fields:
            sparse = batch[SPARSE].clone()
            for col, p in self._dropout_fields:
                drop = torch.rand(len(sparse), device=sparse.device) < p
                sparse[:, col] = sparse[:, col].masked_fill(drop, 0)
            batch = {**batch, SPARSE: sparse}
        return self.embedding(batch)

    def user(self, batch: dict[str, Tensor]) -> Tensor:
        return self._user(batch, self._lookup(batch))

    def item(self, batch: dict[str, Tensor]) -> Tensor:
        return self._item(batch, self._lookup(batch))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Rows of (user, positive item) -> (user vectors B x O, item vectors B x O), one embedding lookup."""
        out = self._lookup(batch)
        return self._user(batch, out), self._item(batch, out)


EVAL_BATCH = 8192


@torch.no_grad()
def embed(fn: Any, batch: dict[str, Tensor], device: torch.device | str = "cpu",
          chunk: int = EVAL_BATCH) -> Tensor:
    """Apply a tower (`TwoTower.user` or `.item`) to a large batch in chunks; an N x O float32 CPU tensor."""
    n = next(iter(batch.values())).shape[0]
    out = [fn({k: v[i: i + chunk].to(device, non_blocking=True) for k, v in batch.items()}).float().cpu()
           for i in range(0, n, chunk)]
    return torch.cat(out) if out else torch.zeros(0)


def sampled_softmax_loss(user: Tensor, item: Tensor, item_codes: Tensor, log_q: Tensor | None, temperature: Tensor,
                         extra_items: Tensor | None = None, extra_codes: Tensor | None = None,
                         extra_log_q: Tensor | None = None, hard: int = 0) -> Tensor:
    """In-batch sampled softmax: row i's positive is item i; the other in-batch items (and any extra items) are
    negatives.

    Args:
        user, item: B x O unit vectors; item_codes: B corpus codes of the positives.
        log_q: B log sampling probabilities of the in-batch items (None: no logQ correction). In-batch negatives
            are sampled in proportion to their frequency among positives, so popular items are over-represented;
            subtracting log q from each logit (Yi et al., 2019) corrects the softmax toward the full-corpus one.
        temperature: scalar; logits are cosine / temperature.
        extra_items: N x O uniformly sampled corpus items (mixed negative sampling), with their codes and log q
            (uniform sampling: log q = log(1/I) for all; passing it keeps the correction consistent).
        hard: keep only the `hard` highest-scoring extra negatives per row (hard-negative mining; 0 = all).
    Same-item collisions (another row's positive or an extra item equal to row i's positive) are masked out.
    Returns the mean cross-entropy (in float32).
    """
    logits = user @ item.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    same = item_codes[:, None] == item_codes[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    if extra_items is not None and extra_codes is not None:
        extra = user @ extra_items.T / temperature
        if extra_log_q is not None:
            extra = extra - extra_log_q[None, :]
        extra = extra.masked_fill(item_codes[:, None] == extra_codes[None, :], float("-inf"))
        if 0 < hard < extra.shape[1]:
            extra = extra.topk(hard, dim=1).values
        logits = torch.cat([logits, extra], dim=1)
    target = torch.arange(len(user), device=user.device)
    return F.cross_entropy(logits.float(), target)


def mixed_negatives(n_items: int, cfg: NegativesConfig, generator: torch.Generator) -> Tensor | None:
    """Codes of the uniformly sampled extra negatives for one batch (None when not configured)."""
    if cfg.uniform == 0:
        return None
    return torch.randint(0, n_items, (cfg.uniform,), generator=generator)


def compiled_parts(model: TwoTower) -> list[nn.Module]:
    """What `retrieval.compile` compiles in place: the model's forward (the in-batch loss) and both towers' MLPs (the
    full-corpus loss and the evaluation call `user()` / `item()`, which run them outside the forward)."""
    return [model, model.user_mlp, model.item_mlp]
