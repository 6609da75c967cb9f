"""DeepCTR-Torch, the peer of the CTR benchmarks (the `bench` extra): imported offline and quietly, fed our prepared
columns, built at our model sizes, timed through its own `fit`, and the body of its fit loop for profiles.

Columns: each single-valued field as a `SparseFeat` (vocabulary = our cardinality), each bag and behaviour sequence
as a mean-pooled `VarLenSparseFeat` with its lengths (a sequence shares its source field's embedding), dense
features as `DenseFeat(1)` per column (one `DenseFeat` over the block where a feature is wider). Inputs are float32,
the dtype their fit casts to (ids below 2^24 are exact).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scripts.bench.common import load1
from scripts.bench.ctr import EMB_DIM, PARAMS, cycle
from scripts.bench.timing import sync
from training.common.data import InMemoryBatches
from training.common.features import DENSE, LABEL, SPARSE, FeatureLayout, bag_key, bag_len_key, seq_key, seq_len_key

KINDS = ("dcn", "dcn_matrix", "dcn_vector", "deepfm")  # dcn = dcn_matrix (DCN-M, the DCNv2 cross)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """deepctr_torch asks PyPI for a newer version in a thread at import; keep that off the network and quiet."""
    import requests

    real_get = requests.get

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise requests.ConnectionError("no network calls during a benchmark")

    before = set(threading.enumerate())
    requests.get = refuse  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
            for t in set(threading.enumerate()) - before:
                t.join(timeout=10)
    finally:
        requests.get = real_get  # type: ignore[assignment]


@functools.cache
def load() -> tuple[ModuleType | None, str]:
    """deepctr_torch (models, inputs and callbacks imported), or None and why it cannot be used here."""
    if importlib.util.find_spec("deepctr_torch") is None:
        return None, "DeepCTR-Torch is not installed (pip install --no-deps deepctr_torch to compare)"
    try:
        with _offline():
            import deepctr_torch
            import deepctr_torch.callbacks
            import deepctr_torch.inputs
            import deepctr_torch.models
    except Exception as e:  # its own imports (sklearn, tqdm, requests) may be missing on a bare GPU machine
        return None, f"DeepCTR-Torch is installed but does not import ({type(e).__name__}: {e})"
    return deepctr_torch, ""


def require(bench: str) -> ModuleType:
    """deepctr_torch, or exit saying why the benchmark cannot compare with it."""
    lib, why = load()
    if lib is None:
        raise SystemExit(f"{bench}: the peer needs deepctr-torch (pip install -e '.[bench]'): {why}")
    return lib


def _block_dense(layout: FeatureLayout) -> bool:
    return layout.dense_dim != len(layout.dense_names)


def columns(lib: ModuleType, layout: FeatureLayout, dim: int) -> list[Any]:
    """Their feature columns for our layout (see the module docstring)."""
    inputs = lib.inputs
    cards = {f.name: f.cardinality for f in layout.tables}
    cols: list[Any] = [inputs.SparseFeat(f.name, vocabulary_size=f.cardinality, embedding_dim=dim)
                       for f in layout.sparse]
    cols += [inputs.VarLenSparseFeat(inputs.SparseFeat(f.name, vocabulary_size=f.cardinality, embedding_dim=dim),
                                     maxlen=f.max_len, combiner="mean", length_name=f"{f.name}__len")
             for f in layout.bags]
    cols += [inputs.VarLenSparseFeat(inputs.SparseFeat(s.name, vocabulary_size=cards[s.source], embedding_dim=dim,
                                                       embedding_name=s.source),
                                     maxlen=s.max_len, combiner="mean", length_name=f"{s.name}__len")
             for s in layout.sequences]
    if _block_dense(layout):
        cols.append(inputs.DenseFeat(DENSE, layout.dense_dim))
    else:
        cols += [inputs.DenseFeat(name, 1) for name in layout.dense_names]
    return cols


def inputs(tensors: dict[str, Tensor], layout: FeatureLayout, rows: int | None = None
           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Our loaded split (`load_split` / `table_to_tensors` tensors) as their input dict and labels, float32."""
    t = {k: v[:rows].numpy() for k, v in tensors.items()}
    x = {f.name: t[SPARSE][:, i] for i, f in enumerate(layout.sparse)}
    for f in layout.bags:
        x[f.name], x[f"{f.name}__len"] = t[bag_key(f.name)], t[bag_len_key(f.name)]
    for s in layout.sequences:
        x[s.name], x[f"{s.name}__len"] = t[seq_key(s.name)], t[seq_len_key(s.name)]
    if _block_dense(layout):
        x[DENSE] = t[DENSE]
    else:
        x |= {name: t[DENSE][:, j] for j, name in enumerate(layout.dense_names)}
    return {k: v.astype(np.float32) for k, v in x.items()}, t[LABEL].astype(np.float32)


