"""The pictures of a sample: the model's view of the photo and what a judge is shown of it in each image mode (the
heatmap over it, the masked image), rendered by the judge's own renderer at any size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..saliency.masking import judge_image

THUMBNAIL_KINDS = ("original", "heatmap", "masked")


def thumbnail(kind: str, view: Image.Image, saliency: np.ndarray, alpha: float, beta: float) -> Image.Image:
    """One picture of a sample, from the model's view of its photo (already rendered at the wanted size): the view
    itself, or the view as a judge in that image mode sees it."""
    if kind == "original":
        return view
    if kind in ("heatmap", "masked"):
        return judge_image(view, saliency, kind, alpha, beta)
    raise ValueError(f"unknown thumbnail kind {kind!r}")
