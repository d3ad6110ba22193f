"""Label-issue detection: the judge's rule and the scores on known answers, cleanlab's filters as cleanlab gives
them, and the paper's ImageNet experiment end to end on real images (the script the README names)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from localjudge.analysis.label_issues import cleanlab_flags, detection_scores, f1_intervals, judge_flags

ROOT = Path(__file__).resolve().parents[1]


def test_judge_flags_wh_and_cl():
    correct = np.array([1, 1, 0, 0], dtype=bool)
    scores = np.array([5, 1, 5, 1])  # CH, CL, WH, WL
    assert judge_flags(correct, scores, 3).tolist() == [False, True, True, False]
    assert judge_flags(correct, scores, 3, wh_only=True).tolist() == [False, False, True, False]


def test_detection_scores_treat_a_right_label_as_positive():
    label_ok = np.array([1, 1, 1, 0, 0], dtype=bool)
    flagged = np.array([0, 0, 1, 1, 0], dtype=bool)  # kept: 0, 1, 4 -> TP 2, FP 1, FN 1
    scores = detection_scores(label_ok, flagged)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(3 / 5) and scores["flagged"] == 2 and scores["n"] == 5
    keep_all = detection_scores(label_ok, np.zeros(5, dtype=bool))
    assert keep_all["recall"] == 1.0 and keep_all["precision"] == pytest.approx(3 / 5)


def test_f1_intervals_against_a_closed_form():
    """Keeping every label, F1 = 2p / (1 + p) with p the share of right labels: a monotone function of a proportion,
    so its percentile-bootstrap interval is that function of the proportion's interval, which for n = 400 and
    p = 0.8 is close to the normal closed form p +- 1.96 sqrt(p(1-p)/n). A method that flags what keep-all flags
    differs from it by exactly 0, on every resample."""
    label_ok = np.array([True] * 320 + [False] * 80)
    keep_all = np.zeros(400, dtype=bool)
    found = f1_intervals(label_ok, keep_all, keep_all)
    half = 1.96 * np.sqrt(0.8 * 0.2 / 400)
    expected = [2 * p / (1 + p) for p in (0.8 - half, 0.8 + half)]
    assert found["f1_ci_low"] == pytest.approx(expected[0], abs=0.004)
    assert found["f1_ci_high"] == pytest.approx(expected[1], abs=0.004)
    assert (found["f1_minus_keep_all"], found["f1_minus_keep_all_ci_low"], found["f1_minus_keep_all_ci_high"]) == (
        0.0, 0.0, 0.0)
    perfect = f1_intervals(label_ok, ~label_ok, keep_all)  # flags exactly the wrong labels: F1 1.0 on every resample
    assert perfect["f1_ci_low"] == perfect["f1_ci_high"] == 1.0
    assert perfect["f1_minus_keep_all_ci_low"] > 0


def test_cleanlab_flags_are_cleanlab_s_when_every_class_is_used():
    from cleanlab.filter import find_label_issues

    generator = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 25)
    probs = generator.dirichlet(np.ones(4), size=100)
    probs[np.arange(100), labels] += 1.5
    probs /= probs.sum(axis=1, keepdims=True)
    labels[:8] = (labels[:8] + 1) % 4  # eight wrong labels
    for filter_by in ("confident_learning", "prune_by_noise_rate", "low_self_confidence", "low_normalized_margin"):
        expected = find_label_issues(labels, probs, filter_by=filter_by)
        assert cleanlab_flags(labels, probs, filter_by).tolist() == expected.tolist()
    assert cleanlab_flags(labels, probs, "prune_by_noise_rate")[:8].mean() > 0.5


@pytest.mark.slow
def test_imagenet_label_noise_experiment(tmp_path):
    db = tmp_path / "noise.db"
    result = subprocess.run([sys.executable, ROOT / "scripts" / "label_issues_imagenet.py", "--images", "60",
                             "--db", db, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads(result.stdout)
    methods = {m["method"]: m for m in table["methods"]}
    assert table["samples"] == 60 and 0 < table["labels_wrong"] < 30
    assert table["judge"]["judge_model"] == "recognizer:efficientnet-lite2"
    assert table["cleanlab_probabilities"] == "efficientnet-lite2"  # out of sample, as cleanlab expects
    assert set(methods) == {"keep-all", "judge", "judge-wh", "cleanlab CL (confident_learning)",
                            "cleanlab PNR (prune_by_noise_rate)", "cleanlab LSC (low_self_confidence)",
                            "cleanlab LNM (low_normalized_margin)"}
    keep_all = methods["keep-all"]
    assert keep_all["recall"] == 1.0 and keep_all["precision"] == pytest.approx(1 - table["labels_wrong"] / 60)
    assert methods["judge-wh"]["flagged"] == 0  # the labels are the predictions: nothing is "wrong and high"
    # The recognizer's verdict carries information: it keeps right labels more often than wrong ones.
    assert methods["judge"]["precision"] > keep_all["precision"]

    # Judgments of a second CAM method are another setting: the table never mixes them.
    from .conftest import invoke

    truth = tmp_path / "truth.csv"
    import csv as csv_module
    with sqlite3.connect(db) as conn:
        paths = [p for (p,) in conn.execute("select path from images")]
    with open(truth, "w", newline="") as handle:
        writer = csv_module.writer(handle)
        writer.writerow(["path", "label_ok"])
        writer.writerows([p, 1] for p in paths)
    invoke("explain", "--db", db, "--cam", "gradcam++")
    invoke("judge", "--db", db, "--cam", "gradcam++")
    mixed = invoke("eval", "label-issues", "--db", db, "--truth", truth, expect_ok=False)
    assert mixed.exit_code != 0 and "several settings" in mixed.output
    one = json.loads(invoke("eval", "label-issues", "--db", db, "--truth", truth, "--cam", "gradcam++",
                            "--json").stdout)
    assert one["samples"] == 60 and one["judge"]["cam"] == "gradcam++"
    # two judgments of the same maps that differ only in the judge's decoding (two recognizer designs): the
    # setting's key tells them apart, as the refusal lists it
    invoke("judge", "--db", db, "--cam", "gradcam++", "--recognizer-design", "black")
    designs = invoke("eval", "label-issues", "--db", db, "--truth", truth, "--cam", "gradcam++", expect_ok=False)
    keys = [part.split(":")[0].strip() for part in designs.output.split("--setting KEY:")[1].split(";")]
    assert designs.exit_code != 0 and len(keys) == 2
    chosen = [json.loads(invoke("eval", "label-issues", "--db", db, "--truth", truth, "--cam", "gradcam++",
                                "--setting", key, "--json").stdout)["samples"] for key in keys]
    assert chosen == [60, 60]
    # Lite0's own probabilities cannot contradict labels that are their argmax: every cleanlab filter keeps all.
    own = json.loads(invoke("eval", "label-issues", "--db", db, "--truth", truth, "--cam", "gradcam", "--json").stdout)
    assert all(m["flagged"] == 0 for m in own["methods"] if m["method"].startswith("cleanlab"))
    missing = invoke("eval", "label-issues", "--db", db, "--truth", truth, "--cam", "gradcam", "--probs-model",
                     "resnet18", expect_ok=False)
    assert missing.exit_code != 0 and "no prediction of resnet18" in missing.output
