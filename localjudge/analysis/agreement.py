"""Agreement between the judge and people who rated the same images: Cohen's kappa (plain and weighted) and the
judge-score threshold that best separates what people call high from low. Pure functions over arrays."""

from __future__ import annotations

import numpy as np

from .correlation import pearson, spearman

SCORES = tuple(range(6))


def cohen_kappa(a, b, labels=None, weights: str | None = None) -> float | None:
    """Cohen's kappa between two raters' labels (None where it is undefined: no pairs, or both raters gave one and
    the same label throughout). `weights` None, "linear" or "quadratic" (disagreement weighted by distance), as
    scikit-learn's `cohen_kappa_score`."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError("the two raters must rate the same items")
    if a.size == 0:
        return None
    labels = np.unique(np.concatenate([a, b])) if labels is None else np.asarray(labels)
    index = {value: n for n, value in enumerate(labels.tolist())}
    k = len(labels)
    observed = np.zeros((k, k), dtype=np.float64)
    for x, y in zip(a.tolist(), b.tolist()):
        observed[index[x], index[y]] += 1
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    if weights is None:
        disagreement = 1.0 - np.eye(k)
    elif weights in ("linear", "quadratic"):
        distance = np.abs(np.subtract.outer(np.arange(k), np.arange(k))).astype(np.float64)
        disagreement = distance if weights == "linear" else distance ** 2
    else:
        raise ValueError(f"unknown weights {weights!r}; use linear or quadratic")
    chance = float(np.sum(disagreement * expected))
    if chance == 0:
        return None
    return 1.0 - float(np.sum(disagreement * observed)) / chance


def calibrate_threshold(judge_scores, human_scores, human_threshold: int = 3, default_threshold: int = 3) -> dict:
    """The judge threshold t (score >= t is high) whose high/low agrees best with people's (rating >= human_threshold
    is high), by Cohen's kappa; ties go to the better accuracy, then to the threshold nearer the default.

    Returns the threshold with its kappa and accuracy, every candidate's, and the agreement of the raw 0-5 scores
    (quadratic-weighted kappa, Pearson, Spearman)."""
    judge = np.asarray(judge_scores, dtype=np.int64)
    human = np.asarray(human_scores, dtype=np.int64)
    if judge.shape != human.shape:
        raise ValueError("judge and human scores must pair up")
    human_high = human >= human_threshold
    candidates = []
    for threshold in range(0, 7):
        judge_high = judge >= threshold
        candidates.append({"threshold": threshold,
                           "kappa": cohen_kappa(judge_high, human_high, labels=[False, True]),
                           "accuracy": float(np.mean(judge_high == human_high)) if judge.size else None})
    # Where people called everything high (or everything low) there is nothing to separate: kappa is 0 or undefined
    # at every threshold, and a threshold picked from that would be noise.
    contrast = 0 < int(human_high.sum()) < human.size
    defined = [c for c in candidates if c["kappa"] is not None and contrast]
    best = max(defined, key=lambda c: (round(c["kappa"], 12), c["accuracy"],
                                       -abs(c["threshold"] - default_threshold)), default=None)
    return {
        "n": int(judge.size),
        "human_threshold": human_threshold,
        "human_high": int(human_high.sum()),
        "reason": None if contrast else "people's ratings are all high or all low: nothing to separate",
        "threshold": None if best is None else best["threshold"],
        "kappa": None if best is None else best["kappa"],
        "accuracy": None if best is None else best["accuracy"],
        "candidates": candidates,
        "weighted_kappa": cohen_kappa(judge, human, labels=SCORES, weights="quadratic"),
        "pearson": pearson(judge, human),
        "spearman": spearman(judge, human),
        "mean_judge": float(judge.mean()) if judge.size else None,
        "mean_human": float(human.mean()) if human.size else None,
    }


def icc(ratings) -> float | None:
    """ICC(2,1) (Shrout & Fleiss, 1979): two-way random effects, absolute agreement, one rater; rows are the items,
    columns the raters (every rater rated every item). None where undefined (fewer than 2 items or raters, or no
    variance at all)."""
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return None
    n, k = x.shape
    grand = x.mean()
    rows = k * np.sum((x.mean(axis=1) - grand) ** 2) / (n - 1)  # between items
    columns = n * np.sum((x.mean(axis=0) - grand) ** 2) / (k - 1)  # between raters
    residual = (np.sum((x - grand) ** 2) - (n - 1) * rows - (k - 1) * columns) / ((n - 1) * (k - 1))
    denominator = rows + (k - 1) * residual + k * (columns - residual) / n
    return float((rows - residual) / denominator) if denominator > 0 else None


def score_agreement(a, b) -> dict:
    """How two raters of the same items (judges or people, scores 0-5) agree: quadratic-weighted kappa and ICC(2,1)
    with bootstrap 95 % intervals (the items resampled), Pearson and Spearman with Fisher's and bootstrap intervals."""
    from .bootstrap import LEVEL, RESAMPLES, SEED, interval
    from .correlation import bootstrap_intervals

    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    pairs = np.stack([a, b], axis=1)

    def kappa(rows) -> float:
        found = cohen_kappa(pairs[rows, 0], pairs[rows, 1], labels=SCORES, weights="quadratic")
        return np.nan if found is None else found

    def agreement(rows) -> float:
        found = icc(pairs[rows])
        return np.nan if found is None else found

    boot = bootstrap_intervals(a, b)
    kappa_ci = interval(kappa, len(a)) if len(a) >= 2 else (None, None)
    icc_ci = interval(agreement, len(a)) if len(a) >= 2 else (None, None)
    return {"n": int(len(a)),
            "weighted_kappa": {"value": cohen_kappa(a, b, labels=SCORES, weights="quadratic"),
                               "ci_low": kappa_ci[0], "ci_high": kappa_ci[1]},
            "icc": {"value": icc(pairs), "ci_low": icc_ci[0], "ci_high": icc_ci[1]},
            "pearson": {**pearson(a, b), "ci_low": boot["pearson"][0], "ci_high": boot["pearson"][1]},
            "spearman": {**spearman(a, b), "ci_low": boot["spearman"][0], "ci_high": boot["spearman"][1]},
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL}}
