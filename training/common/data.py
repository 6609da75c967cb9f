"""Columnar batch loading: prepared Parquet -> contiguous tensors -> batches sliced by a seeded permutation.

- `table_to_tensors` turns a transformed Arrow table (the output of `FeatureSpec.transform`) into the batch dict
  described in `training.common.features` with numpy/Arrow buffer operations only; serving calls it too.
- `InMemoryBatches` holds a whole split as contiguous tensors (on the host, optionally pinned, or resident on the
  GPU) and yields batches as `index_select` gathers of a per-epoch seeded permutation: no per-row __getitem__.
- `StreamingBatches` reads row groups in order for data larger than memory, mixing them through a shuffle buffer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from training.common.features import (
    DENSE,
    GROUP,
    LABEL,
    SPARSE,
    FeatureLayout,
    bag_key,
    bag_len_key,
    seq_key,
    seq_len_key,
)

log = logging.getLogger("recforge.data")

Batch = dict[str, Tensor]


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.to_numpy(zero_copy_only=False)


def _padded(col: pa.ChunkedArray | pa.Array, max_len: int, keep_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """A list<int64> column as (N x max_len right-padded ids, N lengths), vectorised over the offsets."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        arr = pa.compute.fill_null(arr, pa.scalar([], arr.type))
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0]: offsets[-1]]
    offsets = offsets - offsets[0]
    raw_len = np.diff(offsets)
    lengths = np.minimum(raw_len, max_len)
    out = np.zeros((n, max_len), dtype=np.int64)
    if len(values):
        rows = np.repeat(np.arange(n), raw_len)
        pos = np.arange(len(values)) - offsets[:-1][rows]
        if keep_last:
            pos = pos - (raw_len - lengths)[rows]
        keep = (pos >= 0) & (pos < max_len)
        out[rows[keep], pos[keep]] = values[keep]
    return out, lengths.astype(np.int64)


def table_to_tensors(table: pa.Table, layout: FeatureLayout, *, only: Collection[str] | None = None) -> Batch:
    """A transformed table (spec output) -> batch dict of contiguous CPU tensors.

    `only`: the features `table` holds (None: all). The columns of the others in `sparse` and `dense` are zeros,
    and their own entries (sequences, bags) and the `group` column are left out: one side of a batch that
    `add_sides` completes with the other (serving builds the item side once per item and the request side once
    per user)."""
    n = table.num_rows

    def has(name: str) -> bool:
        return only is None or name in only

    out: Batch = {}
    if layout.sparse:
        out[SPARSE] = torch.from_numpy(
            np.stack([_np(table.column(f.name)).astype(np.int64) if has(f.name) else np.zeros(n, np.int64)
                      for f in layout.sparse], axis=1)
        )
    else:
        out[SPARSE] = torch.zeros((n, 0), dtype=torch.int64)
    dense_parts = [_np(table.column(name)).astype(np.float32)[:, None] if has(name) else np.zeros((n, 1), np.float32)
                   for name in layout.dense_names]
    for name, dim in layout.vector_dims.items():
        if not has(name):
            dense_parts.append(np.zeros((n, dim), np.float32))
            continue
        col = table.column(name).combine_chunks()
        flat = col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        start = col.offsets[0].as_py()
        dense_parts.append(flat[start: start + n * dim].reshape(n, dim))
    out[DENSE] = torch.from_numpy(np.concatenate(dense_parts, axis=1) if dense_parts else np.zeros((n, 0), np.float32))
    for f in layout.bags:
        if has(f.name):
            ids, lens = _padded(table.column(f.name), f.max_len, keep_last=False)
            out[bag_key(f.name)] = torch.from_numpy(ids)
            out[bag_len_key(f.name)] = torch.from_numpy(lens)
    for s in layout.sequences:
        if has(s.name):
            ids, lens = _padded(table.column(s.name), s.max_len, keep_last=True)
            out[seq_key(s.name)] = torch.from_numpy(ids)
            out[seq_len_key(s.name)] = torch.from_numpy(lens)
    if LABEL in table.column_names:
        out[LABEL] = torch.from_numpy(_np(table.column(LABEL)).astype(np.float32))
    if layout.user_field is not None and only is None:
        out[GROUP] = out[SPARSE][:, layout.index_of(layout.user_field)].clone()
    return out