def build(lib: ModuleType, kind: str, layout: FeatureLayout, *, dim: int, mlp: Sequence[int], cross_layers: int = 3,
          linear: bool = True, zero_l2: bool = False, seed: int = 0, device: str = "cpu", lr: float = 1e-3) -> Any:
    """Their `DCN` (`kind` dcn / dcn_matrix: DCN-M; dcn_vector: the original DCN) or `DeepFM` with our sizes,
    compiled with Adam(lr) and binary cross-entropy. `linear`: the linear part gets the same columns (else none);
    `zero_l2`: every L2 term 0, so the loss is plain BCE like ours (else the library's defaults)."""
    if kind not in KINDS:
        raise ValueError(f"unknown peer model '{kind}'; choose one of {KINDS}")
    cols = columns(lib, layout, dim)
    l2 = {"l2_reg_linear": 0, "l2_reg_embedding": 0, "l2_reg_dnn": 0} if zero_l2 else {}
    common = {"dnn_hidden_units": tuple(mlp), "seed": seed, "device": device, **l2}
    with contextlib.redirect_stdout(io.StringIO()):
        if kind == "deepfm":
            model = lib.models.DeepFM(cols if linear else [], cols, **common)
        else:
            model = lib.models.DCN(cols if linear else [], cols, cross_num=cross_layers,
                                   cross_parameterization="vector" if kind == "dcn_vector" else "matrix",
                                   **common, **({"l2_reg_cross": 0} if zero_l2 else {}))
        model.compile(torch.optim.Adam(model.parameters(), lr=lr), "binary_crossentropy")
    return model


def counterpart(lib: ModuleType, ours: str, layout: FeatureLayout, device: str = "cpu") -> Any:
    """Their model for our `ours` at `PARAMS` sizes, L2 terms 0 (the loss is plain BCE, like ours): for dcnv2 their
    DCN-M without a linear part (our DCNv2 has none), for deepfm their DeepFM with its linear part (ours has its LR
    term); seed 0. DeepCTR-Torch has no DLRM."""
    return build(lib, "deepfm" if ours == "deepfm" else "dcn", layout, dim=EMB_DIM, mlp=PARAMS[ours]["mlp"],
                 cross_layers=PARAMS["dcnv2"]["cross_layers"], linear=ours == "deepfm", zero_l2=True, device=device)


def embedding_params(model: Any) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "embedding_dict" in n]


@dataclass
class FitTiming:
    """Their timed `fit` epoch: rows, wall and process CPU seconds, the epoch's loss, the load when it started."""

    rows: int
    seconds: float
    cpu_seconds: float
    loss: float
    load: float


def timed_fit(lib: ModuleType, model: Any, x: dict[str, np.ndarray], y: np.ndarray, batch_size: int, *,
              warm_rows: int, rows: int, device: torch.device | None = None) -> FitTiming:
    """Their `fit` twice on one model (its optimizer state persists): a warm-up epoch over the first `warm_rows`
    rows, then an epoch over the first `rows` rows timed from their `on_epoch_begin` to their `on_epoch_end`
    callback (input concatenation, TensorDataset and model construction excluded; their DataLoader included)."""

    class EpochClock(lib.callbacks.Callback):  # type: ignore[name-defined,misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.begin = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            sync(device)
            self.end = (time.perf_counter(), time.process_time())

    clock = EpochClock()
    with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and sample counts
        model.fit({k: v[:warm_rows] for k, v in x.items()}, y[:warm_rows], batch_size=batch_size, epochs=1,
                  verbose=0, shuffle=True)
        start_load = load1()
        history = model.fit({k: v[:rows] for k, v in x.items()}, y[:rows], batch_size=batch_size, epochs=1,
                            verbose=0, shuffle=True, callbacks=[clock])
    wall = clock.end[0] - clock.begin[0]
    return FitTiming(rows, wall, clock.end[1] - clock.begin[1], float(history.history["loss"][-1]), start_load)


def fit_step(model: Any, x: dict[str, np.ndarray], y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0
             ) -> Callable[[], Tensor]:
    """The body of their fit loop (forward, their loss with reduction='sum' plus regularisation, backward, their
    optimizer) over batches of `x` held on the model's device: their DataLoader and per-step .item() calls left
    out. `shuffle=False` takes contiguous slices (no gather), `shuffle=True` shuffled gathers on the device."""
    feats = np.concatenate([x[k] if x[k].ndim == 2 else x[k][:, None] for k in model.feature_index], axis=1)
    data = {"x": torch.from_numpy(feats).to(model.device), LABEL: torch.from_numpy(y).to(model.device)}
    it = cycle(InMemoryBatches(data, batch_size, shuffle=shuffle, seed=seed, drop_last=True))
    model.train()

    def step() -> Tensor:
        b = next(it)
        pred = model(b["x"]).squeeze(-1)
        model.optim.zero_grad()
        loss = model.loss_func(pred, b[LABEL], reduction="sum") + model.get_regularization_loss() + model.aux_loss
        loss.backward()
        model.optim.step()
        return loss.detach()

    return step
