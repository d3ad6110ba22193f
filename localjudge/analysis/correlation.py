"""Correlations between per-image signals (judge score, IoU, deletion AUC, ...): pure functions over arrays.

Pearson's r with the Fisher z interval (se = 1/sqrt(n-3)), the interval scipy's `pearsonr(...).confidence_interval()`
gives; Spearman's rho (Pearson's r of average ranks) with the Fisher z interval and Fieller et al.'s
se = sqrt(1.06/(n-3)). Beside them (`ci_low`, `ci_high`), the percentile bootstrap interval (analysis.bootstrap:
the pairs resampled, seeded), which assumes no normality. Pairs where either value is missing (NaN) are left out, so
n is per pair of signals."""

from __future__ import annotations

import math

import numpy as np

Z_95 = 1.959963984540054  # the two-sided 95 % quantile of the normal distribution


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy) / denominator) if denominator > 0 else math.nan


def _interval(r: float, n: int, se_scale: float) -> tuple[float, float]:
    if n <= 3 or math.isnan(r):
        return math.nan, math.nan
    if abs(r) >= 1:
        return r, r
    z, se = math.atanh(r), math.sqrt(se_scale / (n - 3))
    return math.tanh(z - Z_95 * se), math.tanh(z + Z_95 * se)


def _paired(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("the two signals must have the same length")
    both = ~(np.isnan(x) | np.isnan(y))
    return x[both], y[both]


def _result(r: float, n: int, se_scale: float) -> dict:
    """None where a value is undefined (fewer than 2 pairs, a constant signal; an interval needs n > 3)."""
    low, high = _interval(r, n, se_scale)
    defined = {"r": r, "low": low, "high": high}
    return {**{k: None if math.isnan(v) else v for k, v in defined.items()}, "n": n}


def pearson(x, y) -> dict:
    x, y = _paired(x, y)
    return _result(_pearson_r(x, y) if len(x) >= 2 else math.nan, int(len(x)), 1.0)


def spearman(x, y) -> dict:
    x, y = _paired(x, y)
    r = _pearson_r(average_ranks(x), average_ranks(y)) if len(x) >= 2 else math.nan
    return _result(r, int(len(x)), 1.06)


def _rows_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of `a` with the same row of `b` (NaN where a row is constant)."""
    da, db = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((da * da).sum(axis=1) * (db * db).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (da * db).sum(axis=1) / denominator, np.nan)


def _rows_ranks(rows: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties sharing their mean rank) within each row."""
    ranked = np.empty_like(rows, dtype=np.float64)
    for index, row in enumerate(rows):
        ordered = np.sort(row)
        ranked[index] = (np.searchsorted(ordered, row, "left") + np.searchsorted(ordered, row, "right") + 1) / 2
    return ranked


def bootstrap_intervals(x, y) -> dict[str, tuple[float | None, float | None]]:
    """Percentile bootstrap intervals of Pearson's r and Spearman's rho (pairs resampled; see analysis.bootstrap)."""
    from .bootstrap import percentile_interval, resample_indices

    x, y = _paired(x, y)
    if len(x) < 4:
        return {"pearson": (None, None), "spearman": (None, None)}
    rows = resample_indices(len(x))
    xs, ys = x[rows], y[rows]
    return {"pearson": percentile_interval(_rows_pearson(xs, ys)),
            "spearman": percentile_interval(_rows_pearson(_rows_ranks(xs), _rows_ranks(ys)))}


def correlation_table(signals: dict[str, np.ndarray], target: str) -> list[dict]:
    """Pearson and Spearman of every other signal against `target` (the shape of the paper's Table 1), each with
    its Fisher interval (`low`, `high`) and its bootstrap interval (`ci_low`, `ci_high`)."""
    if target not in signals:
        raise ValueError(f"no signal {target!r}; available: {', '.join(signals) or 'none'}")
    table = []
    for name, values in signals.items():
        if name == target:
            continue
        boot = bootstrap_intervals(signals[target], values)
        table.append({"signal": name, **{kind: {**found(signals[target], values), "ci_low": boot[kind][0],
                                                "ci_high": boot[kind][1]}
                                         for kind, found in (("pearson", pearson), ("spearman", spearman))}})
    return table
