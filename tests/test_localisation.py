"""Localisation metrics by known answers on hand-made maps and regions, and their baselines."""

from __future__ import annotations

import numpy as np
import pytest

from localjudge.analysis.localisation import (energy_pointing, gaussian_map, localisation, localisation_table, pxap,
                                              pointing_hit, rank_accuracy, threshold_counts, uniform_map)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_the_pointing_game_hits_closer_than_15_pixels_as_torchray():
    saliency = np.zeros((64, 64), dtype=np.float32)
    saliency[10, 10] = 1.0
    region = np.zeros((64, 64), dtype=bool)
    region[10, 24] = True  # 14 px away: a hit
    assert pointing_hit(saliency, region) == 1.0
    region[:] = False
    region[10, 25] = True  # 15 px: TorchRay's acceptance region is (u^2 + v^2) < 15^2, a miss
    assert pointing_hit(saliency, region) == 0.0
    region[:] = False
    region[19, 21] = True  # 9^2 + 11^2 = 202 < 225: a hit off the axes
    assert pointing_hit(saliency, region) == 1.0
    region[:] = False
    region[10, 25] = True
    assert pointing_hit(saliency, np.zeros_like(region)) is None  # no object
    assert pointing_hit(np.ones((64, 64)), region) is None  # a flat map points nowhere


def test_mass_and_rank_by_hand():
    region = square(8, 0, 0, 2)  # 4 pixels
    saliency = np.zeros((8, 8))
    saliency[0, 0:2] = 1.0  # two in the region
    saliency[7, 7] = 2.0  # one outside, twice as strong
    assert energy_pointing(saliency, region) == pytest.approx(0.5)
    # the top 4 are the three non-zero pixels and one of the 61 tied at 0, of which 2 are in the region
    assert rank_accuracy(saliency, region) == pytest.approx((2 + 2 / 61) / 4)
    saliency[1, 0] = 0.5  # now the fourth best is in the region too
    assert rank_accuracy(saliency, region) == pytest.approx(3 / 4)
    assert rank_accuracy(uniform_map(8, 8), region) == pytest.approx(4 / 64)  # a uniform map: the area fraction
    assert energy_pointing(uniform_map(8, 8), region) == pytest.approx(4 / 64)
    assert energy_pointing(np.zeros((8, 8)), region) is None
    assert energy_pointing(saliency, np.zeros_like(region)) is None  # no object: no share, like the other metrics


def wsolevaluation_pxap(pairs, interval: float = 0.01) -> float:
    """A port of wsolevaluation's MaskEvaluator (accumulate + compute, clovaai/wsolevaluation evaluation.py), kept
    here as the reference: score histograms of region and background pixels, bins [0, bw), ..., [1-bw, 1), [1, 2),
    [2, 3]; tp and fp counted from the top bin down; AP = sum of precision times the recall gained."""
    thresholds = list(np.arange(0, 1, interval))
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(thresholds) + 2)
    false_hist = np.zeros(len(thresholds) + 2)
    for saliency, truth in pairs:
        true_hist += np.histogram(saliency[truth], bins=edges)[0]
        false_hist += np.histogram(saliency[~truth], bins=edges)[0]
    tp, fp = true_hist[::-1].cumsum(), false_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum())


def test_pxap_is_wsolevaluations():
    rng = np.random.default_rng(4)
    pairs = []
    for n in range(6):
        region = square(40, 5 + n, 8, 15)
        saliency = np.clip(region * 0.5 + rng.random((40, 40)).astype(np.float32) * 0.6, 0, 1).astype(np.float32)
        saliency[0, 0], saliency[1, 1] = 1.0, 0.0  # values on the outer bins' edges
        pairs.append((saliency, region))
    ours = pxap(sum(threshold_counts(s, t) for s, t in pairs))
    assert 0.4 < ours < 1 and ours == pytest.approx(wsolevaluation_pxap(pairs), abs=1e-9)


def test_pxap_of_a_perfect_and_a_uniform_map():
    region = square(32, 8, 8, 16)
    perfect = region.astype(np.float32)
    assert pxap(threshold_counts(perfect, region)) == pytest.approx(1.0)
    assert pxap(threshold_counts(uniform_map(32, 32), region)) == pytest.approx(region.mean())  # the prevalence
    assert pxap(threshold_counts(perfect, np.zeros_like(region))) is None


