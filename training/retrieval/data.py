"""Retrieval data from prepared features: positives, a per-user time split, query rows and the item corpus.

Reads the prepared shards of every split (`recforge prepare` output: model inputs plus the raw row keys
`__user_key`, `__item_key`, `__ts`), then:

- corpus: every item with a row in the prepared TRAIN split, its item-side features from its latest such row;
- positives: rows with label >= `positive_threshold` on corpus items (test interactions on items outside the
  corpus cannot be retrieved by any method and are dropped for every method alike);
- per-user time split: each user's latest `test_fraction` of positives are test, the latest `valid_fraction` of
  the rest are valid (early stopping), the remainder train;
- queries: for each user with valid (test) positives, the user-side features of the FIRST valid (test) row,
  point-in-time (history, profile as of that moment), with the truth set (all of the user's valid/test items)
  and the seen set (items before it) to exclude from the ranking;
- with `history: ordered` the behaviour sequences of the training rows and the queries are rebuilt from the
  positives before each row in (time, row) order (`prior_sequences`): same-time basket lines count, a query's
  history is its seen rows, and the selection run's training rows never see a valid row.
Everything is columnar (Arrow -> numpy -> tensors); no loop over rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from torch import Tensor

from feature_store.config import ConfigError
from feature_store.spec import ITEM_KEY, LABEL, TS_KEY, USER_KEY, FeatureSpec
from training.common.data import shard_files, table_to_tensors
from training.common.features import SPARSE, seq_key, seq_len_key
from training.retrieval.config import RetrievalConfig
from training.retrieval.layout import TowerLayout, tower_layout

log = logging.getLogger("recforge.retrieval")

Batch = dict[str, Tensor]


@dataclass
class QuerySet:
    """One query row per user with held-out positives; matrices are users x corpus items (binary)."""

    users: np.ndarray  # user codes of the queries
    batch: Batch  # their user-side features
    truth: sp.csr_matrix
    seen: sp.csr_matrix


@dataclass
class RetrievalData:
    towers: TowerLayout
    corpus: Batch  # one row per corpus item, code order
    corpus_ids: np.ndarray  # raw item key per code
    train: Batch  # positive rows of the train part
    train_items: np.ndarray  # item code per train row
    train_users: np.ndarray  # user code per train row
    item_log_q: np.ndarray  # log frequency of each item among train positives (logQ correction)
    valid_rows: Batch  # positive rows of the valid part (what a refit trains on besides `train`)
    refit_train: Batch | None  # history=ordered: train + valid rows, histories over train + valid
    valid_items: np.ndarray
    valid_users: np.ndarray
    valid: QuerySet
    test: QuerySet
    fit_matrix: sp.csr_matrix  # train + valid positives (what baselines fit on before test)
    n_users: int
    user_ids: np.ndarray  # raw user key per code
    counts: dict[str, int]

    def with_valid_in_train(self) -> RetrievalData:
        """The same data with the valid positives appended to the train rows (the refit after model selection;
        the test queries and corpus are unchanged, the valid queries are no longer held out)."""
        items = np.concatenate([self.train_items, self.valid_items])
        train = self.refit_train if self.refit_train is not None else \
            {k: torch.cat([v, self.valid_rows[k]]) for k, v in self.train.items()}
        users = np.concatenate([self.train_users, self.valid_users])
        return replace(self, train=train, refit_train=None, train_items=items, train_users=users,
                       item_log_q=item_log_q(items, len(self.corpus_ids)))


def latest_mask(user: np.ndarray, ts: np.ndarray, fraction: float, min_train: int = 1) -> np.ndarray:
    """Boolean mask of each user's chronologically latest ceil(fraction * n_u) rows.

    Capped so that at least `min_train` of a user's rows stay unmasked (a user with fewer than min_train + 1
    rows is never masked). Equal times are ordered by input position (the later row counts as later). `user`
    holds non-negative integer codes. One lexsort and cumulative counts, no loop over users.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"latest_mask: fraction must lie in (0, 1), got {fraction}")
    if min_train < 0:
        raise ValueError(f"latest_mask: min_train must be >= 0, got {min_train}")
    n = len(user)
    position = np.arange(n, dtype=np.int64)
    order = np.lexsort((position, ts, user))  # by user, then time, then input position
    counts = np.bincount(user, minlength=int(user.max()) + 1 if n else 0).astype(np.int64)
    starts = np.cumsum(counts) - counts
    user_sorted = user[order]
    rank = position - starts[user_sorted]  # 0 = the user's oldest interaction
    # ceil with a small tolerance: 0.1 * 30 is 3.0000000000000004 in floating point and must give 3
    n_test = np.ceil(fraction * counts - 1e-9).astype(np.int64)
    n_test = np.clip(np.minimum(n_test, counts - min_train), 0, None)
    mask = np.empty(n, dtype=bool)
    mask[order] = rank >= (counts - n_test)[user_sorted]
    return mask


