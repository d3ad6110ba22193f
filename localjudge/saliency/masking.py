"""The images the judge sees, derived on the fly from a stored saliency map (never stored themselves)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def soft_mask(saliency: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Paper Eq. 1: M = 1 / (1 + exp(alpha * (beta - v))); v above beta stays visible, below it fades to black."""
    exponent = np.clip(alpha * (beta - saliency.astype(np.float32)), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(exponent))


def upsample(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to (width, height)."""
    if saliency.shape[::-1] == tuple(size):
        return saliency.astype(np.float32)
    image = Image.fromarray(saliency.astype(np.float32))
    return np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32)


def masked_image(image: Image.Image, saliency: np.ndarray, alpha: float, beta: float) -> Image.Image:
    """Paper Eq. 2: A = I * M, the regions the model did not attend to blacked out."""
    mask = soft_mask(upsample(saliency, image.size), alpha, beta)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * mask[..., None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def heatmap_image(image: Image.Image, saliency: np.ndarray, image_weight: float = 0.5) -> Image.Image:
    """The classic CAM overlay (JET colours over the photo), as pytorch-grad-cam and LangXAI draw it."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    overlay = show_cam_on_image(rgb, upsample(saliency, image.size), use_rgb=True, image_weight=image_weight)
    return Image.fromarray(overlay)


def judge_image(image: Image.Image, saliency: np.ndarray, mode: str, alpha: float, beta: float) -> Image.Image:
    if mode == "masked":
        return masked_image(image, saliency, alpha, beta)
    if mode == "heatmap":
        return heatmap_image(image, saliency)
    raise ValueError(f"unknown image mode {mode!r}; use masked or heatmap")