def test_a_dataset_table_with_its_baselines():
    rng = np.random.default_rng(0)
    pairs = []
    for n in range(12):  # objects off centre; maps on the objects, with noise
        region = square(64, 4 + n, 30, 20)
        saliency = np.clip(region * 0.8 + rng.random((64, 64)) * 0.3, 0, 1).astype(np.float32)
        pairs.append((saliency, region))
    table = localisation_table(pairs, beta=0.6)
    maps, gaussian, uniform = table["maps"], table["centred gaussian"], table["uniform"]
    assert maps["pointing_game"]["mean"] == 1.0 and maps["pointing_game"]["n"] == 12
    assert maps["energy_pointing_game"]["mean"] > gaussian["energy_pointing_game"]["mean"]
    assert uniform["energy_pointing_game"]["mean"] == pytest.approx(table["mean_region_area"])
    assert uniform["rank_accuracy"]["mean"] == pytest.approx(table["mean_region_area"])
    assert uniform["pointing_game"]["mean"] is None
    assert maps["pxap"]["mean"] > gaussian["pxap"]["mean"] > 0
    assert uniform["pxap"]["mean"] == pytest.approx(table["mean_region_area"])
    assert maps["pxap"]["ci_low"] <= maps["pxap"]["mean"] <= maps["pxap"]["ci_high"]
    assert maps["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}
    assert maps["at_best_threshold"]["iou"]["mean"] >= maps["at_beta"]["iou"]["mean"]
    assert maps["at_beta"]["threshold"] == 0.6
    low, high = maps["energy_pointing_game"]["ci_low"], maps["energy_pointing_game"]["ci_high"]
    assert low <= maps["energy_pointing_game"]["mean"] <= high
    assert gaussian_map(5, 5).argmax() == 12  # the centre
    empty = localisation([], 0.6)
    assert empty["images"] == 0 and empty["pointing_game"]["mean"] is None and "pxap" not in empty


def test_eval_regions_prints_the_suite_beside_its_baselines(data_dir, tmp_path):
    from .conftest import invoke, invoke_json

    manifest = data_dir / "seg-photos" / "labels.csv"
    db = tmp_path / "loc.db"
    invoke("run", manifest, "--path-column", "file", "--label-column", "imagenet_indices", "--db", db,
           "--shard", "2/5")
    found = invoke_json("eval", "regions", "--db", db, "--mask-column", "mask", "--manifest", manifest,
                        "--path-column", "file")
    table = found["localisation"]
    assert table["maps"]["images"] == found["means"]["maps"] > 5
    for column in ("maps", "centre point", "centred gaussian", "uniform"):
        assert table[column]["images"] == table["maps"]["images"]
        assert 0 <= table[column]["energy_pointing_game"]["mean"] <= 1
    # the IoU at beta is the stored region scores' mean
    assert table["maps"]["at_beta"]["iou"]["mean"] == pytest.approx(found["means"]["iou"], abs=1e-12)
    text = invoke("eval", "regions", "--db", db, "--mask-column", "mask", "--manifest", manifest, "--path-column",
                  "file").output
    assert "centred gaussian" in text and "pointing game (15 px)" in text and "PxAP" in text


def test_the_report_shows_localisation_beside_the_baselines(data_dir, tmp_path, browser):
    from .conftest import invoke, invoke_json

    manifest = data_dir / "seg-photos" / "labels.csv"
    db = tmp_path / "loc.db"
    invoke("run", manifest, "--path-column", "file", "--label-column", "imagenet_indices", "--db", db,
           "--shard", "3/5", "--mask-column", "mask")  # ground truth from the manifest
    written = invoke_json("report", "--db", db, "--out", tmp_path / "report")
    assert written["localisation_settings"] == 1
    page = browser.new_page()
    try:
        page.goto((tmp_path / "report" / "index.html").as_uri())
        figure = page.locator("#localisation-figure")
        assert figure.is_visible()
        text = figure.inner_text()
        assert "relu6(_bn1)" in text and "centred gaussian" in text and "PxAP" in text
    finally:
        page.close()
