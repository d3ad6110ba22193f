"""The paper's 2x2 summary (its section 3.3): prediction correct/wrong x judge score high/low. Pure functions."""

from __future__ import annotations

import numpy as np

QUADRANTS = ("CH", "CL", "WH", "WL")
MEANING = {
    "CH": "correct, attention on the object",
    "CL": "correct, attention not on the object (misunderstood object)",
    "WH": "wrong, attention on an object (attending to the wrong object)",
    "WL": "wrong, no meaningful attention (lack of understanding)",
}


def attention_matrix(correct: np.ndarray, scores: np.ndarray, threshold: int = 3) -> dict:
    """Counts and percentages of CH/CL/WH/WL over successful judgments.

    `correct` holds 1, 0 or NaN (no label); unlabelled images cannot be placed in a quadrant and are counted
    apart as high/low, so the counts always add up to the judgments given."""
    correct = np.asarray(correct, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if correct.shape != scores.shape:
        raise ValueError("correct and scores must have the same length")
    high = scores >= threshold
    labelled = ~np.isnan(correct)
    is_correct = labelled & (correct == 1)
    is_wrong = labelled & (correct == 0)
    counts = {
        "CH": int(np.sum(is_correct & high)),
        "CL": int(np.sum(is_correct & ~high)),
        "WH": int(np.sum(is_wrong & high)),
        "WL": int(np.sum(is_wrong & ~high)),
    }
    placed = sum(counts.values())
    return {
        "threshold": threshold,
        "judgments": int(scores.size),
        "counts": counts,
        "percent": {q: (100.0 * n / placed if placed else 0.0) for q, n in counts.items()},
        "unlabelled": {"high": int(np.sum(~labelled & high)), "low": int(np.sum(~labelled & ~high))},
        "average_score": float(scores.mean()) if scores.size else None,
    }


def quadrant_labels(correct: np.ndarray, scores: np.ndarray, threshold: int = 3) -> np.ndarray:
    """Each judgment's quadrant (CH/CL/WH/WL), or 'unlabelled' where its image has no label."""
    correct = np.asarray(correct, dtype=np.float64)
    high = np.asarray(scores, dtype=np.float64) >= threshold
    first = np.where(correct == 1, "C", "W")
    labels = np.char.add(first, np.where(high, "H", "L")).astype(object)
    labels[np.isnan(correct)] = "unlabelled"
    return labels


def matrix_intervals(correct: np.ndarray, scores: np.ndarray, threshold: int = 3,
                     images: np.ndarray | None = None) -> dict:
    """Bootstrap 95 % intervals (images resampled) of each quadrant's percentage and of the average score. With
    `images` (each judgment's image) where an image has several judgments (a multilabel model's findings), the
    images are resampled with all their judgments (bootstrap.clustered_intervals)."""
    from .bootstrap import LEVEL, RESAMPLES, SEED, clustered_intervals, mean_interval, share_intervals

    labels = quadrant_labels(correct, scores, threshold)
    clustered = images is not None and len(set(images)) < len(images)
    if clustered:
        found = clustered_intervals(labels, scores, images, QUADRANTS)
        shares, (low, high) = found, found["mean"]
    else:
        shares = share_intervals(labels, QUADRANTS)
        low, high = mean_interval(scores)
    return {"intervals": {**{q: {"ci_low": shares[q][0], "ci_high": shares[q][1]} for q in QUADRANTS},
                          "average_score": {"ci_low": low, "ci_high": high}},
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL,
                          "unit": "image, with all its findings" if clustered else "image"}}
