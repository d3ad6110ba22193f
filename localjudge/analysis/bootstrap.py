"""Bootstrap intervals for dataset-level figures: pure functions over arrays.

The percentile bootstrap (Efron & Tibshirani, 1993, ch. 13): resample the units (images) with replacement, compute
the figure on each resample, and take the 2.5th and 97.5th percentiles of those values as the 95 % interval. The
resamples come from one seeded generator, so an interval is the same on every run; the seed and the number of
resamples are reported beside it. For two settings judged on the same images, the paired bootstrap resamples the
images once for both, so the interval of the difference accounts for their correlation.

Where several units belong to one image (a multilabel model's findings), the images are resampled, each with all its
units (the cluster bootstrap, Davison & Hinkley, 1997, §3.8): findings of one image are not independent.

Where a resample leaves a figure undefined (a share of an empty group, a correlation of a constant), that resample is
left out; with fewer than half the resamples defined, there is no interval (None)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..config import BOOTSTRAP_RESAMPLES as RESAMPLES
from ..config import BOOTSTRAP_SEED as SEED
from ..config import CONFIDENCE_LEVEL as LEVEL


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) indices drawn with replacement, from a generator seeded with `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    """The central `level` interval of the resampled figures (undefined ones, NaN, left out)."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    if len(values) == 0 or len(defined) < len(values) / 2:
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def interval(statistic: Callable[[np.ndarray], float], n: int, resamples: int = RESAMPLES, seed: int = SEED,
             level: float = LEVEL) -> tuple[float | None, float | None]:
    """The bootstrap interval of `statistic(indices)`, a figure computed from the units at `indices`."""
    if n == 0:
        return None, None
    return percentile_interval(np.array([statistic(rows) for rows in resample_indices(n, resamples, seed)]), level)


def mean_interval(values, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL):
    """The interval of a mean (NaN values left out of the units)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None, None
    means = values[resample_indices(len(values), resamples, seed)].mean(axis=1)
    return percentile_interval(means, level)


def share_intervals(groups: np.ndarray, names, resamples: int = RESAMPLES, seed: int = SEED,
                    level: float = LEVEL) -> dict[str, tuple[float | None, float | None]]:
    """Intervals of the share (in %) of each group name among the units whose group is one of `names` (the others,
    e.g. unlabelled images, are resampled too but fall outside every share), as the 2x2 matrix's percentages."""
    groups = np.asarray(groups, dtype=object)
    if len(groups) == 0:
        return {name: (None, None) for name in names}
    drawn = groups[resample_indices(len(groups), resamples, seed)]
    placed = np.isin(drawn, list(names)).sum(axis=1).astype(np.float64)
    result = {}
    for name in names:
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(placed > 0, 100.0 * (drawn == name).sum(axis=1) / placed, np.nan)
        result[name] = percentile_interval(shares, level)
    return result


def clustered_intervals(groups: np.ndarray, values: np.ndarray, clusters: np.ndarray, names,
                        resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """share_intervals of `groups` by `names` and mean_interval of `values`, with the clusters (images) resampled
    instead of the units: each draw takes every unit of a drawn cluster. Keys: the names, and "mean"."""
    groups, values = np.asarray(groups, dtype=object), np.asarray(values, dtype=np.float64)
    first: dict = {}  # clusters numbered in order of appearance (one unit each: the plain bootstrap's draws)
    cluster = np.array([first.setdefault(c, len(first)) for c in clusters], dtype=np.int64)
    count = len(first)
    if count == 0:
        return {**{name: (None, None) for name in names}, "mean": (None, None)}
    # per cluster: its units in each group, its units placed in any, the sum and number of its defined values
    per_name = np.stack([np.bincount(cluster, weights=(groups == name).astype(float), minlength=count)
                         for name in names], axis=1)
    placed = per_name.sum(axis=1)
    defined = ~np.isnan(values)
    sums = np.bincount(cluster, weights=np.where(defined, values, 0.0), minlength=count)
    counts = np.bincount(cluster, weights=defined.astype(float), minlength=count)
    shares, means = [], []
    for drawn in resample_indices(count, resamples, seed):
        weights = np.bincount(drawn, minlength=count).astype(float)
        total = weights @ placed
        shares.append(100.0 * (weights @ per_name) / total if total else np.full(len(names), np.nan))
        n = weights @ counts
        means.append((weights @ sums) / n if n else np.nan)
    shares = np.array(shares)
    return {**{name: percentile_interval(shares[:, i], level) for i, name in enumerate(names)},
            "mean": percentile_interval(np.array(means), level)}


def correlation_interval(x, y, correlation: Callable[[np.ndarray, np.ndarray], float], resamples: int = RESAMPLES,
                         seed: int = SEED, level: float = LEVEL) -> tuple[float | None, float | None]:
    """The interval of a correlation, resampling the pairs (those with a value missing left out first)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    both = ~(np.isnan(x) | np.isnan(y))
    x, y = x[both], y[both]
    if len(x) < 4:
        return None, None
    return interval(lambda rows: correlation(x[rows], y[rows]), len(x), resamples, seed, level)


def paired_difference_interval(first: np.ndarray, second: np.ndarray, statistic: Callable[[np.ndarray], float],
                               resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
                               clusters=None) -> dict:
    """The difference statistic(second) - statistic(first) over the same units (aligned rows of `first` and
    `second`), with its paired bootstrap interval: each resample draws the units once for both. With `clusters`
    (each unit's image) where an image has several units (a multilabel model's findings), the images are drawn,
    each with all its units."""
    first, second = np.asarray(first), np.asarray(second)
    if len(first) != len(second):
        raise ValueError("paired samples must have the same units in the same order")
    if len(first) == 0:
        return {"difference": None, "ci_low": None, "ci_high": None, "n": 0}

    def difference(rows: np.ndarray) -> float:
        return statistic(second[rows]) - statistic(first[rows])

    members: list[list[int]] = []
    if clusters is not None:
        index: dict = {}
        for unit, cluster in enumerate(clusters):
            if cluster not in index:
                index[cluster] = len(members)
                members.append([])
            members[index[cluster]].append(unit)
    if clusters is not None and len(members) < len(first):
        groups = [np.array(m) for m in members]
        low, high = interval(lambda drawn: difference(np.concatenate([groups[c] for c in drawn])), len(groups),
                             resamples, seed, level)
    else:
        low, high = interval(difference, len(first), resamples, seed, level)
    observed = difference(np.arange(len(first)))
    return {"difference": None if math.isnan(observed) else observed, "ci_low": low, "ci_high": high,
            "n": int(len(first))}
