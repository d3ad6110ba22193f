"""pytorch-grad-cam, the reference our CAM engine is checked against (tests) and measured against (benchmarks)."""

from __future__ import annotations

import numpy as np
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

REFERENCE_CLASSES = {
    "gradcam": pytorch_grad_cam.GradCAM,
    "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
    "xgradcam": pytorch_grad_cam.XGradCAM,
    "layercam": pytorch_grad_cam.LayerCAM,
    "hirescam": pytorch_grad_cam.HiResCAM,
    "eigencam": pytorch_grad_cam.EigenCAM,
    "scorecam": pytorch_grad_cam.ScoreCAM,
}


class PytorchGradCam:
    """One pytorch-grad-cam object (one set of hooks) for many batches, released on exit."""

    def __init__(self, method: str, model):
        if getattr(model, "backend", None) != "torch":
            raise ValueError("pytorch-grad-cam needs the torch backend")
        self.model = model
        self._cam = REFERENCE_CLASSES[method](model=model.module, target_layers=[model.target_layer])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._cam.activations_and_grads.release()
        return False

    def compute(self, batch: torch.Tensor, target_indices: list[int]) -> np.ndarray:
        batch = batch.to(self.model.device)
        if self.model.card.task == "segmentation":
            predicted = self.model.forward_outputs(batch).argmax(dim=1).cpu().numpy()
            targets = [SemanticSegmentationTarget(int(c), np.float32(p == c)) for c, p in zip(target_indices, predicted)]
        else:
            targets = [ClassifierOutputTarget(int(i)) for i in target_indices]
        maps = self._cam(input_tensor=batch, targets=targets)
        return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
