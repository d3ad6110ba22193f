"""Faithfulness of a saliency map to the model, measured by perturbing the input: pure functions over tensors.

- Deletion and insertion (Petsiuk et al., RISE): input positions ranked by the map, most relevant first. Deletion
  replaces the top-k positions with a baseline, insertion starts from the baseline and restores the top-k; each
  curve is the target class score against the share of positions changed, and the metric is its area (trapezoid
  rule). Deletion low and insertion high mean the map found what the model uses. Step positions follow torchcam's
  `DeletionInsertionMetric` (step = ceil(positions / steps), then every position), so the numbers are comparable.
- AOPC (Samek et al.), most relevant first: the mean, over the deletion curve's points, of the score's drop from
  the unperturbed input. (The paper's code keeps the top-k pixels instead, the reverse order.)
- Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++): the input multiplied by the map;
  drop = max(0, Y - O) / Y, increase = 1 if O > Y, with Y the score on the image and O on the explanation map.

The map is shared by all channels. Scores are the model's probabilities of the target class."""

from __future__ import annotations

import numpy as np
import torch

FAITHFULNESS_METRICS = ("deletion_auc", "insertion_auc", "aopc", "average_drop", "increase_in_confidence")


def step_counts(positions: int, steps: int) -> list[int]:
    """How many positions are changed at each point of a curve: 0, s, 2s, ..., then all of them."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    step = -(-positions // steps)
    return [*range(0, positions, step), positions]


def relevance_ranks(saliency: torch.Tensor) -> torch.Tensor:
    """Rank of each position (0 = most relevant) for maps of shape (N, H, W); ties keep reading order."""
    order = torch.argsort(saliency.flatten(1), dim=1, descending=True, stable=True)
    return torch.argsort(order, dim=1)


def perturbed_inputs(image: torch.Tensor, baseline: torch.Tensor, ranks: torch.Tensor,
                     counts: list[int]) -> torch.Tensor:
    """For one image (C, H, W): the deletion inputs for counts[1:-1], then the insertion inputs for counts[1:-1],
    then the all-baseline input (deletion's last point and insertion's first). The unperturbed image is the other
    end of both curves. Shape (2 * (len(counts) - 2) + 1, C, H, W)."""
    inner = torch.tensor(counts[1:-1], device=ranks.device)
    top = ranks.unsqueeze(0) < inner.unsqueeze(1)  # (points, positions): the top-k positions of each point
    flat_image, flat_baseline = image.flatten(1), baseline.flatten(1)
    deletion = torch.where(top.unsqueeze(1), flat_baseline, flat_image)
    insertion = torch.where(top.unsqueeze(1), flat_image, flat_baseline)
    stacked = torch.cat([deletion, insertion, flat_baseline.unsqueeze(0)])
    return stacked.reshape(-1, *image.shape)


def curves(original: float, scores: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """The deletion and insertion curves from the scores of `perturbed_inputs` (in its order)."""
    inner = points - 2
    deletion = np.concatenate([[original], scores[:inner], [scores[-1]]])
    insertion = np.concatenate([[scores[-1]], scores[inner:2 * inner], [original]])
    return deletion, insertion


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it


def area(curve: np.ndarray, counts: list[int]) -> float:
    fractions = np.asarray(counts, dtype=np.float64) / counts[-1]
    return float(_trapezoid(np.asarray(curve, dtype=np.float64), fractions))


def aopc(deletion: np.ndarray) -> float:
    """Mean drop of the score over the deletion curve's points, most relevant first (the first point is 0)."""
    deletion = np.asarray(deletion, dtype=np.float64)
    return float(np.mean(deletion[0] - deletion))


def confidence_change(original: float, explained: float) -> tuple[float, float]:
    """(Average Drop term, Increase in Confidence term) of one image."""
    drop = max(0.0, original - explained) / original if original > 0 else 0.0
    return drop, float(explained > original)
