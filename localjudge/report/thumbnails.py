"""The pictures of a sample, derived from the stored map as the judge's images are: the model's view of the photo,
the heatmap over it and the masked image, at any size."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..saliency.masking import heatmap_image, judge_image, masked_image
from ..vision.preprocess import model_view

THUMBNAIL_KINDS = ("original", "heatmap", "masked")


def thumbnail(kind: str, view: Image.Image, saliency: np.ndarray, alpha: float, beta: float) -> Image.Image:
    """One picture of a sample, from the model's view of its photo (already rendered at the wanted size)."""
    if kind == "original":
        return view
    if kind == "heatmap":
        return heatmap_image(view, saliency)
    if kind == "masked":
        return masked_image(view, saliency, alpha, beta)
    raise ValueError(f"unknown thumbnail kind {kind!r}")


def judge_view(picture: Image.Image, preprocessing: dict, saliency: np.ndarray, mode: str, alpha: float,
               beta: float, side: int) -> Image.Image:
    """Exactly what a judge of this view was shown (at `side` pixels)."""
    return judge_image(model_view(picture, preprocessing, side), saliency, mode, alpha, beta)


def jpeg_bytes(image: Image.Image, quality: int = 82) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
