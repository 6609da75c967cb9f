"""The sparse-feature layer: two interchangeable embedding backends behind one interface.

- `FusedEmbedding` (plain PyTorch): every table lives in ONE weight matrix at a row offset; sparse fields, bags
  and sequences are looked up in a single gather. Runs anywhere torch runs (CPU, CUDA without FBGEMM).
- `TorchRecEmbedding`: TorchRec's `EmbeddingBagCollection` over a `KeyedJaggedTensor` (the form TorchRec's
  planner and DistributedModelParallel shard); sequences read the source table's weight.

Both return `EmbeddingOutput(pooled: B x F x D, sequences: {name: (B x L x D, lengths B)})` where F is the
number of sparse fields plus bags (bags are mean-pooled; an empty bag gives zeros). For identical weights they
give identical outputs (`copy_weights` moves weights between them; a test proves the equality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from training.common.features import SPARSE, FeatureLayout, bag_key, bag_len_key, seq_key, seq_len_key

Backend = Literal["auto", "fused", "torchrec"]


@dataclass
class EmbeddingOutput:
    pooled: Tensor  # B x F x D
    sequences: dict[str, tuple[Tensor, Tensor]]  # name -> (B x L x D, B lengths)


def masked_mean(emb: Tensor, lengths: Tensor) -> Tensor:
    """B x L x D, B -> B x D mean over the first `lengths` positions (0 where empty)."""
    mask = torch.arange(emb.shape[1], device=emb.device)[None, :] < lengths[:, None]
    summed = (emb * mask.unsqueeze(-1).to(emb.dtype)).sum(1)
    return summed / lengths.clamp(min=1).unsqueeze(-1).to(emb.dtype)


class SparseEmbedding(nn.Module):
    """Interface: `forward(batch) -> EmbeddingOutput`; `table_weight(name)` for weight inspection/copy."""

    layout: FeatureLayout
    dim: int

    def table_weight(self, name: str) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def embedding_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


class FusedEmbedding(SparseEmbedding):
    """All tables in one `nn.Embedding`; one lookup per batch for sparse fields, bags and sequences."""

    def __init__(self, layout: FeatureLayout, dim: int, *, sparse_grad: bool = False, init_std: float = 0.01) -> None:
        super().__init__()
        self.layout = layout
        self.dim = dim
        cards = [f.cardinality for f in layout.tables]
        offsets = torch.zeros(len(cards), dtype=torch.int64)
        if cards:
            offsets[1:] = torch.cumsum(torch.tensor(cards[:-1], dtype=torch.int64), 0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.weight = nn.Embedding(max(sum(cards), 1), dim, sparse=sparse_grad)
        nn.init.normal_(self.weight.weight, std=init_std)
        n_sparse = len(layout.sparse)
        self._sparse_off = slice(0, n_sparse)
        self._bag_index = {f.name: n_sparse + i for i, f in enumerate(layout.bags)}
        self._seq_table = {s.name: layout.index_of(s.source) for s in layout.sequences}

    def table_weight(self, name: str) -> Tensor:
        i = self.layout.index_of(name)
        start = int(self.offsets[i])
        return self.weight.weight[start: start + self.layout.tables[i].cardinality]

    def forward(self, batch: dict[str, Tensor]) -> EmbeddingOutput:
        sparse = batch[SPARSE]
        b = sparse.shape[0]
        parts = [sparse + self.offsets[self._sparse_off]]
        widths = [sparse.shape[1]]
        for f in self.layout.bags:
            ids = batch[bag_key(f.name)]
            parts.append(ids + self.offsets[self._bag_index[f.name]])
            widths.append(ids.shape[1])
        for s in self.layout.sequences:
            ids = batch[seq_key(s.name)]
            parts.append(ids + self.offsets[self._seq_table[s.name]])
            widths.append(ids.shape[1])
        emb = self.weight(torch.cat(parts, dim=1)) if len(parts) > 1 else self.weight(parts[0])
        chunks = torch.split(emb, widths, dim=1)
        pooled = [chunks[0]]
        for i, f in enumerate(self.layout.bags):
            pooled.append(masked_mean(chunks[1 + i], batch[bag_len_key(f.name)]).unsqueeze(1))
        seqs: dict[str, tuple[Tensor, Tensor]] = {}
        base = 1 + len(self.layout.bags)
        for i, s in enumerate(self.layout.sequences):
            seqs[s.name] = (chunks[base + i], batch[seq_len_key(s.name)])
        out = torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]
        return EmbeddingOutput(out.reshape(b, self.layout.num_pooled, self.dim), seqs)


def table_name(field: str) -> str:
    return f"t_{field}"


class TorchRecEmbedding(SparseEmbedding):
    """TorchRec `EmbeddingBagCollection` over a `KeyedJaggedTensor` built from the batch."""

    def __init__(self, layout: FeatureLayout, dim: int, *, init_std: float = 0.01,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        self.layout = layout
        self.dim = dim
        bag_names = {f.name for f in layout.bags}
        tables = [
            EmbeddingBagConfig(
                name=table_name(f.name),
                embedding_dim=dim,
                num_embeddings=f.cardinality,
                feature_names=[f.name],
                pooling=PoolingType.MEAN if f.name in bag_names else PoolingType.SUM,
                init_fn=lambda w: nn.init.normal_(w, std=init_std),
            )
            for f in layout.tables
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device) if device else None)
        self.keys = [f.name for f in layout.tables]

    def table_weight(self, name: str) -> Tensor:
        return self.ebc.embedding_bags[table_name(name)].weight

    def to_kjt(self, batch: dict[str, Tensor]) -> object:
        """The batch's sparse fields and bags as a KeyedJaggedTensor (key-major values, per-row lengths)."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        sparse = batch[SPARSE]
        b = sparse.shape[0]
        values = [sparse.t().reshape(-1)]
        lengths = [torch.ones(sparse.shape[1] * b, dtype=torch.int64, device=sparse.device)]
        for f in self.layout.bags:
            ids, lens = batch[bag_key(f.name)], batch[bag_len_key(f.name)]
            mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lens[:, None]
            values.append(ids[mask])
            lengths.append(lens)
        return KeyedJaggedTensor.from_lengths_sync(keys=self.keys, values=torch.cat(values),
                                                   lengths=torch.cat(lengths))

    def forward(self, batch: dict[str, Tensor]) -> EmbeddingOutput:
        kt = self.ebc(self.to_kjt(batch))
        b = batch[SPARSE].shape[0]
        pooled = kt.values().reshape(b, self.layout.num_pooled, self.dim)
        seqs: dict[str, tuple[Tensor, Tensor]] = {}
        for s in self.layout.sequences:
            weight = self.table_weight(s.source)
            seqs[s.name] = (nn.functional.embedding(batch[seq_key(s.name)], weight), batch[seq_len_key(s.name)])
        return EmbeddingOutput(pooled, seqs)