def item_log_q(items: np.ndarray, n_items: int) -> np.ndarray:
    """log of each corpus item's frequency among the training positives (the in-batch sampling probability);
    add-one smoothing keeps unseen items finite."""
    freq = np.bincount(items, minlength=n_items).astype(np.float64)
    return np.log((freq + 1.0) / (freq.sum() + n_items)).astype(np.float32)


def read_split(prepared: Path, split: str, columns: list[str]) -> pa.Table:
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in shard_files(prepared / split))


def _last_per_key(keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row index of the latest row per key (ties: the later row), keys in sorted order."""
    order = np.lexsort((np.arange(len(keys)), ts, keys))
    k = keys[order]
    last = np.flatnonzero(np.r_[k[1:] != k[:-1], True])
    return order[last]


def prior_sequences(users: np.ndarray, items: np.ndarray, ts: np.ndarray, history: np.ndarray, rows: np.ndarray,
                    max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `rows`, the items of its user's `history` rows strictly before it in (time, row) order.

    `users`/`items`/`ts` are per-row arrays (item codes of the sequence's vocabulary); `history` and `rows` are row
    indices. Unlike the prepared point-in-time sequences (events at strictly earlier TIMES), the earlier rows of the
    same time count too: the lines of a basket before this one, and for a query after the split every training
    row of its user (the items it excludes from the ranking as already seen). The latest `max_len`, most recent
    last, right-padded with 0. Returns (len(rows) x max_len codes, len(rows) lengths). One sort, one gather.
    """
    n_hist = len(history)
    idx = np.concatenate([history, rows])
    is_hist = np.r_[np.ones(n_hist, dtype=np.int64), np.zeros(len(rows), dtype=np.int64)]
    # a row that is also a history row sorts before its own history entry: strictly before
    order = np.lexsort((is_hist, idx, ts[idx], users[idx]))
    before = np.cumsum(is_hist[order]) - is_hist[order]  # history rows sorted before each entry
    end = np.empty(len(idx), dtype=np.int64)
    end[order] = before
    end = end[n_hist:]
    sorted_hist = idx[order][is_hist[order] == 1]
    h_users = users[sorted_hist]
    start = np.maximum(np.searchsorted(h_users, users[rows], side="left"), end - max_len)
    lengths = end - start
    pos = start[:, None] + np.arange(max_len)[None, :]
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    if n_hist:
        vals = items[sorted_hist[np.minimum(pos, n_hist - 1)]]
        out[valid] = vals[valid]
    return out, lengths.astype(np.int64)


def _with_prior_history(batch: Batch, towers: TowerLayout, corpus: Batch, users: np.ndarray, items: np.ndarray,
                        ts: np.ndarray, history: np.ndarray, rows: np.ndarray) -> Batch:
    """`batch` (the features of `rows`) with each user sequence replaced by `prior_sequences` over the `history`
    rows; `items` are corpus codes, read through the corpus's codes of the sequence's source (an item field)."""
    layout = towers.layout
    sparse = [f.name for f in layout.sparse]
    out = dict(batch)
    for s in layout.sequences:
        if s.name not in towers.user_sequences:
            continue
        source_codes = corpus[SPARSE][:, sparse.index(s.source)].numpy()[items]
        ids, lens = prior_sequences(users, source_codes, ts, history, rows, s.max_len)
        out[seq_key(s.name)] = torch.from_numpy(ids)
        out[seq_len_key(s.name)] = torch.from_numpy(lens)
    return out


def _matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    m.data[:] = 1.0  # duplicates binarised
    return m


def _queries(table: pa.Table, towers: TowerLayout, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
             mask: np.ndarray, seen_mask: np.ndarray, n_users: int, n_items: int,
             ordered_corpus: Batch | None = None) -> QuerySet:
    idx = np.flatnonzero(mask)
    first = idx[_last_per_key(users[idx], -ts[idx])]  # earliest held-out row per user
    q_users = users[first]
    batch = table_to_tensors(table.take(pa.array(first)), towers.layout)
    seen = np.flatnonzero(seen_mask)
    if ordered_corpus is not None:  # history: ordered, every seen row is history
        batch = _with_prior_history(batch, towers, ordered_corpus, users, items, ts, seen, first)
    return QuerySet(q_users, batch, _matrix(users[idx], items[idx], n_users, n_items),
                    _matrix(users[seen], items[seen], n_users, n_items))


def load_retrieval_data(prepared: str | Path, cfg: RetrievalConfig) -> RetrievalData:
    """Build the retrieval data set from `recforge prepare` output; see the module docstring."""
    prepared = Path(prepared)
    spec = FeatureSpec.load(prepared / "spec")
    towers = tower_layout(spec, cfg)
    cols = [*towers.columns, LABEL, USER_KEY, ITEM_KEY, TS_KEY]
    have = pq.read_schema(shard_files(prepared / "train")[0]).names
    missing = [c for c in cols if c not in have]
    if TS_KEY in missing and all(c in have for c in cols if c != TS_KEY):
        raise ConfigError(f"{prepared}: the events were prepared without time (no `features.timestamp` column), and "
                          "retrieval needs it: each user's latest positives are the test queries and the corpus "
                          "holds each item's latest features. Prepare again with features.timestamp naming the "
                          "event time column")
    if missing:
        raise ValueError(f"{prepared}: prepared shards lack {missing}; re-run `recforge prepare` (the row keys "
                         f"__user_key/__item_key/__ts are written by this version)")
    parts = {split: read_split(prepared, split, cols) for split in ("train", "valid", "test")}
    # corpus: items of the train split with their latest item-side features
    t_items = parts["train"].column(ITEM_KEY).to_numpy()
    last = _last_per_key(t_items, parts["train"].column(TS_KEY).to_numpy())
    corpus_table = parts["train"].take(pa.array(last))
    corpus_ids = t_items[last]
    rows = pa.concat_tables(parts.values())
    del parts
    label = rows.column(LABEL).to_numpy()
    item_raw = rows.column(ITEM_KEY).to_numpy()
    code = np.searchsorted(corpus_ids, item_raw)
    in_corpus = (code < len(corpus_ids)) & (corpus_ids[np.minimum(code, len(corpus_ids) - 1)] == item_raw)
    keep = (label >= cfg.positive_threshold) & in_corpus
    counts = {"rows": rows.num_rows, "positives": int((label >= cfg.positive_threshold).sum()),
              "positives_outside_corpus": int(((label >= cfg.positive_threshold) & ~in_corpus).sum())}
    rows = rows.filter(pa.array(keep))
    items = code[keep]
    user_ids, users = np.unique(rows.column(USER_KEY).to_numpy(zero_copy_only=False), return_inverse=True)
    ts = rows.column(TS_KEY).to_numpy()
    test_mask = latest_mask(users, ts, cfg.test_fraction)
    rest = np.flatnonzero(~test_mask)
    valid_mask = np.zeros(len(users), dtype=bool)
    valid_mask[rest[latest_mask(users[rest], ts[rest], cfg.valid_fraction)]] = True
    train_mask = ~test_mask & ~valid_mask
    n_users, n_items = len(user_ids), len(corpus_ids)

    train_idx = np.flatnonzero(train_mask)
    train_items = items[train_idx]
    valid_idx = np.flatnonzero(valid_mask)  # trained on only in the refit
    ordered = cfg.history == "ordered" and bool(towers.user_sequences)
    user_side = [s.name for s in towers.layout.sequences if s.source not in cfg.item_features]
    if ordered and user_side:  # checked before any tensor is built: the corpus holds item fields only
        raise ValueError(f"retrieval.history: ordered rebuilds behaviour sequences from the items of earlier "
                         f"positives, but {user_side} read(s) a field that is not in retrieval.item_features; add "
                         f"the source field to item_features or set retrieval.history: point_in_time")
    corpus = table_to_tensors(corpus_table, towers.layout)
    train = table_to_tensors(rows.take(pa.array(train_idx)), towers.layout)
    valid_rows = table_to_tensors(rows.take(pa.array(valid_idx)), towers.layout)
    refit_train = None
    if ordered:  # histories from the rows before, in (time, row) order; never a valid row in selection
        train = _with_prior_history(train, towers, corpus, users, items, ts, np.flatnonzero(train_mask), train_idx)
        both = np.concatenate([train_idx, valid_idx])
        refit_train = _with_prior_history({k: torch.cat([v, valid_rows[k]]) for k, v in train.items()}, towers,
                                          corpus, users, items, ts, np.flatnonzero(~test_mask), both)
    ordered_corpus = corpus if ordered else None
    data = RetrievalData(
        towers=towers,
        corpus=corpus,
        corpus_ids=corpus_ids,
        train=train,
        train_items=train_items,
        train_users=users[train_idx],
        item_log_q=item_log_q(train_items, n_items),
        valid_rows=valid_rows,
        refit_train=refit_train,
        valid_items=items[valid_idx],
        valid_users=users[valid_idx],
        valid=_queries(rows, towers, users, items, ts, valid_mask, train_mask, n_users, n_items, ordered_corpus),
        test=_queries(rows, towers, users, items, ts, test_mask, ~test_mask, n_users, n_items, ordered_corpus),
        fit_matrix=_matrix(users[~test_mask], items[~test_mask], n_users, n_items),
        n_users=n_users, user_ids=user_ids,
        counts={**counts, "train": len(train_idx), "valid": int(valid_mask.sum()),
                "test": int(test_mask.sum()), "users": n_users, "items": n_items},
    )
    log.info("retrieval data: %s", data.counts)
    return data
