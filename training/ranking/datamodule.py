"""The ranking stage's Lightning DataModule over `<output_dir>/prepared/{train,valid,test}`.

`CTRDataModule` loads each split once as contiguous tensors (`training.common.data`) and hands out batches of a
seeded per-epoch permutation; under data parallelism each rank takes its share of every epoch and every rank
evaluates the whole valid/test split, so metrics agree without a gather. With `streaming` nothing is loaded whole:
the train split goes through a shuffle buffer (dealt to the ranks by Parquet row group, `RankStreamingBatches`)
and valid/test are read row group by row group in file order, so the loader's memory does not grow with the data
(docs/benchmarks.md, cost curves).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from feature_store.spec import FeatureSpec
from training.common.data import Batch, InMemoryBatches, RankStreamingBatches, StreamingBatches, load_split, num_rows
from training.common.features import FeatureLayout

log = logging.getLogger("recforge.data")


class CTRDataModule(pl.LightningDataModule):
    """Lightning DataModule over `<output_dir>/prepared`; `setup` loads the splits, `__init__` only stores."""

    def __init__(self, prepared_dir: str | Path, *, batch_size: int = 4096, eval_batch_size: int | None = None,
                 seed: int = 0, streaming: bool = False, buffer_rows: int = 262_144,
                 gpu_resident: bool | None = None, splits: Sequence[str] = ("train", "valid", "test")) -> None:
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size * 4
        self.seed = seed
        self.streaming = streaming
        self.buffer_rows = buffer_rows
        self.gpu_resident = gpu_resident
        self.splits = tuple(splits)
        self.spec: FeatureSpec | None = None
        self.layout: FeatureLayout | None = None
        self.tensors: dict[str, Batch] = {}

    def prepare_spec(self) -> FeatureLayout:
        if self.layout is None:
            self.spec = FeatureSpec.load(self.prepared_dir / "spec")
            self.layout = FeatureLayout.from_spec(self.spec)
        return self.layout

    def setup(self, stage: str | None = None) -> None:
        layout = self.prepare_spec()
        for split in self.splits:
            if split in self.tensors or self.streaming:
                continue
            self.tensors[split] = load_split(self.prepared_dir / split, layout)
            log.info("loaded %s: %d rows", split, num_rows(self.tensors[split]))

    def _device(self) -> torch.device | None:
        """Where the splits live: the CUDA device when resident (`gpu_resident`, or auto: the train split needs under
        40% of the free GPU memory), else None (the host; batches are then fed to the device pinned)."""
        root = self._cuda_root()
        if root is None:
            return None
        resident = self.gpu_resident
        if resident is None:
            free, _ = torch.cuda.mem_get_info(root)
            size = sum(t.numel() * t.element_size() for t in self.tensors.get("train", {}).values())
            resident = size < 0.4 * free
        return root if resident else None

    def _cuda_root(self) -> torch.device | None:
        """The trainer's CUDA device (where a split that is not resident is fed to), None off CUDA."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not torch.cuda.is_available():
            return None
        root = trainer.strategy.root_device
        return root if root.type == "cuda" else None

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _batches_done(self) -> int:
        """Training batches processed in the current epoch (what a mid-epoch checkpoint resumes after)."""
        trainer = getattr(self, "trainer", None)
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer is not None else 0

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _batches(self, split: str, train: bool) -> Any:
        epoch_fn = self._epoch if train else None
        rank, world = self._rank() if train else (0, 1)  # evaluation: every rank scores the whole split
        if train and self.streaming and world > 1:  # row groups dealt to the ranks
            return RankStreamingBatches(self.prepared_dir / split, self.prepare_spec(), self.batch_size, rank=rank,
                                        world_size=world, buffer_rows=self.buffer_rows, seed=self.seed,
                                        epoch_fn=epoch_fn)
        if self.streaming:  # evaluation streams too, in file order: memory stays flat as the data grows
            return StreamingBatches(self.prepared_dir / split, self.prepare_spec(),
                                    self.batch_size if train else self.eval_batch_size, shuffle=train,
                                    buffer_rows=self.buffer_rows if train else 0, seed=self.seed, epoch_fn=epoch_fn)
        device = self._device()
        return InMemoryBatches(self.tensors[split], self.batch_size if train else self.eval_batch_size,
                               shuffle=train, seed=self.seed, device=device,
                               pin_memory=torch.cuda.is_available(), epoch_fn=epoch_fn, rank=rank,
                               world_size=world, progress_fn=self._batches_done if train else None,
                               feed_device=self._cuda_root() if device is None else None)

    def train_dataloader(self) -> Any:
        return self._batches("train", train=True)

    def val_dataloader(self) -> Any:
        return self._batches("valid", train=False)

    def test_dataloader(self) -> Any:
        return self._batches("test", train=False)
