"""Sanity checks (Adebayo et al.): maps must change when the model does. EigenCAM reads only the activations, so
randomising every layer after the target leaves its maps as they were: the check must flag it. Grad-CAM on
EfficientNet-Lite0 depends on the classifier's weights: it must pass. Known answers for the similarity measures."""

from __future__ import annotations

import numpy as np
import pytest

from localjudge.analysis.sanity import rank_similarity, ssim

from .conftest import invoke, invoke_json, write_manifest


def test_ssim_and_rank_similarity_by_definition():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    assert rank_similarity(a, a) == pytest.approx(1.0) and rank_similarity(a, 1 - a) == pytest.approx(1.0)
    noise = rng.random((32, 32))
    assert ssim(a, noise) < 0.2 and rank_similarity(a, noise) < 0.1
    assert rank_similarity(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert rank_similarity(np.zeros((4, 4)), a[:4, :4]) == 0.0


def test_eval_sanity_flags_an_insensitive_method_and_passes_gradcam(data_dir, tmp_path, browser):
    import csv

    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[3::40][:12]
    manifest = write_manifest(tmp_path / "twelve.csv", [
        {"path": str(data_dir / "imagenet-sample" / r["file"]), "label": r["imagenet_index"]} for r in rows])
    db = tmp_path / "sanity.db"
    invoke("predict", manifest, "--db", db)
    found = invoke_json("eval", "sanity", "--db", db, "--cam", "gradcam,eigencam", "--images", "12")
    assert found["target"] == "relu6(_bn1)" and found["layers_after_target"] == ["_fc"] and found["images"] == 12
    gradcam, eigencam = found["methods"]["gradcam"], found["methods"]["eigencam"]
    assert not gradcam["flagged"] and gradcam["cascade"][-1]["median_rank_correlation"] < 0.5
    assert eigencam["flagged"] and eigencam["cascade"][-1]["median_rank_correlation"] > 0.99
    assert eigencam["random_logit"]["median_ssim"] > 0.99  # class-agnostic: another class, the same map
    last = gradcam["cascade"][-1]
    assert last["rank_ci_low"] <= last["median_rank_correlation"] <= last["rank_ci_high"]
    # the floor: two different images' Grad-CAM maps, each against the next one's
    from localjudge.analysis.sanity import unrelated_floor

    noise = np.random.default_rng(0).random((3, 16, 16))
    a, b = noise[0], noise[1]
    # each map against the next one's, cyclically: (a, a) 1, (a, b) and (b, a) near 0 -> the median is near 0 (a
    # floor that compared each map with itself would give 1)
    floor = unrelated_floor([a, a, b])
    assert floor["median_rank_correlation"] == pytest.approx(rank_similarity(a, b)) and floor["images"] == 3
    assert floor["median_rank_correlation"] < 0.2
    assert 0 <= gradcam["unrelated_images"]["median_rank_correlation"] < 0.99 and gradcam["unrelated_images"][
        "images"] == 12
    text = invoke("eval", "sanity", "--db", db, "--cam", "gradcam,eigencam", "--images", "12").output
    assert "FLAGGED" in text.splitlines()[-1] and "ok" in text.splitlines()[-2]
    invoke("explain", "--db", db)
    report = invoke_json("report", "--db", db, "--out", tmp_path / "report")
    assert report["sanity_flagged"] == ["eigencam"]
    page = browser.new_page()
    try:
        page.goto((tmp_path / "report" / "index.html").as_uri())
        rows = page.locator("#sanity tr").all_inner_texts()
        assert any("eigencam" in r and "flagged" in r for r in rows) and any("gradcam" in r and "ok" in r for r in rows)
        assert page.locator("#sanity tr.flagged").count() == 1
    finally:
        page.close()
    bad = invoke("eval", "sanity", "--db", db, "--cam", "nosuch", expect_ok=False)
    assert bad.exit_code == 2 and "unknown CAM method nosuch" in bad.output


def test_the_flag_rule_is_the_documented_threshold():
    from localjudge.analysis.sanity import INSENSITIVE, insensitive

    assert insensitive({"median_rank_correlation": INSENSITIVE}) and not insensitive(
        {"median_rank_correlation": INSENSITIVE - 1e-9}) and not insensitive({"median_rank_correlation": None})
    assert INSENSITIVE == 0.5
