"""Bootstrap intervals, checked against closed forms: a proportion's resampled share is Binomial(n, p)/n, so its
percentile interval is the binomial's quantiles (close to the Wald interval p +- 1.96 sqrt(p(1-p)/n) at n = 400); a
mean's matches the normal interval; a correlation's matches Fisher's z interval on a bivariate normal sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from localjudge.analysis.bootstrap import (correlation_interval, mean_interval, paired_difference_interval,
                                           share_intervals)
from localjudge.analysis.correlation import pearson

Z = 1.959963984540054


def test_a_proportions_interval_is_the_closed_form():
    n, hits = 400, 120
    p = hits / n
    half = Z * math.sqrt(p * (1 - p) / n)  # 0.0449
    groups = np.array(["CH"] * hits + ["CL"] * (n - hits))
    low, high = share_intervals(groups, ("CH", "CL", "WH", "WL"))["CH"]
    assert abs(low - 100 * (p - half)) < 0.6 and abs(high - 100 * (p + half)) < 0.6  # in %, 1000 resamples
    # the same seed gives the same interval; another seed nearly the same
    assert share_intervals(groups, ("CH", "CL"))["CH"] == (low, high)
    other = share_intervals(groups, ("CH", "CL"), seed=7)["CH"]
    assert abs(other[0] - low) < 1.0 and abs(other[1] - high) < 1.0


def test_units_outside_every_share_are_resampled_but_not_counted():
    groups = np.array(["CH"] * 50 + ["WL"] * 50 + ["unlabelled"] * 100)
    low, high = share_intervals(groups, ("CH", "CL", "WH", "WL"))["CH"]
    assert low < 50 < high and high - low < 25  # a share of the ~100 placed, not of 200


def test_a_means_interval_is_the_normal_one():
    values = np.random.default_rng(3).normal(2.0, 1.0, size=500)
    low, high = mean_interval(values)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(low - (values.mean() - Z * se)) < 0.02 and abs(high - (values.mean() + Z * se)) < 0.02
    assert mean_interval([np.nan, 1.0, 1.0, 1.0]) == (1.0, 1.0) and mean_interval([]) == (None, None)


def test_a_correlations_interval_matches_fishers():
    rng = np.random.default_rng(5)
    x = rng.normal(size=300)
    y = 0.5 * x + math.sqrt(0.75) * rng.normal(size=300)
    fisher = pearson(x, y)
    low, high = correlation_interval(x, y, lambda a, b: float(np.corrcoef(a, b)[0, 1]))
    assert abs(low - fisher["low"]) < 0.03 and abs(high - fisher["high"]) < 0.03


def test_the_paired_bootstrap_sees_a_difference_the_unpaired_spread_hides():
    """Two settings judged on the same 200 images: the second scores every image 0.2 higher, on top of a large
    per-image spread. Paired, the interval is tight around 0.2; each mean's own interval is ten times wider."""
    rng = np.random.default_rng(11)
    first = rng.normal(2.5, 1.5, size=200)
    second = first + 0.2 + rng.normal(0, 0.05, size=200)
    found = paired_difference_interval(first, second, lambda v: float(v.mean()))
    assert abs(found["difference"] - 0.2) < 0.02 and found["ci_low"] > 0.15 and found["ci_high"] < 0.25
    own = mean_interval(first)
    assert own[1] - own[0] > 10 * (found["ci_high"] - found["ci_low"])


def test_the_correlation_table_carries_both_intervals():
    from localjudge.analysis.correlation import average_ranks, bootstrap_intervals, correlation_table

    rng = np.random.default_rng(2)
    x = rng.normal(size=120)
    signals = {"score": x, "iou": x + rng.normal(size=120), "flat": np.ones(120)}
    table = {row["signal"]: row for row in correlation_table(signals, "score")}
    iou = table["iou"]
    for kind in ("pearson", "spearman"):
        found = iou[kind]
        assert found["ci_low"] < found["r"] < found["ci_high"]
        assert abs(found["ci_low"] - found["low"]) < 0.06 and abs(found["ci_high"] - found["high"]) < 0.06
    assert table["flat"]["pearson"]["ci_low"] is None  # a constant signal has no correlation, nor an interval
    # the vectorised ranks are the reference ranks, ties included
    values = np.array([3.0, 1.0, 3.0, 2.0, 3.0])
    from localjudge.analysis.correlation import _rows_ranks

    assert np.array_equal(_rows_ranks(values[None])[0], average_ranks(values))
    assert bootstrap_intervals([1.0, 2.0], [2.0, 1.0]) == {"pearson": (None, None), "spearman": (None, None)}


