"""Correlations: equal to scipy's on random and tied data, and the table over a real run's signals."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from scipy import stats

from localjudge.analysis.correlation import average_ranks, correlation_table, pearson, spearman

from .conftest import invoke, invoke_json, seg_photos_manifest


def test_pearson_and_spearman_equal_scipy():
    generator = np.random.default_rng(0)
    x = generator.normal(size=60)
    y = 0.5 * x + generator.normal(size=60)
    ours, theirs = pearson(x, y), stats.pearsonr(x, y)
    assert ours["r"] == pytest.approx(theirs.statistic) and ours["n"] == 60
    low, high = theirs.confidence_interval(0.95)
    assert (ours["low"], ours["high"]) == (pytest.approx(low), pytest.approx(high))
    scores = generator.integers(0, 6, size=60)  # judge scores: many ties
    assert spearman(scores, y)["r"] == pytest.approx(stats.spearmanr(scores, y).statistic)
    assert average_ranks(np.array([3, 1, 3, 2])).tolist() == stats.rankdata([3, 1, 3, 2]).tolist()
    # Fieller's interval for rho: tanh(atanh(rho) +- 1.96 sqrt(1.06 / (n - 3))).
    rho = spearman(x, y)
    assert rho["low"] == pytest.approx(math.tanh(math.atanh(rho["r"]) - 1.959964 * math.sqrt(1.06 / 57)))


def test_missing_values_and_degenerate_signals():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    y = np.array([2.0, 4.0, 6.0, np.nan, 10.0])
    result = pearson(x, y)
    assert result["n"] == 3 and result["r"] == pytest.approx(1.0) and result["low"] is None  # n <= 3: no interval
    constant = pearson(np.ones(10), np.arange(10))
    assert constant["r"] is None and constant["n"] == 10
    with pytest.raises(ValueError, match="no signal 'score'"):
        correlation_table({"iou": np.ones(3)}, "score")


def test_correlate_over_a_run(tmp_path, data_dir, tiny_vlms_bpe512):
    manifest = seg_photos_manifest(data_dir, tmp_path / "eight.csv", 8)
    db = tmp_path / "eight.db"
    invoke("run", manifest, "--db", db, "--vlm", tiny_vlms_bpe512["gemma3"], "--max-new-tokens", "48",
           "--masks", data_dir / "seg-photos" / "masks")
    invoke("eval", "faithfulness", "--db", db, "--steps", "5")
    table = invoke_json("eval", "correlate", "--db", db, "--steps", "5", "--target", "iou")
    assert table["target"] == "iou"
    names = {row["signal"] for row in table["correlations"]}
    assert {"confidence", "dice", "pixel_accuracy", "f1", "deletion", "insertion", "average_drop", "aopc"} <= names
    with sqlite3.connect(db) as conn:
        pairs = conn.execute("select r.iou, f.deletion_auc from region_scores r join faithfulness f "
                             "on f.saliency_id = r.saliency_id order by r.saliency_id").fetchall()
    deletion = next(row for row in table["correlations"] if row["signal"] == "deletion")
    assert deletion["pearson"]["n"] == 8
    assert deletion["pearson"]["r"] == pytest.approx(stats.pearsonr(*zip(*pairs)).statistic)
    dice = next(row for row in table["correlations"] if row["signal"] == "dice")
    assert dice["spearman"]["r"] > 0.9  # Dice is a monotone function of IoU
    text = invoke("eval", "correlate", "--db", db, "--steps", "5", "--target", "iou").output
    assert "Pearson r [Fisher 95%] [bootstrap]" in text and "deletion" in text


def test_compare_puts_every_setting_side_by_side(tmp_path, data_dir, tiny_vlms_bpe512):
    manifest = seg_photos_manifest(data_dir, tmp_path / "six.csv", 6)
    db = tmp_path / "six.db"
    qwen = tiny_vlms_bpe512["qwen2_5_vl"]
    invoke("run", manifest, "--db", db, "--vlm", qwen)
    invoke("judge", "--db", db, "--vlm", qwen, "--image-mode", "heatmap")
    settings = invoke_json("compare", "--db", db)["settings"]
    assert {s["image_mode"] for s in settings} == {"masked", "heatmap"}
    with sqlite3.connect(db) as conn:
        for setting in settings:
            n, average = conn.execute("select count(*), avg(score) from judgments where status = 'ok' and "
                                      "image_mode = ?", [setting["image_mode"]]).fetchone()
            assert setting["judgments"] == n and setting["average_score"] == pytest.approx(average)
            assert sum(setting[q] for q in ("CH", "CL", "WH", "WL")) == pytest.approx(100.0)
    assert "CH%" in invoke("compare", "--db", db).output
