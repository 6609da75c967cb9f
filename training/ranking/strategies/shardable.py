"""TorchRec model surgery for sharded training: which CTR models can shard, and the embedding layer that can.

`DistributedModelParallel` shards an `EmbeddingBagCollection` across ranks, so a rank no longer holds a table's full
weight. A model can train sharded only if it reads embeddings through that collection alone: DCNv2 and FinalMLP
(`SHARDABLE_MODELS`). DIN attends over unpooled sequences, DLRM's TorchRec arch holds the collection a second
time, and the models with an LR term have width-1 tables, while FBGEMM's kernels need widths divisible by 4.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from training.common.config import OptimConfig
from training.common.embedding import EmbeddingOutput, SparseEmbedding, TorchRecEmbedding, table_name
from training.common.features import FeatureLayout, seq_key, seq_len_key
from training.ranking.models import CTRModel, build_model, model_config

SHARDABLE_MODELS = frozenset({"dcnv2", "finalmlp"})
FBGEMM_DIM_MULTIPLE = 4


class ShardableTorchRecEmbedding(TorchRecEmbedding):
    """A `TorchRecEmbedding` that still works once `DistributedModelParallel` has sharded its tables away.

    Behaviour sequences are looked up INSIDE the EmbeddingBagCollection: each sequence is one more (mean-pooled)
    feature of its source table, so no rank needs a table's full weight. Every table pools by mean (equal to the
    sum for the single-valued fields). `sequences` are returned already pooled: (B x 1 x D, lengths clamped to 1),
    which `fields_with_pooled_sequences` turns into exactly the mean the plain layer gives. The state dict keys are
    those of `TorchRecEmbedding`, so weights move between the two unchanged. Weights init uniformly with std
    `init_std` (FBGEMM's sharded kernels init uniformly between the configs' weight_init_min/max).
    """

    def __init__(self, layout: FeatureLayout, dim: int, *, init_std: float = 0.01,
                 device: torch.device | str | None = None) -> None:
        SparseEmbedding.__init__(self)
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        self.layout = layout
        self.dim = dim
        bound = init_std * math.sqrt(3.0)
        sequences_of: dict[str, list[str]] = {}
        for s in layout.sequences:
            sequences_of.setdefault(s.source, []).append(s.name)
        tables = [
            EmbeddingBagConfig(
                name=table_name(f.name),
                embedding_dim=dim,
                num_embeddings=f.cardinality,
                feature_names=[f.name, *sequences_of.get(f.name, [])],
                pooling=PoolingType.MEAN,
                weight_init_min=-bound,
                weight_init_max=bound,
                init_fn=lambda w: nn.init.uniform_(w, -bound, bound),
            )
            for f in layout.tables
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device) if device else None)
        self.keys = [f.name for f in layout.tables]
        self.sequence_keys = [s.name for s in layout.sequences]

    def table_weight(self, name: str) -> Tensor:
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        if not isinstance(self.ebc, EmbeddingBagCollection):
            raise RuntimeError(f"table '{name}' is sharded across ranks: its full weight is not on this rank; "
                               f"read weights from the gathered state dict instead")
        return super().table_weight(name)

    def to_kjt(self, batch: dict[str, Tensor]) -> object:
        """Sparse fields, bags, then the sequences (their first `seq_len` ids) as one KeyedJaggedTensor."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        kjt = super().to_kjt(batch)
        if not self.sequence_keys:
            return kjt
        values, lengths = [], []
        for s in self.layout.sequences:
            ids, lens = batch[seq_key(s.name)], batch[seq_len_key(s.name)]
            mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lens[:, None]
            values.append(ids[mask])
            lengths.append(lens)
        seqs = KeyedJaggedTensor.from_lengths_sync(keys=self.sequence_keys, values=torch.cat(values),
                                                   lengths=torch.cat(lengths))
        return KeyedJaggedTensor.concat([kjt, seqs])  # type: ignore[list-item]

    def forward(self, batch: dict[str, Tensor]) -> EmbeddingOutput:
        pooled = self.ebc(self.to_kjt(batch)).to_dict()
        fields = torch.stack([pooled[k] for k in self.keys], dim=1)
        seqs: dict[str, tuple[Tensor, Tensor]] = {}
        for s in self.layout.sequences:
            lens = batch[seq_len_key(s.name)]
            seqs[s.name] = (pooled[s.name].unsqueeze(1), lens.clamp(max=1))
        return EmbeddingOutput(fields, seqs)