def test_every_dataset_figure_of_the_commands_carries_its_interval(data_dir, tmp_path):
    from .conftest import invoke, invoke_json

    manifest = data_dir / "seg-photos" / "labels.csv"
    db = tmp_path / "ci.db"
    common = ["--path-column", "file", "--label-column", "imagenet_indices", "--db", db]
    invoke("run", manifest, *common, "--shard", "1/4")  # 18 photos, two mask settings
    invoke("run", manifest, *common, "--shard", "1/4", "--alpha", "25")
    (matrix, other) = invoke_json("matrix", "--db", db)["matrices"]
    for found in (matrix, other):
        for name in ("CH", "CL", "WH", "WL", "average_score"):
            interval = found["intervals"][name]
            assert set(interval) == {"ci_low", "ci_high"}
        assert found["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95, "unit": "image"}
        low, high = found["intervals"]["average_score"]["ci_low"], found["intervals"]["average_score"]["ci_high"]
        assert low <= found["average_score"] <= high
    compared = invoke_json("compare", "--db", db, "--against", matrix["setting_key"][:8])
    assert {s["setting_key"] for s in compared["settings"]} == {matrix["setting_key"], other["setting_key"]}
    (difference,) = compared["paired"]["differences"]
    assert difference["setting_key"] == other["setting_key"] and difference["images"] == matrix["judgments"]
    assert difference["average_score"]["difference"] == pytest.approx(other["average_score"] - matrix["average_score"])
    text = invoke("compare", "--db", db, "--against", matrix["setting_key"][:8]).output
    assert "paired bootstrap 95 % intervals" in text
    for found in (matrix, other):  # the intervals are numbers around their figures, not placeholders
        for quadrant, count in found["counts"].items():
            interval = found["intervals"][quadrant]
            if count:
                assert interval["ci_low"] <= found["percent"][quadrant] <= interval["ci_high"]
    regions = invoke_json("eval", "regions", "--db", db, "--mask-column", "mask", "--manifest", manifest,
                          "--path-column", "file")
    assert set(regions["means"]["intervals"]) >= {"iou", "dice", "pixel_accuracy", "f1"}
    iou = regions["means"]["intervals"]["iou"]
    assert iou["ci_low"] <= regions["means"]["iou"] <= iou["ci_high"]
    for metric in ("pointing_game", "energy_pointing_game", "rank_accuracy", "pxap"):
        found = regions["localisation"]["maps"][metric]
        assert found["ci_low"] <= found["mean"] <= found["ci_high"], metric
    correlations = invoke_json("eval", "correlate", "--db", db, "--target", "iou")
    for row in correlations["correlations"]:
        for kind in ("pearson", "spearman"):
            if row[kind]["r"] is not None and row[kind]["n"] > 10:
                assert row[kind]["ci_low"] <= row[kind]["r"] <= row[kind]["ci_high"], row["signal"]
    bad = invoke("compare", "--db", db, "--against", "zzzz", expect_ok=False)
    assert bad.exit_code == 1 and "no setting has a key starting with it" in bad.output


def test_findings_of_one_image_are_resampled_together():
    """Known answers of the cluster bootstrap: with every image's findings identical (each image all CH or all WL,
    ten findings each), the figure varies as the images do, not as 10x as many independent findings would; with
    one finding per image it is the plain bootstrap, draw for draw."""
    from localjudge.analysis.bootstrap import clustered_intervals, mean_interval, share_intervals
    from localjudge.analysis.matrix import matrix_intervals

    images = np.repeat(np.arange(20), 10)
    correct = np.repeat(np.arange(20) % 2, 10).astype(float)  # images 1, 3, ... right; the others wrong
    scores = np.where(correct == 1, 5.0, 0.0)
    clustered = matrix_intervals(correct, scores, 3, images)
    independent = matrix_intervals(correct, scores, 3)
    width = {name: found["intervals"]["CH"]["ci_high"] - found["intervals"]["CH"]["ci_low"]
             for name, found in (("clustered", clustered), ("independent", independent))}
    # 20 images at p = 0.5: the share's standard error is 100 * sqrt(0.25 / 20) = 11.2 points (interval ~ 44
    # points wide; in steps of 5 points); 200 independent findings would give 3.5 (~ 14 wide)
    assert 35 <= width["clustered"] <= 55 and 10 <= width["independent"] <= 18
    assert clustered["bootstrap"]["unit"] == "image, with all its findings"
    # singletons: the same draws as the plain bootstrap
    labels = np.array(["CH", "WL", "CH", "CL", "WH"] * 4, dtype=object)
    values = np.arange(20, dtype=float)
    found = clustered_intervals(labels, values, np.arange(20), ("CH", "CL", "WH", "WL"))
    plain = share_intervals(labels, ("CH", "CL", "WH", "WL"))
    for name in plain:
        assert found[name] == pytest.approx(plain[name])
    assert found["mean"] == pytest.approx(mean_interval(values))


def test_paired_differences_resample_images_with_all_their_findings():
    """Known answers: ten findings per image, each image's findings alike; the paired interval drawn by image is about
    sqrt(10) times as wide as one drawn by finding; with one finding per image, the clustered and plain intervals are
    the same draws."""
    from localjudge.analysis.bootstrap import paired_difference_interval

    images = np.repeat(np.arange(30), 10)
    first = np.repeat(np.arange(30) % 3, 10).astype(float)
    second = first + np.repeat(np.arange(30) % 2, 10)  # half the images score one more
    mean = lambda v: float(v.mean())  # noqa: E731
    clustered = paired_difference_interval(first, second, mean, clusters=images)
    plain = paired_difference_interval(first, second, mean)
    assert clustered["difference"] == plain["difference"] == 0.5
    width = {name: found["ci_high"] - found["ci_low"] for name, found in (("clustered", clustered), ("plain", plain))}
    assert 2.2 < width["clustered"] / width["plain"] < 4.5
    single = paired_difference_interval(first[::10], second[::10], mean, clusters=images[::10])
    assert single == paired_difference_interval(first[::10], second[::10], mean)
