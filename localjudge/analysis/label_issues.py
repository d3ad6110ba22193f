"""Which given labels are wrong: the judge's verdicts and cleanlab's filters on the same samples, scored against a
known truth. Pure functions over arrays.

The judge's rule. The judge scores whether what the model attended to shows the model's predicted class.
- The prediction differs from the given label, and the judge scores high (WH): the model looked at a real object of
  its own class, so the given label is suspect. This is the paper's rule for human labels (its COCO experiment).
- The prediction equals the given label, and the judge scores low (CL): the label rests on evidence that is not
  the object. In the paper's ImageNet experiment the labels are the classifier's own predictions, so every sample
  is "correct" and only this half of the rule can flag anything.
`judge` applies both halves; `judge-wh` only the first.

cleanlab's baselines run `cleanlab.filter.find_label_issues(labels, pred_probs, filter_by=...)` on the stored
probabilities (the paper's CL, PNR, LSC, LNM). `keep-all` flags nothing (the classifier's labels taken as they are:
the paper's "ResNet18" row).

Scores treat "the label is right" as the positive class (the sample is kept), as the paper's Table 6 does (its
keep-all row has recall 1.0)."""

from __future__ import annotations

import numpy as np

CLEANLAB_FILTERS = {"confident_learning": "CL", "prune_by_noise_rate": "PNR", "low_self_confidence": "LSC",
                    "low_normalized_margin": "LNM"}


def judge_flags(correct: np.ndarray, scores: np.ndarray, threshold: int, wh_only: bool = False) -> np.ndarray:
    """True where the judge suspects the given label (see the module's rule)."""
    correct = np.asarray(correct, dtype=bool)
    high = np.asarray(scores, dtype=np.float64) >= threshold
    wrong_high = ~correct & high
    return wrong_high if wh_only else wrong_high | (correct & ~high)


def given_labels(label_indices: list[list[int]], pred_probs: np.ndarray) -> np.ndarray:
    """The one label per image cleanlab's filters read, from all of an image's labels (any of which counts as
    correct): the one the probabilities find most likely, so an image is suspected only where none of its labels is
    plausible. The first alone would call a photo labelled "tabby; tiger cat" mislabelled whenever the model says
    "tiger cat"."""
    probs = np.asarray(pred_probs)
    return np.array([max(indices, key=lambda i: probs[n, i]) for n, indices in enumerate(label_indices)], dtype=int)


def cleanlab_flags(labels: np.ndarray, pred_probs: np.ndarray, filter_by: str) -> np.ndarray:
    """cleanlab's verdicts. Classes that no given label uses are dropped from the probabilities (and each row
    renormalised) first: cleanlab estimates per-class noise, and the 1000 ImageNet outputs far outnumber the classes
    of a sample of a few hundred images."""
    from cleanlab.filter import find_label_issues

    labels = np.asarray(labels, dtype=int)
    used = np.unique(labels)
    probs = np.asarray(pred_probs, dtype=np.float64)[:, used]
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    remapped = np.searchsorted(used, labels)
    return np.asarray(find_label_issues(remapped, probs, filter_by=filter_by), dtype=bool)


def detection_scores(label_ok: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 with "label right, kept" as the positive class."""
    truth = np.asarray(label_ok, dtype=bool)
    kept = ~np.asarray(flagged, dtype=bool)
    tp = float(np.sum(kept & truth))
    fp = float(np.sum(kept & ~truth))
    fn = float(np.sum(~kept & truth))
    accuracy = float(np.mean(kept == truth)) if truth.size else float("nan")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "flagged": int(np.sum(~kept)), "n": int(truth.size)}



def f1_intervals(label_ok: np.ndarray, flagged: np.ndarray, reference: np.ndarray) -> dict:
    """The bootstrap interval of a method's F1, and the paired one of its F1 minus the reference's (keep-all) on the
    same resampled samples. Each method's verdicts are held fixed: cleanlab's filters, which read the whole dataset,
    are not re-run on every resample."""
    from .bootstrap import interval

    truth, flagged, reference = (np.asarray(a, dtype=bool) for a in (label_ok, flagged, reference))

    def f1(rows, flags):
        return detection_scores(truth[rows], flags[rows])["f1"]

    low, high = interval(lambda rows: f1(rows, flagged), len(truth))
    every = np.arange(len(truth))
    gap_low, gap_high = interval(lambda rows: f1(rows, flagged) - f1(rows, reference), len(truth))
    return {"f1_ci_low": low, "f1_ci_high": high, "f1_minus_keep_all": f1(every, flagged) - f1(every, reference),
            "f1_minus_keep_all_ci_low": gap_low, "f1_minus_keep_all_ci_high": gap_high}