def row_to_tensors(row: Mapping[str, Any], layout: FeatureLayout, *, only: Collection[str] | None = None) -> Batch:
    """One transformed row (`FeatureSpec.transform_row`'s output) -> a one-row batch equal to `table_to_tensors`
    of the same row as a table, with the same meaning of `only` (None: `row` holds every feature of `layout`).
    Serving builds a request's user side this way (a few small arrays where the table path converts columns)."""

    def has(name: str) -> bool:
        return only is None or name in only

    out: Batch = {SPARSE: torch.tensor([[row[f.name] if has(f.name) else 0 for f in layout.sparse]],
                                       dtype=torch.int64).reshape(1, len(layout.sparse))}
    dense = np.zeros((1, layout.dense_dim), np.float32)
    for i, name in enumerate(layout.dense_names):
        if has(name):
            dense[0, i] = row[name]
    at = len(layout.dense_names)
    for name, dim in layout.vector_dims.items():
        if has(name):
            dense[0, at: at + dim] = row[name]
        at += dim
    out[DENSE] = torch.from_numpy(dense)
    for f in layout.bags:
        if has(f.name):
            out[bag_key(f.name)], out[bag_len_key(f.name)] = _padded_row(row[f.name][: f.max_len], f.max_len)
    for s in layout.sequences:
        if has(s.name):
            out[seq_key(s.name)], out[seq_len_key(s.name)] = _padded_row(row[s.name][-s.max_len:], s.max_len)
    if layout.user_field is not None and only is None:
        out[GROUP] = out[SPARSE][:, layout.index_of(layout.user_field)].clone()
    return out


def zero_row(layout: FeatureLayout) -> dict[str, Any]:
    """Every input of `layout` as `FeatureSpec.transform_row` gives it, zero (empty for bags and sequences): the
    inputs a one-side row lacks, for a model that does not read them."""
    out: dict[str, Any] = {f.name: 0 for f in layout.sparse}
    out.update({f.name: np.zeros(0, np.int64) for f in (*layout.bags, *layout.sequences)})
    out.update({name: np.float32(0.0) for name in layout.dense_names})
    out.update({name: np.zeros(dim, np.float32) for name, dim in layout.vector_dims.items()})
    return out


def _padded_row(ids: np.ndarray, max_len: int) -> tuple[Tensor, Tensor]:
    out = np.zeros((1, max_len), np.int64)
    out[0, : len(ids)] = ids
    return torch.from_numpy(out), torch.tensor([len(ids)], dtype=torch.int64)


def add_sides(rows: Batch, slots: Tensor, one: Batch, layout: FeatureLayout) -> Batch:
    """The batch pairing one request side (`one`: a single row of `table_to_tensors(..., only=...)`) with rows
    `slots` of a many-row side (`rows`, the other features): `sparse` and `dense` are the sums of the two sides
    (each is zero where the other holds the feature), sequences and bags come from whichever side holds them.
    Equal to `table_to_tensors` of the joined table, without building it (measured in docs/benchmarks.md,
    Serving: the gather replaces a per-request Arrow transform and table assembly)."""
    n = len(slots)
    out: Batch = {}
    for key in {*rows, *one}:
        if key == LABEL:
            continue
        mine, theirs = rows.get(key), one.get(key)
        if mine is not None and theirs is not None:
            out[key] = mine.index_select(0, slots) + theirs
        elif mine is not None:
            out[key] = mine.index_select(0, slots)
        else:
            assert theirs is not None
            out[key] = theirs.expand(n, *theirs.shape[1:]) if theirs.dim() > 1 else theirs.expand(n)
    if layout.user_field is not None:
        out[GROUP] = out[SPARSE][:, layout.index_of(layout.user_field)].clone()
    return out


def shard_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{d}: no prepared Parquet shards; run `recforge prepare --config ...` first")
    return files


def load_split(directory: str | Path, layout: FeatureLayout) -> Batch:
    """A whole prepared split as contiguous tensors."""
    files = shard_files(directory)
    table = pa.concat_tables(pq.read_table(f) for f in files)
    return table_to_tensors(table, layout)


def num_rows(tensors: Batch) -> int:
    return int(next(iter(tensors.values())).shape[0])


def _gather(tensors: Batch, idx: Tensor) -> Batch:
    return {k: v.index_select(0, idx) for k, v in tensors.items()}


