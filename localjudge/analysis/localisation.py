"""Localisation of saliency maps against ground-truth regions, each metric beside its trivial baselines: pure
functions over arrays (a map in [0, 1] and a boolean region, both in the model's input geometry: the pixel
distances below are the model's input pixels).

Per image (means over the images with a region, with bootstrap intervals):
- pointing game (Zhang et al., 2016, as TorchRay's `PointingGame`): a hit when a region pixel lies closer than
  `tolerance` (15 px) to the map's maximum. TorchRay averages per class; here every image counts once;
- energy-based pointing game (Wang et al., Score-CAM): the share of the map's mass inside the region; for a
  non-negative map it is also the relevance mass accuracy of Arras et al. (CLEVR-XAI);
- relevance rank accuracy (Arras et al.): of the K highest-valued pixels (K = the region's size), the share inside
  the region, pixels tied at the K-th value sharing the places left;
- IoU and Dice of the attention mask (map >= threshold) at beta, and at the threshold whose mean IoU over the
  dataset is best (chosen on the same images, so it flatters the maps a little: it is an upper bound; Dice is
  reported at that same threshold).
Over the dataset:
- PxAP (Choe et al., CVPR 2020, wsolevaluation's `MaskEvaluator`): the average precision of calling every pixel of
  every image region or not by its map value, from pixel counts pooled over the images at thresholds 0, 0.01, ...,
  0.99, 1 (the interval of wsolevaluation's command line; its function's default is 0.001), with a bootstrap
  interval (the images resampled, their counts pooled again).

Baselines on the same regions: the centre point (pointing game), a centred Gaussian (sigma = a quarter of the side;
every metric) and a uniform map (its mass share, rank accuracy and PxAP are the region's area fraction; it points
nowhere). A map that does not beat them localises nothing the photo's composition does not already give.

Images are taken one at a time (`Localisation.add`): what is kept per image is a few numbers and its pixel counts
at the thresholds, never its map."""

from __future__ import annotations

import numpy as np

POINTING_TOLERANCE = 15  # pixels, as TorchRay's pointing game
CURVE_INTERVAL = 0.01  # as wsolevaluation's command line
THRESHOLDS = np.round(np.append(np.arange(0.0, 1.0, CURVE_INTERVAL), 1.0), 2)
GAUSSIAN_SIGMA = 0.25  # of the side
PER_IMAGE = ("pointing_game", "energy_pointing_game", "rank_accuracy")


def pointing_hit(saliency: np.ndarray, truth: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> float | None:
    """1.0 when a region pixel lies closer than `tolerance` pixels to the map's maximum (the first, in row-major
    order), as TorchRay; None for an image without a region, and for a flat map (it points nowhere)."""
    truth = np.asarray(truth, dtype=bool)
    saliency = np.asarray(saliency)
    if not truth.any() or saliency.max() == saliency.min():
        return None
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    rows, cols = np.nonzero(truth)
    return float(np.min((rows - row) ** 2 + (cols - col) ** 2) < tolerance ** 2)


def energy_pointing(saliency: np.ndarray, truth: np.ndarray) -> float | None:
    """The share of the (non-negative) map's mass inside the region; None for an image without a region or an
    empty map."""
    truth = np.asarray(truth, dtype=bool)
    positive = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = positive.sum()
    return float(positive[truth].sum() / total) if total > 0 and truth.any() else None


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
    """Pixel average precision from counts at THRESHOLDS pooled over the dataset (summed `threshold_counts`), as
    wsolevaluation's MaskEvaluator: the sum, from the highest threshold down, of each threshold's precision times
    the recall gained since the one above it (none above the last: values >= 2 are none)."""
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    positives = tp[0] + fn[0]
    if positives == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    recall = tp / positives
    recall_above = np.append(recall[1:], 0.0)
    return float(np.sum((recall - recall_above) * precision))


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


class Localisation:
    """The metrics of maps against their regions, one image at a time."""

    def __init__(self, beta: float):
        self.beta = beta
        self.per_image: dict[str, list] = {name: [] for name in PER_IMAGE}
        self.counts: list[np.ndarray] = []
        self.at_beta: list[np.ndarray] = []

    def add(self, saliency: np.ndarray, truth: np.ndarray) -> None:
        self.per_image["pointing_game"].append(pointing_hit(saliency, truth))
        self.per_image["energy_pointing_game"].append(energy_pointing(saliency, truth))
        self.per_image["rank_accuracy"].append(rank_accuracy(saliency, truth))
        self.counts.append(threshold_counts(saliency, truth))
        self.at_beta.append(threshold_counts(saliency, truth, np.array([self.beta]))[0])

    def result(self) -> dict:
        from .bootstrap import LEVEL, RESAMPLES, SEED, mean_interval, percentile_interval, resample_indices

        result: dict = {"images": len(self.counts)}
        for name, values in self.per_image.items():
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            low, high = mean_interval(array)
            result[name] = {"mean": None if np.isnan(array).all() else float(np.nanmean(array)), "ci_low": low,
                            "ci_high": high, "n": int((~np.isnan(array)).sum())}
        if self.counts:
            stacked = np.stack(self.counts)  # images x thresholds x 3
            ious, dices = iou_dice(stacked)
            best = int(np.argmax(ious.mean(axis=0)))
            beta_ious, beta_dices = iou_dice(np.stack(self.at_beta))
            for label, threshold, iou, dice in (("at_beta", self.beta, beta_ious, beta_dices),
                                                ("at_best_threshold", float(THRESHOLDS[best]), ious[:, best],
                                                 dices[:, best])):
                iou_low, iou_high = mean_interval(iou)
                dice_low, dice_high = mean_interval(dice)
                result[label] = {"threshold": threshold,
                                 "iou": {"mean": float(iou.mean()), "ci_low": iou_low, "ci_high": iou_high},
                                 "dice": {"mean": float(dice.mean()), "ci_low": dice_low, "ci_high": dice_high}}
            resampled = [pxap(stacked[rows].sum(axis=0)) for rows in resample_indices(len(stacked))]
            low, high = percentile_interval(np.array([np.nan if v is None else v for v in resampled]))
            result["pxap"] = {"mean": pxap(stacked.sum(axis=0)), "ci_low": low, "ci_high": high}
        result["bootstrap"] = {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL}
        return result


def localisation_table(pairs, beta: float) -> dict:
    """The maps' localisation and, on the same regions, each baseline's; `pairs` yields (map, region) one at a time
    (the baselines need only each region's shape and pixels)."""
    maps = Localisation(beta)
    baselines = {name: Localisation(beta) for name in BASELINES}
    areas = []
    for saliency, truth in pairs:
        maps.add(saliency, truth)
        for name, make in BASELINES.items():
            baselines[name].add(make(*truth.shape), truth)
        areas.append(float(np.mean(truth)))
    return {"beta": beta, "pointing_tolerance": POINTING_TOLERANCE, "curve_interval": CURVE_INTERVAL,
            "mean_region_area": float(np.mean(areas)) if areas else None, "maps": maps.result(),
            **{name: found.result() for name, found in baselines.items()}}


def localisation(pairs, beta: float) -> dict:
    """The metrics of maps against their regions ((map, region) pairs in the same geometry)."""
    found = Localisation(beta)
    for saliency, truth in pairs:
        found.add(saliency, truth)
    return found.result()