def shardable_embeddings(model: nn.Module) -> list[ShardableTorchRecEmbedding]:
    return [m for m in model.modules() if isinstance(m, ShardableTorchRecEmbedding)]


def build_shardable_model(name: str, layout: FeatureLayout, params: Mapping[str, Any] | None = None, *,
                          device: torch.device | str | None = None) -> CTRModel:
    """`build_model` with `embedding_backend: torchrec`, every TorchRec embedding layer (the model's own and e.g.
    an LR term's) swapped for a `ShardableTorchRecEmbedding`; `device="meta"` leaves the tables for DMP to place."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    if layout.sequences and name not in SHARDABLE_MODELS:
        raise ValueError(f"model '{name}' with behaviour sequences ({', '.join(s.name for s in layout.sequences)}) "
                         f"cannot train sharded: it reads unpooled sequences or raw table weights, which live on "
                         f"other ranks once tables are sharded. Sharded mode supports: "
                         f"{', '.join(sorted(SHARDABLE_MODELS))}; or drop train.sharded")
    cfg = model_config(name, {**dict(params or {}), "embedding_backend": "torchrec"})
    model = build_model(name, layout, cfg)
    for path, module in list(model.named_modules()):
        if type(module) is TorchRecEmbedding:
            parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
            setattr(parent, path.rpartition(".")[2], ShardableTorchRecEmbedding(
                module.layout, module.dim, init_std=cfg.embedding_init_std, device=device))
    narrow = sorted({e.dim for e in shardable_embeddings(model) if e.dim % FBGEMM_DIM_MULTIPLE})
    if narrow:
        raise ValueError(f"model '{name}' has embedding tables of width {narrow} (an LR term's id weights are "
                         f"width 1); FBGEMM's sharded tables need widths divisible by {FBGEMM_DIM_MULTIPLE}: set "
                         f"model_params.{name}.embedding_dim to a multiple of {FBGEMM_DIM_MULTIPLE}, or use one of "
                         f"{', '.join(sorted(SHARDABLE_MODELS))}")
    owned = {id(e.ebc) for e in shardable_embeddings(model)}
    stray = [p for p, m in model.named_modules(remove_duplicate=False)
             if isinstance(m, EmbeddingBagCollection) and id(m) not in owned]
    if stray:
        raise ValueError(f"model '{name}' holds an EmbeddingBagCollection outside its embedding layers "
                         f"({', '.join(stray)}); DistributedModelParallel cannot shard a table held twice. "
                         f"Sharded mode supports: {', '.join(sorted(SHARDABLE_MODELS))}; or drop train.sharded")
    return model


def fused_embedding_optimizer(o: OptimConfig, device_type: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer FBGEMM fuses into the sharded tables' backward (its CPU kernels know adagrad and sgd only)."""
    if o.embedding == "adagrad":
        return torch.optim.Adagrad, {"lr": o.embedding_lr}
    if device_type == "cuda":
        return torch.optim.Adam, {"lr": o.embedding_lr}
    raise ValueError(f"train.optim.embedding: '{o.embedding}' has no fused FBGEMM kernel on CPU "
                     f"(fbgemm-gpu-cpu updates sharded tables with adagrad, rowwise adagrad or sgd); set "
                     f"train.optim.embedding: adagrad (with a larger embedding_lr, e.g. 0.05) to train sharded on CPU")
