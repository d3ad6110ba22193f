"""GradCAM through pytorch-grad-cam: the reference path that later, faster CAM engines are checked against."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class GradCAMReference:
    name = "gradcam"

    def __init__(self, model):
        if getattr(model, "backend", None) != "torch":
            raise ValueError("the pytorch-grad-cam reference path needs the torch backend")
        self.model = model

    def __enter__(self):
        # One CAM object (one set of hooks) for the whole stage, released on exit: pytorch-grad-cam leaks
        # hooks when a new object is made per image.
        self._cam = GradCAM(model=self.model.module, target_layers=[self.model.target_layer])
        return self

    def __exit__(self, *exc):
        self._cam.activations_and_grads.release()
        return False

    def compute(self, batch: torch.Tensor, target_indices: list[int]) -> np.ndarray:
        """Maps in [0, 1] at the model's input resolution, one per image, explaining the given classes."""
        targets = [ClassifierOutputTarget(int(i)) for i in target_indices]
        maps = self._cam(input_tensor=batch.to(self.model.device), targets=targets)
        return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
