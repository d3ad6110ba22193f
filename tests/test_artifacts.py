"""Artifact regions (eval regions --artifact-regions): known answers of the regions and mass shares, refusals of bad
specs, and the command on real photos (two complementary boxes share every map's whole mass)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from localjudge.analysis.artifacts import ArtifactSpecError, box_mask, mass_share, parse_specs, view_region

from .conftest import invoke, invoke_json, seg_photos_manifest


def test_regions_and_shares_by_hand(tmp_path):
    border = view_region("border", 2, (6, 6))
    assert border.sum() == 36 - 4 and not border[2:4, 2:4].any()
    corners = view_region("corner", 2, (6, 8))
    assert corners.sum() == 16 and corners[0, 0] and corners[5, 7] and not corners[0, 3]
    box = box_mask((0.0, 0.0, 0.5, 1.0), 4, 2)
    assert box.tolist() == [[True, True, False, False]] * 2
    saliency = np.array([[1.0, 0.0], [0.0, 3.0]])
    assert mass_share(saliency, np.array([[True, False], [False, False]])) == 0.25
    assert mass_share(np.zeros((2, 2)), np.ones((2, 2), dtype=bool)) is None
    regions = tmp_path / "boxes.json"
    regions.write_text(json.dumps({"regions": {"text box": [0, 0, 0.3, 0.1], "ruler": [0.9, 0, 1, 1]}}))
    parsed = parse_specs(["border:16", str(regions)])
    assert [r.name for r in parsed] == ["border:16", "text box", "ruler"]
    assert parsed[1].box == (0.0, 0.0, 0.3, 0.1) and parsed[0].view_pixels == ("border", 16)


@pytest.mark.parametrize("spec, reason", [("border:x", "neither border:PX"), ("edge:4", "neither border:PX")])
def test_bad_specs_are_refused(spec, reason):
    with pytest.raises(ArtifactSpecError, match=reason):
        parse_specs([spec])


def test_bad_region_files_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"regions": {"upside down": [0.5, 0.5, 0.2, 0.9]}}))
    with pytest.raises(ArtifactSpecError, match="bad.json: not a regions file"):
        parse_specs([str(bad)])
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"regions": {"border:8": [0, 0, 1, 1]}}))
    with pytest.raises(ArtifactSpecError, match="named twice"):
        parse_specs(["border:8", str(twice)])


def test_artifact_mass_on_real_photos(tmp_path, data_dir):
    manifest = seg_photos_manifest(data_dir, tmp_path / "four.csv", 4)
    db = tmp_path / "artifacts.db"
    invoke("run", manifest, "--db", db)
    halves = tmp_path / "halves.json"
    halves.write_text(json.dumps({"regions": {"left": [0, 0, 0.5, 1], "right": [0.5, 0, 1, 1],
                                              "whole": [0, 0, 1, 1], "same box": [0, 0, 1, 1],
                                              "cut away": [0, 0, 0.05, 1]}}))
    found = invoke_json("eval", "regions", "--db", db, "--artifact-regions", halves, "--artifact-regions",
                        "border:16")
    by_region = {r["region"]: r for r in found["artifacts"]}
    assert set(by_region) == {"left", "right", "whole", "same box", "cut away", "border:16"} and all(
        r["maps"] == 4 for r in by_region.values())
    assert by_region["same box"]["mass_share"] == by_region["whole"]["mass_share"]  # two names, two regions
    # the first 5 % of each landscape photo's width lies outside the model's centre crop: nothing of it is seen
    assert by_region["cut away"]["area_fraction"]["mean"] == 0
    assert by_region["whole"]["mass_share"]["mean"] == pytest.approx(1.0)
    assert by_region["whole"]["area_fraction"]["mean"] == pytest.approx(1.0)
    side = 224
    assert by_region["border:16"]["area_fraction"]["mean"] == pytest.approx(1 - (side - 32) ** 2 / side ** 2)
    with sqlite3.connect(db) as conn:
        shares = {}
        for sid, region, share in conn.execute("select saliency_id, region, mass_share from artifact_scores"):
            shares.setdefault(sid, {})[region] = share
    assert len(shares) == 4
    for per_map in shares.values():  # the two halves split every map's mass between them
        assert per_map["left"] + per_map["right"] == pytest.approx(1.0)
    top = by_region["border:16"]["top_images"]
    assert [t["mass_share"] for t in top] == sorted((t["mass_share"] for t in top), reverse=True)
    again = invoke_json("eval", "regions", "--db", db, "--artifact-regions", halves)
    assert again["stages"]["artifacts"]["computed"] == 0  # stored, keyed by the region's definition
    text = invoke("eval", "regions", "--db", db, "--artifact-regions", "corner:20").output
    assert "artifact region corner:20 (4 maps)" in text and "a flat map's share" in text
    refused = invoke("eval", "regions", "--db", db, "--artifact-regions", "edge:3", expect_ok=False)
    assert refused.exit_code == 2 and "edge:3" in refused.output
