"""Runs a CAM method on a vision model of either backend, a batch at a time, without leaving the model's device
until the final maps. The explained score is given to the backend as a cotangent on the model's output: a one-hot
class for classifiers, the class's predicted region for segmentation (pytorch-grad-cam's
SemanticSegmentationTarget), so the backend returns dScore/dActivations from one forward pass plus the part of the
backward pass after the target layer."""

from __future__ import annotations

import numpy as np
import torch

from ..store.schema import ALL_ZERO_MAP  # the reason, shared with the stores' migration
from .methods import METHODS, normalise_and_upsample


class CamUnavailable(ValueError):
    pass


def cotangent_for(outputs_shape, task: str, targets: list[int], outputs: torch.Tensor | None,
                  device) -> torch.Tensor:
    cotangent = torch.zeros(outputs_shape, device=device)
    index = torch.arange(len(targets), device=device)
    classes = torch.as_tensor(targets, device=device)
    if task == "segmentation":
        region = outputs.argmax(dim=1) == classes[:, None, None]
        cotangent[index, classes] = region.float()
    else:
        cotangent[index, classes] = 1.0
    return cotangent


class CamEngine:
    def __init__(self, method: str, model):
        if method not in METHODS:
            raise CamUnavailable(f"unknown CAM method {method!r}; available: {', '.join(METHODS)}")
        self.method = METHODS[method]()
        self.model = model
        card = model.card
        if self.method.needs_gradients and not model.provides_gradients:
            usable = ", ".join(name for name, cls in METHODS.items() if not cls.needs_gradients)
            raise CamUnavailable(
                f"{method} needs the gradient of the score at the target layer, which {model.source} does not "
                f"provide (no gradient output in the graph); methods without gradients: {usable}. "
                "Export the model with `localjudge models export` to get one.")
        if method == "cam" and not card.linear_head:
            raise CamUnavailable(f"cam is defined only for a global-average-pool + linear head after the target "
                                 f"layer; the card of {card.name} does not declare one (linear_head)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def compute(self, batch: torch.Tensor, targets: list[int]) -> np.ndarray:
        """Maps in [0, 1] at the model's input resolution, one per image, explaining the target classes."""
        return self.compute_checked(batch, targets)[0]

    def compute_checked(self, batch: torch.Tensor, targets: list[int]) -> tuple[np.ndarray, list[str | None]]:
        """The maps, and for each why it is degenerate (see `degenerate`), or None."""
        model = self.model
        batch = batch.to(model.device)
        task = model.card.task
        outputs = model.forward_outputs(batch) if task == "segmentation" else None
        shape = (batch.shape[0], *model.output_shape(batch))
        cotangent = cotangent_for(shape, task, targets, outputs, model.device)
        _, activations, gradients = model.activations_and_gradients(
            batch, cotangent if self.method.needs_gradients else None)
        return self._maps(batch, activations, gradients, cotangent)

    def predict_and_compute(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Class scores of a batch, maps explaining each image's main class and why each map is degenerate (or
        None), from one forward pass where the backend can choose the explained class from that pass's own outputs
        (torch; ONNX Runtime with a graph localjudge exported); the same scores and maps as `model.predict` and then
        `compute` on its classes."""
        from ..vision import main_class
        from ..vision.torch_backend import class_scores

        model = self.model
        batch = batch.to(model.device)
        task = model.card.task
        scores: list[np.ndarray] = []

        def explained(outputs: torch.Tensor) -> torch.Tensor:
            scores.append(class_scores(outputs, task))
            targets = [main_class(row, task) for row in scores[0]]
            return cotangent_for(tuple(outputs.shape), task, targets, outputs, model.device)

        _, activations, gradients, cotangent = model.outputs_and_gradients(batch, explained,
                                                                          self.method.needs_gradients)
        maps, reasons = self._maps(batch, activations, gradients, cotangent)
        return scores[0], maps, reasons

    def _maps(self, batch, activations, gradients, cotangent) -> tuple[np.ndarray, list[str | None]]:
        if self.method.needs_forward:
            weights = self.method.scores(self.model, batch, activations, cotangent)
            cams = (weights[:, :, None, None] * activations).sum(dim=1)
        else:
            cams = self.method.cam_image(activations, gradients)
        reasons = degenerate(cams)
        maps = normalise_and_upsample(cams, tuple(batch.shape[2:]))
        return np.nan_to_num(maps.detach().cpu().numpy().astype(np.float32)), reasons


# A map (after its ReLU, before normalisation) whose values span less than this share of its largest value is flat:
# min-max normalisation would stretch float noise into a picture, or return all zeros.
FLAT_SPAN = 1e-6


def degenerate(cams: torch.Tensor) -> list[str | None]:
    """Why each raw map is no finding (all zero, or flat), or None: such a map shows the judge nothing of the model's
    evidence (an all-zero map masks the whole image black), so it is stored as a map failure and never judged."""
    positive = torch.clamp(torch.nan_to_num(cams.detach().float()), min=0).flatten(1)
    peaks, lows = positive.amax(dim=1).tolist(), positive.amin(dim=1).tolist()
    reasons: list[str | None] = []
    for peak, low in zip(peaks, lows):
        if peak <= 0.0:
            reasons.append(ALL_ZERO_MAP)
        elif peak - low <= FLAT_SPAN * peak:  # no figures in the reason: the same map made elsewhere says the same
            reasons.append(f"flat map: its values span less than {FLAT_SPAN:g} of its largest")
        else:
            reasons.append(None)
    return reasons
