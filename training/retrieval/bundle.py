"""The retrieval bundle: everything serving needs to turn a raw user into candidate items, in one directory.

Layout: `bundle.json` (format, version, the retrieval config, corpus size, test metrics), `two_tower.pt` (the
towers' state dict), `spec/` (the feature spec the towers were trained with), `embeddings/` (item_embeddings.parquet:
raw `item_id`, corpus position `item_code` and vector of every corpus item; query_embeddings.parquet: a seeded sample
of real held-out users' vectors, for the index recall guard), `popularity.parquet` (train positives per corpus item,
the unknown-user fallback) and, once an index is built for it, `index/` (an `ItemIndex` over corpus positions).

`load_retriever(dir)` returns a `Retriever`: user vectors from raw rows through the same spec as training, top-N
search with per-query exclusions (raw ids, strings or integers), the popularity fallback and full-corpus evaluation
on a prepared data set (what the registry's promotion gate compares).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from feature_store.spec import FeatureSpec
from training.common.data import row_to_tensors, table_to_tensors, zero_row
from training.common.weights import load_weights
from training.retrieval.config import RetrievalConfig
from training.retrieval.data import RetrievalData, load_retrieval_data
from training.retrieval.layout import TowerLayout, tower_layout
from training.retrieval.model import TwoTower, embed

BUNDLE_FORMAT = "recforge.retriever"
BUNDLE_VERSION = 1
EMBEDDINGS = "embeddings"
INDEX = "index"


def _vectors_table(columns: Mapping[str, Any], vectors: torch.Tensor) -> pa.Table:
    flat = pa.array(vectors.numpy().astype(np.float32).reshape(-1))
    return pa.table({**columns, "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def save_retrieval_bundle(directory: str | Path, *, model: TwoTower, cfg: RetrievalConfig, data: RetrievalData,
                          spec_dir: str | Path, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the bundle (see the module docstring) for a trained model; returns what was exported."""
    out = Path(directory)
    if out.exists():  # a bundle is written whole: nothing of an earlier run (its index above all) may survive
        shutil.rmtree(out)
    emb = out / EMBEDDINGS
    emb.mkdir(parents=True)
    model = model.cpu().eval()
    torch.save(model.state_dict(), out / "two_tower.pt")
    shutil.copytree(spec_dir, out / "spec")
    items = embed(model.item, data.corpus)
    codes = np.arange(len(data.corpus_ids), dtype=np.int64)
    pq.write_table(_vectors_table({"item_id": pa.array(data.corpus_ids), "item_code": pa.array(codes)}, items),
                   emb / "item_embeddings.parquet")
    rng = np.random.default_rng(cfg.runtime.seed)
    pick = np.sort(rng.permutation(len(data.test.users))[: cfg.query_sample])
    users = embed(model.user, {k: v[torch.from_numpy(pick)] for k, v in data.test.batch.items()})
    pq.write_table(_vectors_table({"user_id": pa.array(data.user_ids[data.test.users[pick]])}, users),
                   emb / "query_embeddings.parquet")
    counts = np.bincount(data.train_items, minlength=len(data.corpus_ids)).astype(np.int64)
    pq.write_table(pa.table({"item_id": pa.array(data.corpus_ids), "positives": pa.array(counts)}),
                   out / "popularity.parquet")
    info = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "retrieval": cfg.model_dump(mode="json"),
            "items": int(items.shape[0]), "dim": int(items.shape[1]), "queries": int(users.shape[0]),
            "spec_fingerprint": FeatureSpec.load(out / "spec").fingerprint(), "metrics": dict(metrics or {})}
    (out / "bundle.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    return {"dir": str(emb), "items": info["items"], "queries": info["queries"], "dim": info["dim"]}


def _with_item_side_zeros(table: pa.Table, layout: TowerLayout, n: int) -> pa.Table:
    """Add the item-side inputs a user-only table lacks as zeros/empty lists (the user tower never reads them)."""
    lay = layout.layout
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int64()))
    for f in lay.sparse:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.array(np.zeros(n, np.int64)))
    for f in lay.bags:
        if f.name not in table.column_names:
            table = table.append_column(f.name, empty)
    for name in lay.dense_names:
        if name not in table.column_names:
            table = table.append_column(name, pa.array(np.zeros(n, np.float32)))
    for name, dim in lay.vector_dims.items():
        if name not in table.column_names:
            flat = pa.array(np.zeros(n * dim, np.float32))
            table = table.append_column(name, pa.FixedSizeListArray.from_arrays(flat, dim))
    return table


