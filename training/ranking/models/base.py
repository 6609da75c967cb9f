"""What every CTR model shares: a typed config, the injected embedding layer, the dense input, logits out.

A model is a plain `nn.Module`: `forward(batch) -> logits (B)`. It knows nothing of Lightning, devices, losses
or file paths. Its config is a strict pydantic model (unknown keys are errors) registered with the model class.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn

from feature_store.config import StrictModel
from training.common.embedding import Backend, SparseEmbedding, build_embedding
from training.common.features import DENSE, FeatureLayout


class ModelConfig(StrictModel):
    """`train.model_params` holds one entry per model name; only the entry of `train.model` is used, but every
    entry is validated by its model's config class when the config loads (an unknown key is an error naming the
    file, line, model and key, and listing the model's keys). Every model has the
    keys of this table; the tables after it list each model's own.

    ```yaml
    train:
      model: dcnv2
      model_params:
        dcnv2: {embedding_dim: 32, cross_layers: 2, low_rank: 64}
    ```
    """

    embedding_dim: int = Field(16, gt=0, description="width of every field's embedding (sequences share their "
                                                     "source feature's table): the main capacity and memory knob")
    embedding_backend: Backend = Field(
        "auto", description="fused: all tables in one `nn.Embedding`, one lookup per batch; torchrec: TorchRec's "
                            "EmbeddingBagCollection on FBGEMM kernels (what sharded training needs); auto: fused on "
                            "a CUDA machine, torchrec on CPU (faster there, docs/benchmarks.md), fused where "
                            "TorchRec cannot load. Resolved once and saved with the model")
    embedding_init_std: float = Field(0.01, gt=0, description="standard deviation of the normal initialisation "
                                                              "of the embedding rows")


Activation = Literal["relu", "gelu", "silu"]


class MLPModelConfig(ModelConfig):
    """The options of a model's MLPs (`training.common.layers.MLP`): every model with an MLP part (all but `lr`
    and `fm`) has these keys; each model's section says which of its MLPs they apply to. Small scoring MLPs
    inside a model (DIN's activation unit, FinalMLP's feature gates) keep their own settings."""

    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden layer of the model's MLPs "
                                                         "(regularises a model that overfits the train split)")
    batch_norm: bool = Field(False, description="batch normalisation after each hidden layer of the model's MLPs")
    activation: Activation = Field("relu", description="activation of the hidden layers of the model's MLPs")

    def mlp_options(self) -> dict[str, Any]:
        """The keyword arguments of `MLP` these keys set: `MLP(in_dim, widths, **cfg.mlp_options())`."""
        return {"dropout": self.dropout, "batch_norm": self.batch_norm, "activation": self.activation}


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

    # A model whose logits start with linear layers over one flat input (`flat_input(batch)`, laid out as
    # `flat_input_features` names it) sets `splittable` and implements `flat_input`, `first_linears` and
    # `forward_from(x0, [layer(x0) for layer in first_linears()])`: serving then computes those first layers
    # once per item and once per request instead of once per (request, item) pair (serving.inference.SplitScorer).
    splittable = False

    @staticmethod
    def dense(batch: dict[str, Tensor]) -> Tensor:
        return batch[DENSE]

    def flat_input_features(self) -> list[str]:
        """The feature each column of [flattened fields, dense] comes from: a field's `embedding_dim` columns
        (sparse fields, then bags, then pooled sequences), then the numeric columns and the vectors' columns."""
        d = self.cfg.embedding_dim
        lay = self.layout
        names = [f.name for f in (*lay.sparse, *lay.bags)] + [s.name for s in lay.sequences]
        out = [n for n in names for _ in range(d)] + list(lay.dense_names)
        for name, dim in lay.vector_dims.items():
            out += [name] * dim
        return out

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
