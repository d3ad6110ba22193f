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
