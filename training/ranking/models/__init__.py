"""The CTR model zoo: one file per model, a registry by name, configs validated at the edge.

`build_model(name, layout, params)` validates `params` against the model's config class (unknown keys are
errors naming the model and key) and returns the `nn.Module`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from training.common.embedding import SparseEmbedding, resolve_backend
from training.common.features import FeatureLayout
from training.ranking.models.base import CTRModel, ModelConfig
from training.ranking.models.dcnv2 import DCNv2
from training.ranking.models.deepfm import DeepFM
from training.ranking.models.din import DIN
from training.ranking.models.dlrm import DLRM
from training.ranking.models.finalmlp import FinalMLP
from training.ranking.models.fm import FM
from training.ranking.models.lr import LR
from training.ranking.models.wide_deep import WideDeep

MODELS: dict[str, type[CTRModel]] = {
    "lr": LR,
    "fm": FM,
    "wide_deep": WideDeep,
    "deepfm": DeepFM,
    "dcnv2": DCNv2,
    "dlrm": DLRM,
    "din": DIN,
    "finalmlp": FinalMLP,
}


def register(name: str, cls: type[CTRModel]) -> None:
    MODELS[name] = cls


def model_config(name: str, params: dict[str, Any] | None = None) -> ModelConfig:
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}")
    cls = MODELS[name].config_class
    try:
        return cls.model_validate(params or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"model '{name}' config: {problems}") from None


def build_model(name: str, layout: FeatureLayout, params: dict[str, Any] | ModelConfig | None = None,
                embedding: SparseEmbedding | None = None) -> CTRModel:
    cfg = params if isinstance(params, ModelConfig) else model_config(name, params)
    if cfg.embedding_backend == "auto":  # resolved once, so a saved model reloads with the same backend
        cfg = cfg.model_copy(update={"embedding_backend": resolve_backend("auto")})
    return MODELS[name](layout, cfg, embedding)
