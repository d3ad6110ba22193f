"""Saliency (CAM) methods, one small class each (`methods`), run by one engine on either vision backend
(`engine`), and the images the judge sees, derived from a stored map (`masking`). The methods and the engine compute
with torch and are imported where they are used; this package itself loads without it."""

from __future__ import annotations

from .masking import heatmap_image, judge_image, judge_view, masked_image, soft_mask

__all__ = ["soft_mask", "masked_image", "heatmap_image", "judge_image", "judge_view"]
