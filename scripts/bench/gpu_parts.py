"""`scripts.bench.gpu` besides CTR training throughput: its Criteo-schema data, the one-epoch quality check, exact
top-100 search on torch and two-tower training throughput.

- Quality: DCNv2 trained one epoch on `--auc-rows` rows (90/10 split) on the GPU in bf16 and on the CPU in fp32
  from the same initial weights and batch order, then scored on the test split (AUC, logloss).
- Search: `torch_exact` over `--items` x `--dim` unit vectors (the data of scripts.bench.index), top-100 through
  `ItemIndex.search` at each `--query-batches` (queries/s), with and without exclusions, against torch_exact on
  the CPU of the same machine; FAISS IVF-Flat / HNSW on the CPU only where faiss is importable.
- Two-tower: `TwoTower` + `sampled_softmax_loss` (logQ) on synthetic ids, batch `--tt-batch`, bf16, Adam.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from feature_store.readers.synthetic import generate_criteo_schema
from scripts.bench.common import clustered, logger, unit_rows
from scripts.bench.ctr import Batch, TaskSteps, autocast, build_ours, cycle, predict
from scripts.bench.timing import free, sync, time_steps
from training.common.data import InMemoryBatches
from training.common.features import (
    DENSE,
    LABEL,
    SPARSE,
    FeatureLayout,
    Field,
    SequenceField,
    seq_key,
    seq_len_key,
)
from training.common.metrics import auc, logloss
from training.index.build import build_index
from training.index.config import IndexConfig
from training.index.faiss_index import ItemIndex
from training.index.torch_exact import TorchExactIndex

N_DENSE, N_SPARSE, K = 13, 26, 100
log = logger("bench_gpu")


def criteo_layout(n_ids: int) -> FeatureLayout:
    return FeatureLayout(sparse=tuple(Field(f"C{i}", n_ids + 1) for i in range(1, N_SPARSE + 1)), bags=(),
                         sequences=(), dense_names=tuple(f"I{j}" for j in range(1, N_DENSE + 1)), dense_dim=N_DENSE)


def criteo_tensors(rows: int, n_ids: int, seed: int, train_rows: int | None = None) -> Batch:
    """`generate_criteo_schema` rows as model inputs: ids as they are (1..n_ids; 0 unused), I1..I13 as
    log1p then standardised with the stats of the first `train_rows` rows (missing -> 0 = the mean)."""
    table = generate_criteo_schema(rows, n_ids=n_ids, seed=seed)
    fit = slice(0, train_rows or rows)
    sparse = np.stack([table.column(f"C{i}").to_numpy() for i in range(1, N_SPARSE + 1)], axis=1)
    dense = np.empty((rows, N_DENSE), dtype=np.float32)
    for j in range(N_DENSE):
        x = np.log1p(np.maximum(table.column(f"I{j + 1}").to_numpy(zero_copy_only=False).astype(np.float64), 0))
        mean, std = np.nanmean(x[fit]), np.nanstd(x[fit]) + 1e-9
        dense[:, j] = np.nan_to_num((x - mean) / std, nan=0.0)
    return {SPARSE: torch.from_numpy(sparse.astype(np.int64)), DENSE: torch.from_numpy(dense),
            LABEL: torch.from_numpy(table.column("label").to_numpy().astype(np.float32))}


def one_epoch(train: Batch, test: Batch, layout: FeatureLayout, device: torch.device, use_bf16: bool,
              args: argparse.Namespace) -> dict[str, Any]:
    """DCNv2 trained one epoch (same initial weights and batch order on every device), scored on `test`."""
    resident = device if device.type == "cuda" else None
    batches = InMemoryBatches(train, args.auc_batch, shuffle=True, seed=args.seed, device=resident)
    it = iter(batches)
    step = TaskSteps(build_ours("dcnv2", layout, device=device),
                     lambda: {k: v.to(device, non_blocking=True) for k, v in next(it).items()}, bf16=use_bf16,
                     device_type=device.type)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(len(batches)):
        last = step()
    sync(device)
    seconds = time.perf_counter() - t0
    p = predict(step.task.model, InMemoryBatches(test, 65536, shuffle=False), use_bf16, device)
    del step
    free(device)
    return {"device": str(device), "precision": "bf16" if use_bf16 else "fp32", "train_s": seconds,
            "samples_per_s": len(train[LABEL]) / seconds, "final_train_loss": float(last),
            "test_auc": auc(test[LABEL], p), "test_logloss": logloss(test[LABEL], p)}


def bench_quality(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    n_train = args.auc_rows - args.auc_rows // 10
    log(f"quality data: {args.auc_rows:,} rows ({n_train:,} train), ids up to {args.auc_n_ids:,} (not timed)")
    data = criteo_tensors(args.auc_rows, args.auc_n_ids, args.seed + 1, train_rows=n_train)
    train = {k: v[:n_train].contiguous() for k, v in data.items()}
    test = {k: v[n_train:].contiguous() for k, v in data.items()}
    layout = criteo_layout(args.auc_n_ids)
    runs = [one_epoch(train, test, layout, device, True, args)]
    log(f"one epoch on {device} bf16: test AUC {runs[0]['test_auc']:.4f} ({runs[0]['train_s']:.1f} s)")
    runs.append(one_epoch(train, test, layout, torch.device("cpu"), False, args))
    log(f"one epoch on cpu fp32: test AUC {runs[1]['test_auc']:.4f} ({runs[1]['train_s']:.1f} s)")
    out["quality"] = {"rows": args.auc_rows, "train_rows": n_train, "n_ids": args.auc_n_ids,
                      "batch": args.auc_batch, "runs": runs}


def qps(item: ItemIndex, queries: np.ndarray, batch: int, seconds: float, **exclusions: Any) -> dict[str, float]:
    """Queries/s of `ItemIndex.search(top-100)` calls of `batch` queries, repeated for about `seconds`."""
    calls = max(len(queries) // batch, 1)

    def call(i: int) -> None:
        lo = (i % calls) * batch
        ex = {k: (v[lo: lo + batch] if k == "exclude" else v) for k, v in exclusions.items()}
        item.search(queries[lo: lo + batch], K, **ex)

    call(0)  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < 3 or time.perf_counter() - t0 < seconds:
        call(done)
        done += 1
    elapsed = time.perf_counter() - t0
    return {"batch": batch, "qps": done * batch / elapsed, "ms_per_call": 1e3 * elapsed / done, "calls": done}


def bench_search(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    rng = np.random.default_rng(args.seed)
    log(f"search data: {args.items:,} x {args.dim} unit vectors, {args.queries:,} queries (not timed)")
    centres = unit_rows(rng.standard_normal((1000, args.dim), dtype=np.float32))  # 1000 random unit centres
    vectors, queries = clustered(args.items, centres, 1.0, rng), clustered(args.queries, centres, 1.0, rng)
    ids = np.arange(args.items, dtype=np.int64)
    cfg = {"type": "torch_exact", "chunk_items": args.chunk_items, "query_batch": args.query_batch, "recall_k": K,
           "recall_queries": args.recall_queries}
    item = build_index(vectors, ids, IndexConfig(device=device.type, **cfg), queries)
    exclude = [rng.choice(args.items, 100) for _ in range(len(queries))]
    excl_all = rng.choice(args.items, args.items // 100, replace=False)
    res: dict[str, Any] = {"items": args.items, "dim": args.dim, "k": K, "device": item.device,
                           "chunk_items": args.chunk_items, "query_batch": args.query_batch, "recall": item.recall,
                           "build_s": item.timings, "exclusions": "100 ids per query + 1% of the corpus for all"}
    res["torch_exact"] = [qps(item, queries, b, args.search_seconds) for b in args.query_batches]
    res["torch_exact_excl"] = [qps(item, queries, b, args.search_seconds, exclude=exclude, exclude_all=excl_all)
                               for b in args.query_batches]
    for r in res["torch_exact"]:
        log(f"torch_exact {item.device} batch {r['batch']}: {r['qps']:,.0f} q/s ({r['ms_per_call']:.2f} ms/call)")
    del item
    free(device)
    if device.type == "cuda":
        cpu = ItemIndex(TorchExactIndex(vectors, device="cpu", chunk_items=args.chunk_items,
                                        query_batch=args.query_batch, copy=False), ids,
                        {"type": "torch_exact", "device": "cpu"}, {})
        res["torch_exact_cpu"] = [qps(cpu, queries, b, args.search_seconds) for b in args.query_batches if b > 1]
    res["faiss"] = bench_faiss(args, vectors, ids, queries) if importlib.util.find_spec("faiss") else None
    out["search"] = res


def bench_faiss(args: argparse.Namespace, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray
                ) -> list[dict[str, Any]]:
    """FAISS on the CPU of this machine (IVF-Flat and HNSW with scripts.bench.index's fastest >= 0.95-recall
    settings)."""
    rows = []
    nlist = max(1, min(len(ids) // 39, round(4 * math.sqrt(len(ids)))))
    for kind, knobs in (("ivf_flat", {"nlist": nlist, "nprobe": min(8, nlist)}),
                        ("hnsw", {"hnsw_m": 32, "ef_search": 128})):
        log(f"faiss {kind} {knobs}: building over {len(ids):,} vectors")
        item = build_index(vectors, ids, IndexConfig(type=kind, recall_floor=1e-6, recall_k=K,
                                                     recall_queries=args.recall_queries, **knobs), queries)
        rows.append({"type": kind, "params": knobs, "recall": item.recall["recall_at_k"],
                     "build_s": item.timings["train"] + item.timings["add"],
                     "qps": [qps(item, queries, b, args.search_seconds) for b in args.query_batches]})
    return rows


def bench_two_tower(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    try:
        from training.retrieval.config import TwoTowerConfig
        from training.retrieval.layout import TowerLayout
        from training.retrieval.model import TwoTower, sampled_softmax_loss
    except ImportError as e:
        out["two_tower"] = {"skipped": f"training.retrieval does not import here ({e})"}
        log(f"two-tower skipped: {out['two_tower']['skipped']}")
        return
    n, seq_len = args.tt_ids, 20
    layout = FeatureLayout(sparse=(Field("user_id", n + 1), Field("item_id", n + 1), Field("category", 1001)),
                           bags=(), sequences=(SequenceField("hist_items", "item_id", seq_len),), dense_names=(),
                           dense_dim=0)
    towers = TowerLayout(layout=layout, user_fields=(0,), item_fields=(1, 2), user_sequences=("hist_items",),
                         user_dense=(), item_dense=())
    rng = np.random.default_rng(args.seed)
    rows = args.tt_pool

    def zipf(size: Any) -> np.ndarray:
        return (rng.zipf(1.2, size) - 1) % n + 1

    items = zipf(rows)
    lengths = rng.integers(0, seq_len + 1, rows)
    hist = zipf((rows, seq_len)) * (np.arange(seq_len)[None] < lengths[:, None])
    data = {SPARSE: torch.from_numpy(np.stack([zipf(rows), items, items % 1000 + 1], axis=1).astype(np.int64)),
            DENSE: torch.zeros((rows, 0)), seq_key("hist_items"): torch.from_numpy(hist.astype(np.int64)),
            seq_len_key("hist_items"): torch.from_numpy(lengths.astype(np.int64))}
    freq = np.bincount(items, minlength=n + 1).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(freq / freq.sum()).astype(np.float32)).to(device)
    torch.manual_seed(0)
    cfg = TwoTowerConfig()
    with torch.device(device):
        model = TwoTower(towers, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    it = cycle(InMemoryBatches(data, args.tt_batch, shuffle=True, seed=args.seed, drop_last=True, device=device))

    def step() -> Tensor:
        batch = next(it)
        codes = batch[SPARSE][:, 1]
        with autocast(device.type, device.type == "cuda"):
            user, item = model(batch)
            loss = sampled_softmax_loss(user, item, codes, log_q[codes], model.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    t = time_steps(step, args.warmup, args.tt_steps, device)
    out["two_tower"] = {"batch": args.tt_batch, "ids": n, "history": seq_len, "embedding_dim": cfg.embedding_dim,
                        "output_dim": cfg.output_dim, "precision": "bf16" if device.type == "cuda" else "fp32",
                        "samples_per_s": args.tt_steps * args.tt_batch / t.seconds}
    log(f"two-tower batch {args.tt_batch}: {out['two_tower']['samples_per_s']:,.0f} samples/s")
