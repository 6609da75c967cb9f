"""What every CTR model shares: a typed config, the injected embedding layer, the dense input, logits out.

A model is a plain `nn.Module`: `forward(batch) -> logits (B)`. It knows nothing of Lightning, devices, losses
or file paths. Its config is a strict pydantic model (unknown keys are errors) registered with the model class.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from feature_store.config import StrictModel
from training.common.embedding import Backend, SparseEmbedding, build_embedding
from training.common.features import DENSE, FeatureLayout


class ModelConfig(StrictModel):
    """Options every model has; each model's config extends it."""

    embedding_dim: int = Field(16, gt=0)
    embedding_backend: Backend = "auto"
    embedding_init_std: float = Field(0.01, gt=0)


class CTRModel(nn.Module):
    """Base: holds the layout, the embedding layer (injected or built) and the dense width."""

    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, layout: FeatureLayout, cfg: ModelConfig, embedding: SparseEmbedding | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.cfg = cfg
        self.embedding = embedding or build_embedding(layout, cfg.embedding_dim, cfg.embedding_backend,
                                                      init_std=cfg.embedding_init_std)
        self.dense_dim = layout.dense_dim
        self.num_fields = layout.num_pooled + len(layout.sequences)

    @staticmethod
    def dense(batch: dict[str, Tensor]) -> Tensor:
        return batch[DENSE]

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
