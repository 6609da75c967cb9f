"""Loading saved weights: tensors and plain values only.

Checkpoints and bundles hold state dicts (tensors, numbers, strings, lists, dicts), never pickled objects, and are
loaded with `torch.load(weights_only=True)`: a file that needs full unpickling could run code on load (a model
version comes from the registry, i.e. from whoever could write a run's artifacts), so it is refused with a message
saying what to do rather than loaded.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class UnsafeWeightsError(ValueError):
    """A weights file holds pickled objects (or is not a torch file at all); the message names it."""


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`, with a clear error for a file that is not plain weights."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeWeightsError(
            f"{path}: not plain weights ({first[:200]}); RecForge loads tensors and plain values only (a pickled "
            f"object could run code when loaded): save the weights with torch.save(model.state_dict(), ...)"
        ) from None
