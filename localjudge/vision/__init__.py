"""Vision models behind one small protocol, so the ONNX Runtime backend can stand beside the torch one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from .cards import CardError, ModelCard, list_cards, load_card
from .torch_backend import TorchVisionModel, WeightsError, embedded_weights_path


class VisionModel(Protocol):
    card: ModelCard
    backend: str

    def predict(self, batch: torch.Tensor) -> np.ndarray: ...


BACKENDS = {"torch": TorchVisionModel}


def open_model(card: ModelCard, weights: Path | None, device: str, backend: str = "torch") -> VisionModel:
    if backend not in BACKENDS:
        raise CardError(f"unknown vision backend {backend!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[backend](card, weights=weights, device=device)


def model_hash(card: ModelCard, weights: Path | None, hash_file: Callable[[Path], str]) -> str:
    """Identity of the model's parameters without loading it: the weights file's sha256."""
    path = weights or embedded_weights_path(card)
    if path is None:
        # torchvision architectures are built with a fixed seed when no weights are given.
        return f"random-init:{card.framework}:{card.architecture}:seed0"
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    return "sha256:" + hash_file(path)


__all__ = ["VisionModel", "ModelCard", "CardError", "WeightsError", "list_cards", "load_card", "open_model",
           "model_hash", "BACKENDS"]
