"""Agreement between the judge and people: Cohen's kappa (plain, linear, quadratic) equals scikit-learn's, and the
calibrated threshold is right on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from localjudge.analysis.agreement import calibrate_threshold, cohen_kappa


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_kappa_equals_scikit_learn(weights):
    rng = np.random.default_rng(7)
    judge = rng.integers(0, 6, 300)
    human = np.clip(judge + rng.integers(-2, 3, 300), 0, 5)
    assert cohen_kappa(judge, human, labels=range(6), weights=weights) == pytest.approx(
        cohen_kappa_score(judge, human, labels=list(range(6)), weights=weights), abs=1e-12)
    high_j, high_h = judge >= 3, human >= 3
    assert cohen_kappa(high_j, high_h) == pytest.approx(cohen_kappa_score(high_j, high_h), abs=1e-12)


def test_kappa_known_answers():
    assert cohen_kappa([0, 1, 2], [0, 1, 2]) == 1.0
    assert cohen_kappa([1, 1, 0, 0], [0, 0, 1, 1]) == -1.0
    assert cohen_kappa([], []) is None
    assert cohen_kappa([3, 3], [3, 3]) is None  # one label throughout: chance agreement is total


def test_the_threshold_that_separates_people_high_from_low():
    # A judge that scores one lower than people: people's high (>= 3) is the judge's >= 2, exactly.
    human = np.array([0, 1, 2, 3, 4, 5] * 5)
    judge = np.maximum(human - 1, 0)
    fitted = calibrate_threshold(judge, human, human_threshold=3)
    assert fitted["threshold"] == 2 and fitted["kappa"] == 1.0 and fitted["accuracy"] == 1.0
    assert fitted["n"] == 30 and fitted["human_high"] == 15
    by_threshold = {c["threshold"]: c for c in fitted["candidates"]}
    assert by_threshold[3]["kappa"] < 1.0 and by_threshold[0]["kappa"] == 0.0  # everything high: chance only
    # agreement of the raw scores
    assert fitted["pearson"]["r"] == pytest.approx(np.corrcoef(judge, human)[0, 1])
    assert fitted["weighted_kappa"] == pytest.approx(
        cohen_kappa_score(judge, human, labels=list(range(6)), weights="quadratic"))


def test_ties_go_to_the_default_threshold_and_no_contrast_means_no_threshold():
    # scores 0 and 5 only: every threshold from 1 to 5 splits them the same way
    fitted = calibrate_threshold([0, 5, 0, 5], [0, 5, 0, 5], human_threshold=3, default_threshold=3)
    assert fitted["threshold"] == 3 and fitted["kappa"] == 1.0
    everyone_high = calibrate_threshold([1, 2, 3], [4, 4, 5])
    assert everyone_high["threshold"] is None and everyone_high["kappa"] is None


def test_icc_by_shrout_and_fleiss():
    """Shrout & Fleiss's (1979) worked example: 6 targets, 4 judges; ICC(2,1) = 0.29."""
    from localjudge.analysis.agreement import icc

    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc(ratings) == pytest.approx(0.29, abs=0.005)
    assert icc([[1, 1], [3, 3], [5, 5]]) == pytest.approx(1.0)  # perfect agreement
    assert icc([[2, 2]]) is None


def test_score_agreement_of_two_raters():
    from localjudge.analysis.agreement import score_agreement

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, size=80)
    other = np.clip(truth + rng.integers(-1, 2, size=80), 0, 5)
    found = score_agreement(truth, other)
    assert found["n"] == 80 and found["weighted_kappa"]["value"] > 0.8
    assert found["weighted_kappa"]["ci_low"] <= found["weighted_kappa"]["value"] <= found["weighted_kappa"]["ci_high"]
    assert found["icc"]["ci_low"] <= found["icc"]["value"] <= found["icc"]["ci_high"]
    noise = score_agreement(truth, rng.integers(0, 6, size=80))
    assert abs(noise["weighted_kappa"]["value"]) < 0.3 and noise["icc"]["ci_low"] < 0.2