def torchrec_available() -> bool:
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: Backend) -> Literal["fused", "torchrec"]:
    """`auto`: on a CUDA machine the fused backend (one gather, no FBGEMM CUDA kernels needed); on CPU TorchRec's
    EmbeddingBagCollection, whose FBGEMM CPU kernels train faster than the fused table there
    (docs/benchmarks.md, `python -m scripts.bench.train`), falling back to fused where TorchRec cannot load."""
    if backend == "auto":
        return "fused" if torch.cuda.is_available() or not torchrec_available() else "torchrec"
    if backend == "torchrec" and not torchrec_available():
        raise RuntimeError("embedding backend 'torchrec' needs torchrec and fbgemm-gpu(-cpu); run make install, "
                           "or set model.embedding_backend: fused")
    return backend


def build_embedding(layout: FeatureLayout, dim: int, backend: Backend = "auto", *, sparse_grad: bool = False,
                    init_std: float = 0.01) -> SparseEmbedding:
    kind = resolve_backend(backend)
    if kind == "torchrec":
        return TorchRecEmbedding(layout, dim, init_std=init_std)
    return FusedEmbedding(layout, dim, sparse_grad=sparse_grad, init_std=init_std)


@torch.no_grad()
def copy_weights(src: SparseEmbedding, dst: SparseEmbedding) -> None:
    """Copy every table's weights from one backend to the other (same layout and dim)."""
    for f in src.layout.tables:
        dst.table_weight(f.name).copy_(src.table_weight(f.name))


@torch.no_grad()
def fuse_embeddings(model: nn.Module) -> int:
    """Replace every `TorchRecEmbedding` inside `model` by a `FusedEmbedding` with the same weights (identical
    outputs); returns how many were replaced. For inference: one gather per batch instead of building a
    KeyedJaggedTensor, which on CPU costs more than the lookups themselves for request-sized batches. A module
    whose `keeps_torchrec_embedding` is true (one that hands the collection to a TorchRec arch) keeps its own."""
    replaced = 0
    for parent in list(model.modules()):
        if getattr(parent, "keeps_torchrec_embedding", False):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, TorchRecEmbedding):
                device = next(child.parameters()).device
                fused = FusedEmbedding(child.layout, child.dim).to(device)
                copy_weights(child, fused)
                setattr(parent, name, fused.train(child.training))
                replaced += 1
    return replaced
