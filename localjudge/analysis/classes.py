"""Per-class attention statistics and which classes to inspect first: pure functions over arrays.

Each judgment belongs to a group (its predicted class, its labelled class, or a super-class of either). Per group:
n, accuracy, the 2x2 matrix's shares and the mean judge score (each with its bootstrap interval), and the means of
per-map signals: the share of the map's mass inside the ground-truth region (where there is one), the map's
normalised entropy (how spread out it is) and its attended area (the share of the view at or above beta).

Which classes to inspect: a judgment "disagrees" where the judge's reading and the prediction's correctness part:
a correct prediction whose attention scored low (CL: right for a reason the judge could not see) or a wrong one
whose attention scored high (WH: the model looked at something that looks like the class). A class is ranked by the
lower end of the 95 % Wilson score interval of its disagreement share (CL + WH over its placed judgments), highest
first, so a class with a few judgments ranks by what its data can support, not by its point estimate; ties go to
the larger class. (Wilson's, not a bootstrap's: the bootstrap of 5 disagreeing judgments of 5 is [1, 1], which
would rank a class of five above one of a hundred at 0.9.) Classes with fewer than `min_n` placed judgments are
listed but not ranked. The trivial baseline is the dataset's own disagreement share: a class whose interval lies
above it is flagged."""

from __future__ import annotations

import numpy as np

from .bootstrap import mean_interval, share_intervals
from .matrix import QUADRANTS, quadrant_labels

MIN_RANKED = 5  # placed judgments a class needs to be ranked
DISAGREEING = ("CL", "WH")


def map_entropy(saliency: np.ndarray) -> float | None:
    """Shannon entropy of the map as a distribution over its pixels, divided by its largest value (log of the pixel
    count): 0 for all mass on one pixel, 1 for a flat map. None for a map with no mass."""
    values = np.asarray(saliency, dtype=np.float64).ravel()
    values = np.clip(values, 0.0, None)
    total = values.sum()
    if total <= 0 or values.size < 2:
        return None
    p = values[values > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(values.size))


def attended_area(saliency: np.ndarray, beta: float) -> float:
    """The share of the map at or above beta: what the masked image keeps visible (paper Eq. 1)."""
    return float((np.asarray(saliency) >= beta).mean())


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def disagreement(labels: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """The share (0-1) of placed judgments (CH, CL, WH, WL) that are CL or WH, with its Wilson interval."""
    labels = np.asarray(labels, dtype=object)
    placed = int(np.isin(labels, QUADRANTS).sum())
    if not placed:
        return None, None, None
    disagreeing = int(np.isin(labels, DISAGREEING).sum())
    low, high = wilson_interval(disagreeing, placed)
    return disagreeing / placed, low, high


def group_statistics(correct: np.ndarray, scores: np.ndarray, threshold: int, signals: dict[str, np.ndarray]) -> dict:
    """One group's figures. `correct`: 1, 0 or NaN (unlabelled); `signals`: per-judgment values (NaN: none)."""
    correct = np.asarray(correct, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    labels = quadrant_labels(correct, scores, threshold)
    placed = int(np.isin(labels, QUADRANTS).sum())
    accuracy = correct[~np.isnan(correct)]
    low, high = mean_interval(accuracy)
    shares = share_intervals(labels, QUADRANTS)
    score_low, score_high = mean_interval(scores)
    share, d_low, d_high = disagreement(labels)
    result = {
        "n": int(len(scores)), "placed": placed,
        "accuracy": {"mean": float(accuracy.mean()) if len(accuracy) else None, "ci_low": low, "ci_high": high},
        "counts": {q: int((labels == q).sum()) for q in QUADRANTS},
        "percent": {q: {"value": 100.0 * (labels == q).sum() / placed if placed else None,
                        "ci_low": shares[q][0], "ci_high": shares[q][1]} for q in QUADRANTS},
        "average_score": {"mean": float(scores.mean()) if len(scores) else None, "ci_low": score_low,
                          "ci_high": score_high},
        "disagreement": {"share": share, "ci_low": d_low, "ci_high": d_high},
    }
    for name, values in signals.items():
        values = np.asarray(values, dtype=np.float64)
        defined = values[~np.isnan(values)]
        s_low, s_high = mean_interval(defined)
        result[name] = {"mean": float(defined.mean()) if len(defined) else None, "n": int(len(defined)),
                        "ci_low": s_low, "ci_high": s_high}
    return result


def class_table(groups: np.ndarray, correct: np.ndarray, scores: np.ndarray, threshold: int,
                signals: dict[str, np.ndarray], min_n: int = MIN_RANKED) -> dict:
    """Every group's statistics (largest first), the dataset's own figures as the baseline, and the groups to inspect
    in rank order (see the module's rule)."""
    groups = np.asarray(groups, dtype=object)
    correct = np.asarray(correct, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    baseline = group_statistics(correct, scores, threshold, signals)
    table = []
    for name in sorted(set(groups.tolist()), key=str):
        members = groups == name
        found = group_statistics(correct[members], scores[members], threshold,
                                 {k: np.asarray(v, dtype=np.float64)[members] for k, v in signals.items()})
        overall = baseline["disagreement"]["share"]
        found["above_baseline"] = bool(found["disagreement"]["ci_low"] is not None and overall is not None
                                       and found["disagreement"]["ci_low"] > overall)
        table.append({"group": name, **found})
    table.sort(key=lambda row: (-row["n"], str(row["group"])))
    ranked = sorted((row for row in table if row["placed"] >= min_n and row["disagreement"]["ci_low"] is not None),
                    key=lambda row: (-row["disagreement"]["ci_low"], -row["n"], str(row["group"])))
    return {"groups": table, "baseline": baseline, "min_n": min_n,
            "inspect": [{"group": row["group"], "disagreement": row["disagreement"],
                         "above_baseline": row["above_baseline"]} for row in ranked],
            "rule": "ranked by the lower end of the 95 % Wilson interval of the share of CL and WH judgments among "
                    f"the placed ones, highest first (ties: the larger class); classes with fewer than {min_n} placed "
                    "judgments are not ranked; flagged where that lower end lies above the dataset's share"}
