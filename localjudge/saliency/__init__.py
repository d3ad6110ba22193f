"""Saliency (CAM) methods, one small class each, run by one engine on either vision backend; chosen with --cam."""

from __future__ import annotations

from .engine import CamEngine, CamUnavailable
from .masking import heatmap_image, judge_image, masked_image, soft_mask
from .methods import METHODS

CAM_METHODS = tuple(METHODS)


def open_cam(name: str, model) -> CamEngine:
    return CamEngine(name, model)


__all__ = ["CAM_METHODS", "CamEngine", "CamUnavailable", "open_cam", "soft_mask", "masked_image", "heatmap_image",
           "judge_image"]
