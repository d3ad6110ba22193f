"""Saliency (CAM) methods, one small class each, chosen by name with --cam."""

from __future__ import annotations

from .gradcam import GradCAMReference
from .masking import heatmap_image, judge_image, masked_image, soft_mask

CAM_METHODS = {"gradcam": GradCAMReference}


def open_cam(name: str, model):
    if name not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {name!r}; available: {', '.join(CAM_METHODS)}")
    return CAM_METHODS[name](model)


__all__ = ["CAM_METHODS", "open_cam", "soft_mask", "masked_image", "heatmap_image", "judge_image"]
