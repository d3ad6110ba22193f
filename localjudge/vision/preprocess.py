"""The geometry shared by the model's input and the judge's image: resize the short side, crop the centre. (torch
is imported by the one function that makes tensors: the report and the rating page render views without it.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .cards import ModelCard

if TYPE_CHECKING:
    import torch

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def model_view(image: Image.Image, geometry: dict, side: int | None = None) -> Image.Image:
    """The centre crop the model sees, rendered at `side` pixels (default: the model's own crop size).

    `geometry` is a card's preprocessing (resize, crop, interpolation), as stored with each prediction. Rendering
    the same crop larger lets the judge see the attended region in full detail while the stored saliency map (at
    the model's resolution) still lines up pixel for pixel after upsampling."""
    side = side or geometry["crop"]
    resize = round(geometry["resize"] * side / geometry["crop"])
    width, height = image.size
    scale = resize / min(width, height)
    new_size = (max(side, round(width * scale)), max(side, round(height * scale)))
    resized = image.resize(new_size, _RESAMPLE[geometry["interpolation"]])
    left = (new_size[0] - side) // 2
    top = (new_size[1] - side) // 2
    return resized.crop((left, top, left + side, top + side))


def mask_view(mask: np.ndarray, geometry: dict, side: int | None = None) -> np.ndarray:
    """A boolean mask of the original image, cut and resized as the model's view of it (nearest neighbour)."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(model_view(image, {**geometry, "interpolation": "nearest"}, side)) > 127


def to_tensor(images: list[Image.Image], card: ModelCard) -> torch.Tensor:
    """Batch of model inputs, normalised as the card says."""
    return view_tensor([model_view(img, card.preprocessing()) for img in images], card)


def view_tensor(views: list[Image.Image], card: ModelCard) -> torch.Tensor:
    """Batch of model inputs from views already cut and resized (model_view), normalised as the card says: for a
    view changed in place (an artifact pasted in, a background replaced)."""
    return normalised_batch(np.stack([np.asarray(view.convert("RGB")) for view in views]), card.mean, card.std)


def normalised_batch(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(x / 255 - mean) / std of uint8 pixels (batch, height, width, RGB), as a contiguous float32 (batch, RGB,
    height, width) tensor: one conversion into the final layout, then in place, channel-major (the same float
    operations in the same order as on float copies, so the same values, without their temporaries)."""
    import torch

    source = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    batch = torch.empty(source.shape, dtype=torch.float32)
    batch.copy_(source)
    batch.div_(255.0)
    batch.sub_(torch.tensor(mean, dtype=torch.float32)[:, None, None])
    batch.div_(torch.tensor(std, dtype=torch.float32)[:, None, None])
    return batch