@dataclass
class Retriever:
    """A loaded retrieval bundle: the towers in eval mode, their spec, the corpus and (when built) the index."""

    model: TwoTower
    spec: FeatureSpec
    cfg: RetrievalConfig
    item_ids: np.ndarray  # raw item id per corpus position (sorted)
    item_vectors: np.ndarray  # corpus position -> unit vector
    popularity: np.ndarray  # train positives per corpus position
    index: Any = None  # training.index.faiss_index.ItemIndex over corpus positions, or None (exact search)
    info: dict[str, Any] = field(default_factory=dict)
    _zero_row: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def towers(self) -> TowerLayout:
        return self.model.towers

    @property
    def user_columns(self) -> list[str]:
        """The raw columns the user tower reads (ids, profile fields, behaviour sequences)."""
        return list(dict.fromkeys(self.spec.feature(n).column for n in self.cfg.user_features))

    @property
    def index_recall(self) -> dict[str, Any]:
        return dict(self.index.recall) if self.index is not None else {}

    @torch.no_grad()
    def user_vectors(self, rows: pa.Table | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Raw user rows (the `user_columns`) -> N x D unit vectors, through the same spec as training."""
        table = self.spec.transform(rows, with_label=False, features=self.cfg.user_features)
        table = _with_item_side_zeros(table, self.towers, table.num_rows)
        return self.model.user(table_to_tensors(table, self.towers.layout)).float().numpy()

    @torch.no_grad()
    def user_vector_of_row(self, row: Mapping[str, Any]) -> np.ndarray:
        """One transformed user row (`FeatureSpec.transform_row` holding at least the `user_features`; other
        entries are ignored) -> a 1 x D unit vector, as `user_vectors` gives it: the item side's inputs, which
        the user tower never reads, are zeros."""
        if self._zero_row is None:
            self._zero_row = zero_row(self.towers.layout)
        mine = {**self._zero_row, **{k: v for k, v in row.items() if k in self._zero_row}}
        return self.model.user(row_to_tensors(mine, self.towers.layout)).float().numpy()

    def positions(self, raw_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Corpus positions of the raw ids that are in the corpus (others dropped)."""
        raw = np.asarray(raw_ids, dtype=self.item_ids.dtype).ravel()
        if raw.size == 0 or self.item_ids.size == 0:
            return np.empty(0, np.int64)
        at = np.minimum(np.searchsorted(self.item_ids, raw), len(self.item_ids) - 1)
        return at[self.item_ids[at] == raw].astype(np.int64)

    def search(self, vectors: np.ndarray, k: int, exclude: Sequence[Sequence[Any]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` raw item ids and scores per user vector, best first; `exclude` holds raw ids per query (items
        already bought, out of stock). Rows the corpus cannot fill end with id None and score -inf."""
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        excl = None if exclude is None else [self.positions(e) for e in exclude]
        if self.index is not None:
            pos, scores = self.index.search(q, k, exclude=excl)
        else:  # exact: one matrix product against the corpus, excluded positions masked
            s = torch.from_numpy(q) @ torch.from_numpy(self.item_vectors).T
            if excl is not None and any(len(e) for e in excl):
                rows = np.repeat(np.arange(len(excl)), [len(e) for e in excl])
                s[torch.from_numpy(rows), torch.from_numpy(np.concatenate(excl))] = -torch.inf
            top = torch.topk(s, min(k, s.shape[1]), dim=1)
            scores, pos = top.values.numpy(), top.indices.numpy()
            pos = np.where(np.isfinite(scores), pos, -1)
            if pos.shape[1] < k:
                pos = np.pad(pos, ((0, 0), (0, k - pos.shape[1])), constant_values=-1)
                scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])), constant_values=-np.inf)
        missing = None if self.item_ids.dtype == object else -1
        return np.where(pos >= 0, self.item_ids[np.maximum(pos, 0)], missing), scores

    def popular(self, k: int, exclude: Sequence[Any] = ()) -> np.ndarray:
        """The `k` most popular corpus items (train positives), `exclude` removed: the unknown-user fallback."""
        counts = self.popularity.astype(np.float64).copy()
        counts[self.positions(list(exclude))] = -1
        order = np.argsort(-counts, kind="stable")[:k]
        return self.item_ids[order[counts[order] >= 0]]

    def evaluate(self, prepared: str | Path, ks: Sequence[int] = (10, 20, 50, 100)) -> dict[str, float]:
        """Full-corpus test metrics of the towers on the held-out test queries of a prepared data set (its own
        per-user time split, seen items excluded). The data must be prepared with the bundle's feature spec."""
        from training.retrieval.evaluate import evaluate_two_tower

        prepared = Path(prepared)
        theirs = FeatureSpec.load(prepared / "spec").fingerprint()
        if theirs != self.spec.fingerprint():
            raise ValueError(f"{prepared}: prepared with feature spec {theirs[:12]}, but the retrieval bundle was "
                             f"trained with {self.spec.fingerprint()[:12]}; evaluate on the data set the bundle "
                             f"was trained on (or retrain on this one)")
        data = load_retrieval_data(prepared, self.cfg)
        return evaluate_two_tower(self.model, data, data.test, list(ks), torch.device("cpu"))


def load_retriever(directory: str | Path, *, index_dir: str | Path | None = None) -> Retriever:
    """Load a bundle written by `save_retrieval_bundle`; the index from `index_dir`, else the bundle's `index/`,
    else none (exact search over the corpus vectors)."""
    d = Path(directory)
    path = d / "bundle.json"
    if not path.is_file():
        raise FileNotFoundError(f"{d}: not a RecForge retrieval bundle (no bundle.json); it is written by "
                                f"`recforge train retrieval` under <output_dir>/retrieval/bundle")
    info = json.loads(path.read_text())
    if info.get("format") != BUNDLE_FORMAT or int(info.get("version", 0)) > BUNDLE_VERSION:
        raise ValueError(f"{path}: unsupported bundle format {info.get('format')!r} v{info.get('version')}")
    cfg = RetrievalConfig.model_validate(info["retrieval"])
    spec = FeatureSpec.load(d / "spec")
    model = TwoTower(tower_layout(spec, cfg), cfg.model)
    model.load_state_dict(load_weights(d / "two_tower.pt"))
    items = pq.read_table(d / EMBEDDINGS / "item_embeddings.parquet")
    ids = items.column("item_id").to_numpy(zero_copy_only=False)
    vectors = np.stack(items.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32) \
        if items.num_rows else np.zeros((0, int(info["dim"])), np.float32)
    pop = pq.read_table(d / "popularity.parquet").column("positives").to_numpy()
    index = None
    where = Path(index_dir) if index_dir is not None else d / INDEX
    if (where / "index.json").is_file():
        from training.index.faiss_index import ItemIndex

        index = ItemIndex.load(where)
        if index.n_items != len(ids) or index.dim != vectors.shape[1]:
            raise ValueError(f"{where}: index of {index.n_items} items x {index.dim}, but the bundle's corpus is "
                             f"{len(ids)} x {vectors.shape[1]}; rebuild it with `recforge index build`")
    return Retriever(model.eval(), spec, cfg, ids, vectors, pop, index, info)
