"""Fit each judge setting's score threshold to people's ratings of the same views, and store it."""

from __future__ import annotations

import json

from .analysis.agreement import calibrate_threshold, score_agreement
from .queries import GROUP_COLUMNS, samples, setting_key
from .store import Store, content_key, now


def calibrate_settings(store: Store, raters: tuple[str, ...], human_threshold: int, default_threshold: int,
                       **filters) -> list[dict]:
    """One calibration per judge setting (queries.GROUP_COLUMNS) with rated judgments; each rating of a view is
    one pair (judge score, person's score)."""
    pairs: dict[str, dict] = {}
    for sample in samples(store, default_threshold, **filters):
        if sample["status"] != "ok":
            continue
        ratings = [r for r in sample["ratings"] if not raters or r["rater"] in raters]
        if not ratings:
            continue
        key = setting_key(sample)
        group = pairs.setdefault(key, {"setting": {c: sample[c] for c in GROUP_COLUMNS}, "judge": [], "human": [],
                                       "raters": set()})
        for rating in ratings:
            group["judge"].append(sample["score"])
            group["human"].append(rating["score"])
            group["raters"].add(rating["rater"])
    found = []
    for key, group in pairs.items():
        fitted = calibrate_threshold(group["judge"], group["human"], human_threshold, default_threshold)
        # the judge against people on the 0-5 scores, with intervals, as people against each other (rater_agreement)
        result = {"setting_key": key, "setting": group["setting"], "raters": sorted(group["raters"]), **fitted,
                  "agreement": score_agreement(group["judge"], group["human"])}
        store.add_calibration({
            "id": content_key("calibration", key, result["raters"], human_threshold, now()),
            "setting_key": key, "setting": json.dumps(group["setting"], sort_keys=True),
            "raters": json.dumps(result["raters"]), "human_threshold": human_threshold,
            "threshold": fitted["threshold"], "n": fitted["n"], "kappa": fitted["kappa"],
            "weighted_kappa": fitted["weighted_kappa"], "accuracy": fitted["accuracy"],
            "pearson": fitted["pearson"]["r"], "spearman": fitted["spearman"]["r"],
            "details": json.dumps(fitted), "created_at": now()})
        found.append(result)
    return found
