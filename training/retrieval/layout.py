"""Which spec features feed which tower: `TowerLayout` (the sub-layout both towers read and each tower's fields
and dense columns) and `tower_layout(spec, cfg)`, which builds it and names the key at fault in every error.
Needs torch-free, scipy-free imports only, so the model runs on a bare GPU box."""

from __future__ import annotations

from dataclasses import dataclass

from feature_store.spec import FeatureSpec
from training.common.features import FeatureLayout
from training.retrieval.config import RetrievalConfig


@dataclass(frozen=True)
class TowerLayout:
    """The sub-layout the two towers read, and which of its fields and dense columns each tower owns."""

    layout: FeatureLayout
    user_fields: tuple[int, ...]  # indices into layout.tables
    item_fields: tuple[int, ...]
    user_sequences: tuple[str, ...]
    user_dense: tuple[int, ...]  # column indices into the batch's dense tensor
    item_dense: tuple[int, ...]

    @property
    def columns(self) -> list[str]:
        lay = self.layout
        return [*(f.name for f in lay.tables), *(s.name for s in lay.sequences), *lay.dense_names, *lay.vector_dims]


def tower_layout(spec: FeatureSpec, cfg: RetrievalConfig, where: str = "retrieval") -> TowerLayout:
    """Split the spec's features between the towers as `cfg` names them; errors name the key and the choices."""
    full = FeatureLayout.from_spec(spec)
    known = [f.name for f in spec.features]
    for key, names in (("user_features", cfg.user_features), ("item_features", cfg.item_features)):
        if not names:
            raise ValueError(f"{where}.{key} is empty: name the spec features of that tower (choices: "
                             f"{', '.join(known)})")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{where}.{key}: unknown feature(s) {unknown}; the feature spec has: {', '.join(known)}")
    both = set(cfg.user_features) & set(cfg.item_features)
    if both:
        raise ValueError(f"{where}: features {sorted(both)} are in both user_features and item_features")
    wanted = set(cfg.user_features) | set(cfg.item_features)
    seqs = tuple(s for s in full.sequences if s.name in wanted)
    if any(s.name in cfg.item_features for s in seqs):
        raise ValueError(f"{where}.item_features: behaviour sequences belong to the user tower")
    table_names = {f.name for f in full.tables}
    for s in seqs:
        if s.source not in wanted or s.source not in table_names:
            raise ValueError(f"{where}.user_features: sequence '{s.name}' reads the embedding of '{s.source}', "
                             f"which must be one of the tower features (add it to item_features)")
    dense = tuple(n for n in full.dense_names if n in wanted)
    vectors = {n: d for n, d in full.vector_dims.items() if n in wanted}
    layout = FeatureLayout(
        sparse=tuple(f for f in full.sparse if f.name in wanted), bags=tuple(f for f in full.bags if f.name in wanted),
        sequences=seqs, dense_names=dense, dense_dim=len(dense) + sum(vectors.values()),
        user_field=None, item_field=None, vector_dims=vectors)
    user = set(cfg.user_features)
    fields = [f.name for f in layout.tables]
    dense_cols: list[str] = [*dense]
    for n, d in vectors.items():
        dense_cols += [n] * d
    return TowerLayout(
        layout=layout,
        user_fields=tuple(i for i, n in enumerate(fields) if n in user),
        item_fields=tuple(i for i, n in enumerate(fields) if n not in user),
        user_sequences=tuple(s.name for s in seqs),
        user_dense=tuple(i for i, n in enumerate(dense_cols) if n in user),
        item_dense=tuple(i for i, n in enumerate(dense_cols) if n not in user),
    )
