"""Localisation of saliency maps against ground-truth regions, each metric beside its trivial baselines: pure
functions over arrays (a map in [0, 1] and a boolean region, both in the model's input geometry).

Per image:
- pointing game (Zhang et al., 2016; TorchRay's tolerance of 15 px): a hit when the map's maximum lies within
  `tolerance` pixels of the region;
- energy-based pointing game (Wang et al., Score-CAM): the share of the map's mass inside the region; with a
  non-negative map it is also the relevance mass accuracy of Arras et al. (CLEVR-XAI);
- relevance rank accuracy (Arras et al.): of the K highest-valued pixels (K = the region's size), the share inside
  the region;
- IoU and Dice of the attention mask (map >= threshold), at beta and at the threshold best over the dataset.
Over the dataset:
- PxAP (Choe et al., 2020, wsolevaluation): the average precision of classifying every pixel of every image as
  region or not by its map value, from pixel counts pooled over images at thresholds 0, 0.01, ..., 0.99.

Baselines on the same regions: the centre point (pointing game), a centred Gaussian (sigma = a quarter of the side;
every metric) and a uniform map (its mass share and rank accuracy are the region's area fraction). A map that does
not beat them localises nothing the photo's composition does not already give."""

from __future__ import annotations

import numpy as np

POINTING_TOLERANCE = 15  # pixels, as TorchRay's pointing game
THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)  # wsolevaluation's cam_curve_interval
GAUSSIAN_SIGMA = 0.25  # of the side
PER_IMAGE = ("pointing_game", "energy_pointing_game", "rank_accuracy")


