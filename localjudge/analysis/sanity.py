"""Sanity checks for saliency methods (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): a map that
explains the model must change when the model does. Pure functions over maps in [0, 1].

- Model-parameter randomisation: the layers after the target tensor are re-drawn at random, cascading from the head
  (the last layer first, then the one before it too, ...); the maps for the same images and classes are computed
  again at each step.
- Random logit: the maps are computed for a random other class instead of the predicted one.

Each step compares the new maps with the original ones by Spearman's rank correlation (its absolute value, as
Adebayo et al. report it: a map turned around is no more informative) and SSIM (Wang et al., 2004; Gaussian window
11 px, sigma 1.5, on maps of range 1). A method whose maps keep a median |rank correlation| of at least
`INSENSITIVE` after every layer after the target is randomised does not depend on what the model learnt there: it
is flagged."""

from __future__ import annotations

import numpy as np

from .correlation import spearman

INSENSITIVE = 0.5
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _gaussian_filter(image: np.ndarray) -> np.ndarray:
    """The image filtered by a normalised 11 x 11 Gaussian (sigma 1.5), separably, with zero padding cut off (only
    the valid part, as Wang et al.'s reference implementation)."""
    offsets = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    kernel = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    kernel /= kernel.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, image)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two maps of the same shape."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _gaussian_filter(a), _gaussian_filter(b)
    var_a = _gaussian_filter(a * a) - mu_a ** 2
    var_b = _gaussian_filter(b * b) - mu_b ** 2
    covariance = _gaussian_filter(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * covariance + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """|Spearman's rho| of two maps' pixels; 1 for two maps that are both flat and equal, 0 for a flat and another."""
    found = spearman(np.ravel(a), np.ravel(b))["r"]
    if found is None:
        return 1.0 if np.array_equal(a, b) else 0.0
    return abs(found)


def compare_maps(original: list[np.ndarray], changed: list[np.ndarray]) -> dict:
    """Median |rank correlation| and SSIM of each changed map with its original, with bootstrap 95 % intervals (the
    images resampled), and their counts."""
    from .bootstrap import interval

    ranks = np.array([rank_similarity(a, b) for a, b in zip(original, changed)])
    similarities = np.array([ssim(a, b) for a, b in zip(original, changed)])
    rank_ci = interval(lambda rows: float(np.median(ranks[rows])), len(ranks))
    ssim_ci = interval(lambda rows: float(np.median(similarities[rows])), len(similarities))
    return {"images": len(ranks), "median_rank_correlation": float(np.median(ranks)) if len(ranks) else None,
            "rank_ci_low": rank_ci[0], "rank_ci_high": rank_ci[1],
            "median_ssim": float(np.median(similarities)) if len(similarities) else None,
            "ssim_ci_low": ssim_ci[0], "ssim_ci_high": ssim_ci[1]}


def unrelated_floor(original: list[np.ndarray]) -> dict:
    """The trivial baseline: how alike the original maps of two different images are (each map against the next
    image's, cyclically). Maps share a centre bias and the model's receptive fields, so a randomised model's maps
    resemble the originals this much without explaining anything."""
    return compare_maps(original, original[1:] + original[:1]) if len(original) > 1 else compare_maps([], [])


def insensitive(fully_randomised: dict) -> bool:
    """Whether maps survived the randomisation of every layer after the target (see the module's docstring)."""
    value = fully_randomised["median_rank_correlation"]
    return value is not None and value >= INSENSITIVE