class InMemoryBatches:
    """Batches of a split held in memory: seeded permutation per epoch, contiguous gathers.

    With `device` set (e.g. cuda) the tensors are moved there once (GPU-resident mode) and batches are sliced on
    the device. With `feed_device` instead (a split too large for the GPU), they stay on the host and each batch is
    gathered into one of two alternating pinned staging buffers and copied to `feed_device` with
    non_blocking=True: the next gather overlaps the device's work on the previous batch, and a buffer is reused
    only once its copy has finished (a CUDA event; no other host sync). The batches are exactly the plain host
    path's. Otherwise they stay on the host, pinned when `pin_memory` so copies can be non-blocking.

    Resumable mid-epoch (Lightning's `state_dict` / `load_state_dict` loader protocol): with `progress_fn` (the
    trainer's count of this epoch's processed batches) a checkpoint records where the epoch was, and a resumed job
    continues the same epoch's permutation at the next batch instead of starting it over (which would train on its
    first batches twice and never on its last ones).
    """

    def __init__(self, tensors: Batch, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 device: torch.device | str | None = None, pin_memory: bool = False,
                 epoch_fn: Callable[[], int] | None = None, rank: int = 0, world_size: int = 1,
                 progress_fn: Callable[[], int] | None = None,
                 feed_device: torch.device | str | None = None) -> None:
        self.feed_device = torch.device(feed_device) if feed_device is not None and device is None else None
        if device is not None:
            tensors = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
        elif pin_memory and torch.cuda.is_available() and self.feed_device is None:
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.epoch_fn = epoch_fn  # the trainer's epoch, so a resumed run replays the same permutation
        self.progress_fn = progress_fn
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained) of a restored checkpoint
        self.rank, self.world_size = rank, world_size
        total = num_rows(tensors)
        # data parallel: every rank takes an equal share of each epoch's permutation (the remainder is skipped)
        self.n = total // world_size if world_size > 1 else total
        self.total = total

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Where the epoch is, for a checkpoint (empty without `progress_fn`: not resumable mid-epoch)."""
        if self.progress_fn is None or self.epoch_fn is None:
            return {}
        return {"epoch": int(self.epoch_fn()), "batches_done": int(self.progress_fn())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_done"])) if state else None

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def __iter__(self) -> Iterator[Batch]:
        dev = next(iter(self.tensors.values())).device
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        start = 0
        if self._resume is not None:
            if self._resume[0] == epoch:
                start = min(self._resume[1], len(self))
            self._resume = None
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.total, generator=g).to(dev)
        else:
            order = None
        if self.world_size > 1:
            base = order if order is not None else torch.arange(self.total, device=dev)
            order = base[self.rank: self.n * self.world_size: self.world_size]
        self.epoch = epoch + 1
        if self.feed_device is not None:
            yield from self._fed(start, order)
            return
        for b in range(start, len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.n)
            if order is None:
                yield {k: v[lo:hi] for k, v in self.tensors.items()}
            else:
                yield _gather(self.tensors, order[lo:hi])

    def _fed(self, start: int, order: Tensor | None) -> Iterator[Batch]:
        """Host-fed batches: gathered into two alternating (pinned, on CUDA) staging buffers, copied non-blocking."""
        dev = self.feed_device
        assert dev is not None
        cuda = dev.type == "cuda"
        rows = min(self.batch_size, self.n)
        slots = [{k: torch.empty((rows, *v.shape[1:]), dtype=v.dtype, pin_memory=cuda)
                  for k, v in self.tensors.items()} for _ in range(2)]
        done: list[Any] = [None, None]
        for i, b in enumerate(range(start, len(self))):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.n)
            idx = order[lo:hi] if order is not None else torch.arange(lo, hi)
            slot = i % 2
            if done[slot] is not None:
                done[slot].synchronize()  # that buffer's copy (two batches ago) has finished
            out = {}
            for k, v in self.tensors.items():
                buf = slots[slot][k][: hi - lo]
                torch.index_select(v, 0, idx, out=buf)
                out[k] = buf.to(dev, non_blocking=True) if cuda else buf.clone()
            if cuda:
                done[slot] = torch.cuda.Event()
                done[slot].record()
            yield out


class _RowPool:
    """The shuffle buffer: rows held in tensors allocated once per epoch (grown to the largest fill), row groups
    copied into free slots, batches gathered out through `live` (the slots of the buffered rows, in buffer order).
    Concatenating each row group to the buffer allocated a new buffer and freed the old one per row group, holding
    both at once; measured on 10M demo rows (RSS every 150 steps of one epoch): 1,042-1,211 MiB concatenating,
    981-1,154 MiB with this pool."""

    def __init__(self) -> None:
        self.tensors: Batch | None = None
        self.live = torch.zeros(0, dtype=torch.long)

    @property
    def rows(self) -> int:
        return int(self.live.shape[0])

    def add(self, part: Batch) -> None:
        m = num_rows(part)
        if m == 0:
            return
        have = self.rows
        if self.tensors is None or have + m > num_rows(self.tensors):
            grown = {k: torch.empty((have + m, *v.shape[1:]), dtype=v.dtype) for k, v in part.items()}
            if self.tensors is not None:
                for k, v in self.tensors.items():
                    torch.index_select(v, 0, self.live, out=grown[k][:have])
            self.tensors, self.live = grown, torch.arange(have)
        free = torch.ones(num_rows(self.tensors), dtype=torch.bool)
        free[self.live] = False
        slots = torch.nonzero(free).reshape(-1)[:m]
        for k, v in part.items():
            self.tensors[k].index_copy_(0, slots, v)
        self.live = torch.cat([self.live, slots])

    def gather(self, idx: Tensor) -> Batch:
        """The buffered rows at buffer positions `idx` (new tensors)."""
        assert self.tensors is not None
        return _gather(self.tensors, self.live[idx])

    def keep(self, idx: Tensor) -> None:
        """Keep the rows at buffer positions `idx`, in that order; the others' slots become free."""
        self.live = self.live[idx]


