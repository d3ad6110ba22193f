"""The images the judge sees, derived on the fly from a stored saliency map (never stored themselves)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# The version of what turns a stored map into the judge's input: the map's upsampling and the soft mask (below), the
# heatmap's colour map and weight, the model's view at the judge's size (vision.preprocess.model_view), and the VLM
# processors' pixel caps (judge.vllm_backend.PROCESSOR_SETTINGS). It is part of every judgment's key from version 2
# on (version 1, the rendering judgments were made with before it existed, adds nothing to the key, so those stay
# valid): bump it whenever any of these changes, and stores keep their older judgments and judge again under the new
# version. tests/test_render_version.py holds a fingerprint of each version's pictures and fails until it is bumped.
RENDER_VERSION = 1
FIRST_RENDER_VERSION = 1


def soft_mask(saliency: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Paper Eq. 1: M = 1 / (1 + exp(alpha * (beta - v))); v above beta stays visible, below it fades to black."""
    exponent = np.clip(alpha * (beta - saliency.astype(np.float32)), -60.0, 60.0)
    mask = np.exp(exponent, out=exponent)  # in place: the same operations, without a temporary per step
    mask += 1.0
    return np.divide(1.0, mask, out=mask)


def upsample(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to (width, height)."""
    if saliency.shape[::-1] == tuple(size):
        return saliency.astype(np.float32)
    image = Image.fromarray(saliency.astype(np.float32))
    return np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32)


def masked_image(image: Image.Image, saliency: np.ndarray, alpha: float, beta: float,
                 mask: np.ndarray | None = None) -> Image.Image:
    """Paper Eq. 2: A = I * M, the regions the model did not attend to blacked out (`mask`: M at the image's size,
    where the caller has it already)."""
    mask = soft_mask(upsample(saliency, image.size), alpha, beta) if mask is None else mask
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * mask[..., None]
    pixels += 0.5  # rounds (the cast truncates)
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))


def heatmap_image(image: Image.Image, saliency: np.ndarray, image_weight: float = 0.5) -> Image.Image:
    """The classic CAM overlay (JET colours over the photo), drawn as pytorch-grad-cam's `show_cam_on_image` and
    LangXAI draw it (tested pixel for pixel against it), with OpenCV alone, so a report renders without torch."""
    import cv2

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    colours = cv2.applyColorMap(np.uint8(255 * upsample(saliency, image.size)), cv2.COLORMAP_JET)
    heatmap = np.float32(cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)) / 255
    overlay = (1 - image_weight) * heatmap + image_weight * rgb
    return Image.fromarray(np.uint8(255 * (overlay / np.max(overlay))))


def judge_image(image: Image.Image, saliency: np.ndarray, mode: str, alpha: float, beta: float,
                mask: np.ndarray | None = None) -> Image.Image:
    """The judge's picture of an image already in the model's view: masked (Eq. 1-2) or the heatmap overlay."""
    if mode == "masked":
        return masked_image(image, saliency, alpha, beta, mask)
    if mode == "heatmap":
        return heatmap_image(image, saliency)
    raise ValueError(f"unknown image mode {mode!r}; use masked or heatmap")


def judge_view(picture: Image.Image, preprocessing: dict, saliency: np.ndarray, mode: str, alpha: float, beta: float,
               side: int) -> Image.Image:
    """Exactly what a judge of this view is shown: the model's view of the picture (its centre crop, by the
    prediction's preprocessing) at `side` pixels, drawn on by `judge_image`. The rating page calls this; the judge
    stage and the report render the model's view once per picture (several maps and modes are drawn on one view)
    and call `judge_image` on it, so all three draw what the judge saw with the same two functions."""
    from ..vision.preprocess import model_view

    return judge_image(model_view(picture, preprocessing, side), saliency, mode, alpha, beta)