def pointing_hit(saliency: np.ndarray, truth: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> float | None:
    """1.0 when the map's maximum (the first, in row-major order) lies within `tolerance` pixels of a region pixel;
    None for an image without a region, and for a flat map (it points nowhere)."""
    truth = np.asarray(truth, dtype=bool)
    saliency = np.asarray(saliency)
    if not truth.any() or saliency.max() == saliency.min():
        return None
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    rows, cols = np.nonzero(truth)
    return float(np.min((rows - row) ** 2 + (cols - col) ** 2) <= tolerance ** 2)


def energy_pointing(saliency: np.ndarray, truth: np.ndarray) -> float | None:
    """The share of the (non-negative) map's mass inside the region; None for an empty map."""
    positive = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = positive.sum()
    return float(positive[np.asarray(truth, dtype=bool)].sum() / total) if total > 0 else None


def rank_accuracy(saliency: np.ndarray, truth: np.ndarray) -> float | None:
    """Of the K highest-valued pixels (K = the region's size), the share in the region. Pixels tied at the K-th value
    share the places left, in proportion (the expectation over orders of the ties), so a uniform map scores the
    region's area fraction."""
    truth = np.asarray(truth, dtype=bool).ravel()
    size = int(truth.sum())
    if size == 0:
        return None
    values = np.asarray(saliency, dtype=np.float64).ravel()
    kth = np.sort(values)[::-1][size - 1]
    above, tied = values > kth, values == kth
    places = size - int(above.sum())
    inside = float((above & truth).sum()) + places * float((tied & truth).sum()) / float(tied.sum())
    return inside / size


def threshold_counts(saliency: np.ndarray, truth: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """(len(thresholds), 3) counts of true positives, false positives and false negatives of map >= t."""
    truth = np.asarray(truth, dtype=bool).ravel()
    values = np.asarray(saliency, dtype=np.float32).ravel()  # as stored; the attention mask compares these
    thresholds = np.asarray(thresholds, dtype=np.float32)
    inside, outside = np.sort(values[truth]), np.sort(values[~truth])
    tp = len(inside) - np.searchsorted(inside, thresholds, "left")
    fp = len(outside) - np.searchsorted(outside, thresholds, "left")
    return np.stack([tp, fp, len(inside) - tp], axis=1).astype(np.float64)


def pxap(counts: np.ndarray) -> float | None:
    """Pixel average precision from counts pooled over the dataset (the sum of `threshold_counts`), as
    wsolevaluation: sum over thresholds of precision times the recall gained."""
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    positives = tp[0] + fn[0]
    if positives == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    recall = tp / positives
    recall_next = np.append(recall[1:], 0.0)
    return float(np.sum((recall - recall_next) * precision))


def iou_dice(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice of each row of (tp, fp, fn) counts (1 where both masks are empty)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(union > 0, tp / union, 1.0), np.where(union > 0, 2 * tp / (2 * tp + fp + fn), 1.0))


def gaussian_map(height: int, width: int, sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    rows = (np.arange(height) - (height - 1) / 2) / (sigma * height)
    cols = (np.arange(width) - (width - 1) / 2) / (sigma * width)
    return np.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2)).astype(np.float32)


def centre_map(height: int, width: int) -> np.ndarray:
    point = np.zeros((height, width), dtype=np.float32)
    point[(height - 1) // 2, (width - 1) // 2] = 1.0
    return point


def uniform_map(height: int, width: int) -> np.ndarray:
    return np.ones((height, width), dtype=np.float32)


BASELINES = {"centre point": centre_map, "centred gaussian": gaussian_map, "uniform": uniform_map}


def localisation(pairs: list[tuple[np.ndarray, np.ndarray]], beta: float) -> dict:
    """Every metric of maps against their regions ((map, region) pairs in the same geometry), means with bootstrap
    intervals over the images, PxAP, and IoU/Dice at beta and at the best threshold over the dataset."""
    from .bootstrap import mean_interval

    per_image = {name: [] for name in PER_IMAGE}
    counts, at_beta = [], []
    for saliency, truth in pairs:
        per_image["pointing_game"].append(pointing_hit(saliency, truth))
        per_image["energy_pointing_game"].append(energy_pointing(saliency, truth))
        per_image["rank_accuracy"].append(rank_accuracy(saliency, truth))
        counts.append(threshold_counts(saliency, truth))
        at_beta.append(threshold_counts(saliency, truth, np.array([beta]))[0])
    result: dict = {"images": len(pairs)}
    for name, values in per_image.items():
        array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        low, high = mean_interval(array)
        result[name] = {"mean": None if np.isnan(array).all() else float(np.nanmean(array)), "ci_low": low,
                        "ci_high": high, "n": int((~np.isnan(array)).sum())}
    if counts:
        stacked = np.stack(counts)  # images x thresholds x 3
        ious, dices = iou_dice(stacked)
        best = int(np.argmax(ious.mean(axis=0)))
        beta_ious, beta_dices = iou_dice(np.stack(at_beta))
        for label, threshold, iou, dice in (("at_beta", beta, beta_ious, beta_dices),
                                            ("at_best_threshold", float(THRESHOLDS[best]), ious[:, best],
                                             dices[:, best])):
            iou_low, iou_high = mean_interval(iou)
            dice_low, dice_high = mean_interval(dice)
            result[label] = {"threshold": threshold,
                             "iou": {"mean": float(iou.mean()), "ci_low": iou_low, "ci_high": iou_high},
                             "dice": {"mean": float(dice.mean()), "ci_low": dice_low, "ci_high": dice_high}}
        result["pxap"] = pxap(stacked.sum(axis=0))
    return result


def localisation_table(pairs: list[tuple[np.ndarray, np.ndarray]], beta: float) -> dict:
    """The maps' localisation and, on the same regions, each baseline's."""
    table = {"maps": localisation(pairs, beta)}
    for name, make in BASELINES.items():
        table[name] = localisation([(make(*truth.shape), truth) for _, truth in pairs], beta)
    mean_area = float(np.mean([truth.mean() for _, truth in pairs])) if pairs else None
    return {"beta": beta, "pointing_tolerance": POINTING_TOLERANCE, "mean_region_area": mean_area, **table}