class StreamingBatches:
    """Row groups read in file order through a shuffle buffer; memory ~ buffer_rows, not the split size."""

    def __init__(self, directory: str | Path, layout: FeatureLayout, batch_size: int, *, shuffle: bool,
                 buffer_rows: int = 262_144, seed: int = 0, drop_last: bool = False,
                 epoch_fn: Callable[[], int] | None = None) -> None:
        self.files = shard_files(directory)
        self.layout = layout
        self.batch_size = batch_size
        self.shuffle = shuffle
        # at least two batches: a drain keeps half the buffer for mixing and must still emit a batch
        self.buffer_rows = max(buffer_rows, 2 * batch_size)
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.epoch_fn = epoch_fn
        self.n = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def _row_groups(self) -> Iterator[pa.Table]:
        """The split's rows in file order: whole row groups to shuffle (the buffer mixes them), batch-sized slices
        of them in order (evaluation). Measured on the 20M-row demo's valid split, the loader alone: decoding
        131,072-row groups whole raised the process by ~450 MB, 16,384-row slices by ~140 MB."""
        for f in self.files:
            pf = pq.ParquetFile(f)
            if self.shuffle:
                for i in range(pf.num_row_groups):
                    yield pf.read_row_group(i)
            else:
                for batch in pf.iter_batches(batch_size=self.batch_size):
                    yield pa.Table.from_batches([batch])

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.epoch = epoch + 1
        pool = _RowPool()
        for rg in self._row_groups():
            pool.add(table_to_tensors(rg, self.layout))
            while pool.rows >= self.buffer_rows:
                # shuffled: keep half the buffer to mix with the next row groups; in order: keep only the rest
                yield from self._drain(pool, g, keep=self.buffer_rows // 2 if self.shuffle else 0)
        if pool.rows:
            yield from self._drain(pool, g, keep=0)
            if pool.rows and not self.drop_last:
                yield pool.gather(torch.arange(pool.rows))

    def _drain(self, pool: _RowPool, g: torch.Generator, keep: int) -> Iterator[Batch]:
        n = pool.rows
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        emit = ((n - keep) // self.batch_size) * self.batch_size
        for lo in range(0, emit, self.batch_size):
            yield pool.gather(order[lo: lo + self.batch_size])
        pool.keep(order[emit:])


class RankStreamingBatches(StreamingBatches):
    """One rank's streaming training batches: Parquet row groups are dealt round-robin to the ranks (rotated by one
    rank per epoch, so every rank meets all the data over epochs), read through the shuffle buffer, and every rank
    stops after the same number of full batches: those of the rank with the fewest rows."""

    def __init__(self, directory: str | Path, layout: FeatureLayout, batch_size: int, *, rank: int,
                 world_size: int, buffer_rows: int = 262_144, seed: int = 0,
                 epoch_fn: Callable[[], int] | None = None) -> None:
        super().__init__(directory, layout, batch_size, shuffle=True, buffer_rows=buffer_rows, seed=seed,
                         drop_last=True, epoch_fn=epoch_fn)
        self.rank = rank
        self.world_size = world_size
        self.groups = [(f, i, pq.ParquetFile(f).metadata.row_group(i).num_rows)
                       for f in self.files for i in range(pq.ParquetFile(f).num_row_groups)]
        per_rank = [sum(r for j, (_, _, r) in enumerate(self.groups) if j % world_size == k) for k in range(world_size)]
        self.num_batches = min(per_rank) // batch_size
        if self.num_batches == 0:
            raise ValueError(
                f"{directory}: streaming over {world_size} workers needs every worker to get at least one batch "
                f"({batch_size} rows) of row groups; found {len(self.groups)} row groups giving rows per worker "
                f"{per_rank}. Write the split with smaller Parquet row groups, lower train.batch_size, or set "
                f"train.streaming: false")
        self.n = self.num_batches * batch_size
        self._groups_epoch = 0

    def __len__(self) -> int:
        return self.num_batches

    def _row_groups(self) -> Iterator[Any]:
        owner = (self.rank + self._groups_epoch) % self.world_size
        for j, (f, i, _) in enumerate(self.groups):
            if j % self.world_size == owner:
                yield pq.ParquetFile(f).read_row_group(i)

    def __iter__(self) -> Iterator[Batch]:
        self._groups_epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        it = super().__iter__()
        try:
            for _ in range(self.num_batches):
                yield next(it)
        finally:
            it.close()
