"""DLRM (Naumov et al., 2019): bottom MLP on dense, pairwise dot interactions with the embeddings, top MLP.

Two implementations of the same computation, chosen by the embedding backend:

- ours (fused backend, or any backend when the layout has no dense features): bottom MLP dense -> D, dot
  products between the bottom output and every field (sequences mean-pooled into one field each), the upper
  triangle concatenated with the bottom output, top MLP -> logit. Without dense features the bottom MLP is
  skipped and the top MLP reads [flattened fields, dot products of the fields].
- TorchRec's own `torchrec.models.dlrm.DLRM` over the `EmbeddingBagCollection` of a `TorchRecEmbedding` (the
  module TorchRec's planner shards), fed `dense_features` and the batch's `KeyedJaggedTensor`. TorchRec's DLRM
  requires dense features, hence the fallback above. Behaviour sequences are included: each is mean-pooled
  from its source table and appended to `sparse_arch`'s B x F x D output, with TorchRec's `InteractionArch`
  and `OverArch` sized for the extra fields (without sequences `DLRM.forward` runs unchanged). TorchRec's
  arches have no dropout or batch norm and use ReLU, so those options (other than `activation: relu`) are
  rejected on that path.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from training.common.embedding import SparseEmbedding, TorchRecEmbedding, masked_mean
from training.common.features import FeatureLayout, seq_key, seq_len_key
from training.common.layers import MLP, dot_interaction, fields_with_pooled_sequences
from training.ranking.models.base import CTRModel, MLPModelConfig


class DLRMConfig(MLPModelConfig):
    """DLRM (Naumov et al., 2019): a bottom MLP maps the dense features to one embedding-wide vector, the pairwise
    dot products of it and every field embedding are concatenated with it, and a top MLP gives the logit. With
    `embedding_backend: torchrec` and dense features it runs TorchRec's own DLRM (the module TorchRec's planner
    shards), whose arches are ReLU only, without dropout or batch norm: `dropout`, `batch_norm` and `activation`
    must then keep their defaults. The MLP options apply to both MLPs."""

    bottom_mlp: list[int] = Field(default_factory=lambda: [64],
                                  description="hidden widths of the bottom (dense) MLP; a last layer to "
                                              "`embedding_dim` is added. Unused without dense features")
    top_mlp: list[int] = Field(default_factory=lambda: [256, 128], min_length=1,
                               description="hidden widths of the top MLP; the output layer (1) is added")


class DLRM(CTRModel):
    """dense -> bottom MLP (B x D); fields B x F' x D; z = [bottom, triu(dot([bottom; fields]))]; top(z)."""

    config_class = DLRMConfig

    def __init__(self, layout: FeatureLayout, cfg: DLRMConfig,
                 embedding: SparseEmbedding | None = None) -> None:
        super().__init__(layout, cfg, embedding)
        d = cfg.embedding_dim
        self.uses_torchrec_dlrm = isinstance(self.embedding, TorchRecEmbedding) and self.dense_dim > 0
        if self.uses_torchrec_dlrm:
            self._build_torchrec(cfg)
            return
        f = self.num_fields
        if self.dense_dim:
            self.bottom: MLP | None = MLP(self.dense_dim, [*cfg.bottom_mlp, d], **cfg.mlp_options())
            top_in = d + (f + 1) * f // 2
        else:
            self.bottom = None
            top_in = f * d + f * (f - 1) // 2
        self.top = MLP(top_in, cfg.top_mlp, out_dim=1, **cfg.mlp_options())

    @property
    def keeps_torchrec_embedding(self) -> bool:
        """TorchRec's DLRM reads the EmbeddingBagCollection itself (training.common.embedding.fuse_embeddings)."""
        return self.uses_torchrec_dlrm

    def _build_torchrec(self, cfg: DLRMConfig) -> None:
        from torchrec.models.dlrm import DLRM as TorchRecDLRM
        from torchrec.models.dlrm import InteractionArch, OverArch, choose

        if cfg.dropout or cfg.batch_norm or cfg.activation != "relu":
            raise ValueError("model 'dlrm' config: dropout, batch_norm and activation are not available with "
                             "embedding_backend: torchrec (TorchRec's DLRM arches are ReLU only, without dropout "
                             "or batch norm); set them to 0/false/relu or use embedding_backend: fused")
        assert isinstance(self.embedding, TorchRecEmbedding)
        over = [*cfg.top_mlp, 1]
        self.dlrm = TorchRecDLRM(embedding_bag_collection=self.embedding.ebc,
                                 dense_in_features=self.dense_dim,
                                 dense_arch_layer_sizes=[*cfg.bottom_mlp, cfg.embedding_dim],
                                 over_arch_layer_sizes=over)
        if self.layout.sequences:
            f = self.num_fields
            self.dlrm.inter_arch = InteractionArch(num_sparse_features=f)
            self.dlrm.over_arch = OverArch(in_features=cfg.embedding_dim + choose(f, 2) + f, layer_sizes=over)

    def _forward_torchrec(self, batch: dict[str, Tensor]) -> Tensor:
        assert isinstance(self.embedding, TorchRecEmbedding)
        dense, kjt = self.dense(batch), self.embedding.to_kjt(batch)
        if not self.layout.sequences:
            return self.dlrm(dense_features=dense, sparse_features=kjt).squeeze(-1)
        emb = self.embedding
        pooled = [
            masked_mean(nn.functional.embedding(batch[seq_key(s.name)], emb.table_weight(s.source)),
                         batch[seq_len_key(s.name)]).unsqueeze(1)
            for s in self.layout.sequences
        ]
        sparse = torch.cat([self.dlrm.sparse_arch(kjt), *pooled], dim=1)
        z = self.dlrm.inter_arch(dense_features=self.dlrm.dense_arch(dense), sparse_features=sparse)
        return self.dlrm.over_arch(z).squeeze(-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        if self.uses_torchrec_dlrm:
            return self._forward_torchrec(batch)
        fields = fields_with_pooled_sequences(self.embedding(batch))
        if self.bottom is not None:
            bottom = self.bottom(self.dense(batch))
            z = torch.cat([bottom, dot_interaction(torch.cat([bottom.unsqueeze(1), fields], dim=1))], dim=1)
        else:
            z = torch.cat([fields.flatten(1), dot_interaction(fields)], dim=1)
        return self.top(z).squeeze(-1)
