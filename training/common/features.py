"""The model-input layout, derived from the feature spec (never hand-listed), and the batch key conventions.

A batch is a plain `dict[str, Tensor]` (exportable with torch.export, movable by Lightning):

- `sparse`:  B x S int64, the single-valued embedded fields (categoricals, bucketized numerics) in layout order;
- `dense`:   B x D float32, standardized numerics then the vector features, flattened;
- `bag:<name>` B x L int64 (right-padded with 0) and `bag_len:<name>` B int64, multi-valued fields (pooled);
- `seq:<name>` B x L int64 (most recent last, right-padded) and `seq_len:<name>` B int64, behaviour sequences,
  looked up in the table of their source field;
- `label`: B float32; `group`: B int64 (the user index, for gAUC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feature_store.spec import (
    CategoricalEntry,
    FeatureSpec,
    MultiValuedEntry,
    NumericEntry,
    SequenceEntry,
    VectorEntry,
)

SPARSE = "sparse"
DENSE = "dense"
LABEL = "label"
GROUP = "group"


def bag_key(name: str) -> str:
    return f"bag:{name}"


def bag_len_key(name: str) -> str:
    return f"bag_len:{name}"


def seq_key(name: str) -> str:
    return f"seq:{name}"


def seq_len_key(name: str) -> str:
    return f"seq_len:{name}"


@dataclass(frozen=True)
class Field:
    """One embedding table's field: `cardinality` rows (index 0 = OOV/padding)."""

    name: str
    cardinality: int
    max_len: int = 1


@dataclass(frozen=True)
class SequenceField:
    name: str
    source: str
    max_len: int


@dataclass(frozen=True)
class FeatureLayout:
    """What the model sees: embedded fields, pooled bags, sequences and the dense width."""

    sparse: tuple[Field, ...]
    bags: tuple[Field, ...]
    sequences: tuple[SequenceField, ...]
    dense_names: tuple[str, ...]
    dense_dim: int
    user_field: str | None = None
    item_field: str | None = None
    vector_dims: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> FeatureLayout:
        sparse: list[Field] = []
        bags: list[Field] = []
        seqs: list[SequenceField] = []
        dense: list[str] = []
        vectors: dict[str, int] = {}
        for f in spec.features:
            if isinstance(f, CategoricalEntry) or (isinstance(f, NumericEntry) and f.is_bucketized):
                sparse.append(Field(f.name, f.cardinality))
            elif isinstance(f, NumericEntry):
                dense.append(f.name)
            elif isinstance(f, MultiValuedEntry):
                bags.append(Field(f.name, f.cardinality, f.max_len))
            elif isinstance(f, SequenceEntry):
                seqs.append(SequenceField(f.name, f.source, f.max_len))
            elif isinstance(f, VectorEntry):
                vectors[f.name] = f.dim
        names = {s.name for s in sparse}
        user = spec.user_key if spec.user_key in names else None
        item = spec.item_key if spec.item_key in names else None
        return cls(tuple(sparse), tuple(bags), tuple(seqs), tuple(dense), len(dense) + sum(vectors.values()),
                   user, item, vectors)

    @property
    def tables(self) -> tuple[Field, ...]:
        """Every embedding table, sparse fields first, then bags (sequences share their source's table)."""
        return self.sparse + self.bags

    @property
    def num_pooled(self) -> int:
        """Embedding vectors per example before any sequence pooling: sparse fields + bags."""
        return len(self.sparse) + len(self.bags)

    def index_of(self, name: str) -> int:
        for i, f in enumerate(self.tables):
            if f.name == name:
                return i
        raise KeyError(f"no embedded field '{name}' (have {[f.name for f in self.tables]})")
