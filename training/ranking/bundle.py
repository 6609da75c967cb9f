"""The ranker bundle: everything needed to score raw rows, in one directory that travels with the model.

Layout: `bundle.json` (format, model name, model config, metrics), `state_dict.pt`, `spec/` (the feature spec
the model was trained with, so serving can never meet a vocabulary the model did not see) and, when export
succeeds, `program.pt2` (a torch.export program of the eval-mode model). `Ranker.score(raw_rows)` runs the
same `FeatureSpec.transform` + `table_to_tensors` path as training.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from feature_store.spec import FeatureSpec
from training.common.data import table_to_tensors
from training.common.features import LABEL, FeatureLayout
from training.common.weights import load_weights
from training.ranking.models import CTRModel, build_model, model_config

BUNDLE_FORMAT = "recforge.ranker"
BUNDLE_VERSION = 1


def save_bundle(directory: str | Path, *, model_name: str, model: CTRModel, spec_dir: str | Path,
                metrics: Mapping[str, Any] | None = None, example: dict[str, torch.Tensor] | None = None) -> Path:
    d = Path(directory)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    shutil.copytree(spec_dir, d / "spec")
    model = model.eval().cpu()
    torch.save(model.state_dict(), d / "state_dict.pt")
    exported = False
    if example is not None:
        try:
            example = {k: v[:8].cpu() for k, v in example.items() if k != LABEL}
            program = torch.export.export(model, (example,), strict=False)
            torch.export.save(program, d / "program.pt2")
            exported = True
        except Exception:
            exported = False
    doc = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "model": model_name,
        "model_config": model.cfg.model_dump(mode="json"),
        "spec_fingerprint": FeatureSpec.load(d / "spec").fingerprint(),
        "exported_program": exported,
        "metrics": dict(metrics or {}),
    }
    (d / "bundle.json").write_text(json.dumps(doc, indent=2, default=float))
    return d


@dataclass
class Ranker:
    """A loaded bundle: the model in eval mode, its spec and layout."""

    model: CTRModel
    spec: FeatureSpec
    layout: FeatureLayout
    info: dict[str, Any]
    inference: Any = None  # what a server scores with instead of `model` (same outputs), when it sets one

    @torch.no_grad()
    def score(self, rows: pa.Table | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Raw rows (same columns as the prepared events) -> click probabilities."""
        table = self.spec.transform(rows, with_label=False)
        batch = table_to_tensors(table, self.layout)
        return torch.sigmoid(self.model(batch).float()).numpy()


def load_bundle(directory: str | Path, *, map_location: str = "cpu", fused: bool = False) -> Ranker:
    """The bundle in `directory` as a `Ranker`. `fused`: for inference, every embedding in one table
    (`training.common.embedding.fuse_embeddings`: same outputs, one gather instead of a KeyedJaggedTensor per
    request); a model trained with TorchRec's embeddings is then built fused and its tables' weights stacked into
    the fused one (`_fused_state`), so TorchRec is not even imported: 1.4-2.4 s of every serving replica's start on
    a 2-core machine. A model whose TorchRec arch reads the collection itself (`keeps_torchrec_embedding`) is built
    as trained."""
    d = Path(directory)
    path = d / "bundle.json"
    if not path.is_file():
        raise FileNotFoundError(f"{d}: not a RecForge ranker bundle (no bundle.json)")
    info = json.loads(path.read_text())
    if info.get("format") != BUNDLE_FORMAT or info["version"] > BUNDLE_VERSION:
        raise ValueError(f"{path}: unsupported bundle format {info.get('format')!r} v{info.get('version')}")
    spec = FeatureSpec.load(d / "spec")
    layout = FeatureLayout.from_spec(spec)
    cfg = model_config(info["model"], info["model_config"])
    state = load_weights(d / "state_dict.pt", map_location)
    model = None
    if fused and cfg.embedding_backend == "torchrec":
        model = build_model(info["model"], layout, cfg.model_copy(update={"embedding_backend": "fused"}))
        stacked = _fused_state(model, state)
        if stacked is None:  # not the trained structure with fused tables (TorchRec's own DLRM arch)
            model = None
        else:
            model.load_state_dict(stacked)
    if model is None:
        model = build_model(info["model"], layout, cfg)
        model.load_state_dict(state)
        if fused:
            from training.common.embedding import fuse_embeddings

            fuse_embeddings(model)
    return Ranker(model.eval(), spec, layout, info)


def _fused_state(model: CTRModel, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A TorchRec-embedding state dict for `model` (the same model built with fused embeddings): each embedding's
    per-table weights (`<prefix>.ebc.embedding_bags.t_<field>.weight`) stacked in the layout's table order into
    `<prefix>.weight.weight`. None when the keys do not map one to one onto `model`'s (a structure that differs
    beyond the embeddings), so the caller builds the model as trained instead."""
    from training.common.embedding import FusedEmbedding, table_name

    out = dict(state)
    for prefix, module in model.named_modules():
        if not isinstance(module, FusedEmbedding):
            continue
        at = f"{prefix}." if prefix else ""
        keys = [f"{at}ebc.embedding_bags.{table_name(f.name)}.weight" for f in module.layout.tables]
        if not keys or any(k not in out for k in keys):
            return None
        out[f"{at}weight.weight"] = torch.cat([out.pop(k) for k in keys])
    return out if out.keys() == model.state_dict().keys() else None
