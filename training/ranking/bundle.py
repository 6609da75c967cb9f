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


def load_bundle(directory: str | Path, *, map_location: str = "cpu") -> Ranker:
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
    model = build_model(info["model"], layout, cfg)
    model.load_state_dict(load_weights(d / "state_dict.pt", map_location))
    return Ranker(model.eval(), spec, layout, info)
