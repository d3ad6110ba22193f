"""Agreement between where the model looked and where the object is: pure functions over boolean masks.

The attention mask is the saliency map binarised at the masking threshold β (paper Eq. 1 keeps what lies above β
visible); the ground truth is the object's mask in the same (model input) geometry. For binary masks the pixel F1
equals the Dice coefficient (2TP / (2TP + FP + FN)); both are reported because the paper's Table 1 lists both."""

from __future__ import annotations

import numpy as np

REGION_METRICS = ("iou", "dice", "pixel_accuracy", "f1", "precision", "recall")


def attention_mask(saliency: np.ndarray, beta: float) -> np.ndarray:
    return np.asarray(saliency, dtype=np.float32) >= beta


def region_scores(attended: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU, Dice, pixel accuracy, F1, precision and recall of `attended` against `truth` (same shape, boolean).
    Conventions at the edges: two empty masks agree perfectly (IoU, Dice, F1 = 1); precision of an empty
    attention mask and recall of an empty truth are 1 (nothing claimed wrongly, nothing missed)."""
    attended = np.asarray(attended, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if attended.shape != truth.shape:
        raise ValueError(f"mask shapes differ: attention {attended.shape}, ground truth {truth.shape}")
    tp = float(np.count_nonzero(attended & truth))
    fp = float(np.count_nonzero(attended & ~truth))
    fn = float(np.count_nonzero(~attended & truth))
    tn = float(attended.size) - tp - fp - fn
    union = tp + fp + fn
    iou = tp / union if union else 1.0
    dice = 2 * tp / (2 * tp + fp + fn) if union else 1.0
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"iou": iou, "dice": dice, "pixel_accuracy": (tp + tn) / attended.size, "f1": f1,
            "precision": precision, "recall": recall}


def boxes_mask(boxes: list[tuple[float, float, float, float]], width: int, height: int) -> np.ndarray:
    """COCO-style boxes (x, y, width, height in pixels) as one boolean mask of the image: their union."""
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        left, top = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        right, bottom = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
        if right > left and bottom > top:
            mask[top:bottom, left:right] = True
    return mask
