"""Shortcut discovery with a known answer: a real dog / not-dog model that learnt a planted tag (own_models.
make_shortcut_model: Lite0's real features, a head fitted here on photos where the tag marks the positives). The
canary flags the tag and finds the class it pulls toward; on photos carrying the tag at one place, the artifact
region's mass ranks them first and map clustering puts the calls resting on it in a cluster of their own, flagged.
The unmodified EfficientNet-Lite0 is flagged by none of the three. Plus known answers of the canary's pure parts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localjudge.analysis.canary import artifact_region, canary_summary, paste, place, quadrant_changes

from .conftest import invoke, invoke_json, write_manifest
from .test_report import open_report
from .own_models import TAG_BOX, imagenet_rows, is_dog, make_shortcut_model, tag_file



def test_artifacts_are_drawn_where_their_region_says():
    rng = np.random.default_rng(0)
    view = Image.new("RGB", (100, 100), (10, 20, 30))
    for kind in ("tag", "text", "border"):
        box = place(kind, 100, 0.2, rng)
        region = artifact_region(kind, box, 100, 0.2)
        changed = np.any(np.asarray(paste(view, kind, box, 0.2)) != np.asarray(view), axis=2)
        assert changed.any() and not (changed & ~region).any(), kind  # nothing drawn outside its region
        if kind == "tag":
            assert region.sum() == 20 * 20 and changed.sum() == 20 * 20
        if kind == "border":
            assert region.sum() == 100 * 100 - 90 * 90 and changed.sum() == region.sum()


def test_canary_figures_by_hand():
    """Four images, two classes: the artifact adds 0.3 to class 1 everywhere (flipping the two class-0 images whose
    margin is under 0.3) and moves map mass from 0.1 to 0.4."""
    original = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    tagged = original + np.array([-0.3, 0.3])
    found = canary_summary(original, tagged, np.full(4, 0.4), np.full(4, 0.1), np.full(4, 0.05), ["a", "b"])
    assert found["pull"]["class"] == "b" and found["pull"]["mean"] == pytest.approx(0.3)
    assert found["flip_rate"]["mean"] == 0.5  # the 0.6 and 0.7 images fall below 0.5
    # the predicted class loses 0.3 on the class-0 images and gains 0.3 on the class-1 one
    assert found["probability_change"]["mean"] == pytest.approx((-0.3 * 3 + 0.3) / 4)
    assert found["mass_moved"]["mean"] == pytest.approx(0.3) and found["flagged"]
    still = canary_summary(original, original, np.full(4, 0.1), np.full(4, 0.1), np.full(4, 0.05), ["a", "b"])
    assert still["pull"]["mean"] == 0 and still["flip_rate"]["mean"] == 0 and not still["flagged"]


def test_quadrant_changes_by_hand():
    """Six images: one unlabelled (left out), four judged both times: CH stays, CL -> CH (the score rises), WL -> CH
    (the prediction and the score change), WH -> WL; and one whose tagged answer failed (left out)."""
    before = np.array(["CH", "CL", "WL", "WH", None, "CH"], dtype=object)
    after = np.array(["CH", "CH", "CH", "WL", "CH", None], dtype=object)
    found = quadrant_changes(before, after)
    assert found["images"] == 4 and found["changed"]["mean"] == 0.75
    assert found["score_level_changed"]["mean"] == 0.75 and found["correctness_changed"]["mean"] == 0.25
    assert found["transitions"] == {"CL->CH": 1, "WH->WL": 1, "WL->CH": 1}
    assert found["before"] == {"CH": 1, "CL": 1, "WH": 1, "WL": 1} and found["after"] == {"CH": 3, "CL": 0, "WH": 0,
                                                                                           "WL": 1}


@pytest.mark.slow
def test_a_planted_shortcut_is_found_and_the_plain_model_is_not_flagged(tmp_path, data_dir, browser):
    rows = imagenet_rows(data_dir)
    weights, labels = make_shortcut_model(data_dir, tmp_path / "model", rows[0::2])
    card = tmp_path / "shortcut.json"
    invoke("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--out", card)
    model = ("--model", card, "--weights", weights)
    # held-out photos: 80 that show no dog, one in three carrying the tag at one place (written as a new file), and
    # every held-out dog without it (the dog calls resting on the tag are then a minority of the class)
    others = [r for r in rows[1::2] if not is_dog(r)][:80]
    entries = []
    for n, row in enumerate(others):
        path = data_dir / "imagenet-sample" / row["file"]
        if n % 3 == 0:
            path = tag_file(path, tmp_path / "tagged" / row["file"], TAG_BOX)
        entries.append({"path": str(path), "label": "not dog"})
    entries += [{"path": str(data_dir / "imagenet-sample" / r["file"]), "label": "dog"}
                for r in rows[1::2] if is_dog(r)]
    manifest = write_manifest(tmp_path / "held-out.csv", entries)
    tagged = {e["path"] for e in entries if "/tagged/" in e["path"]}
    db = tmp_path / "shortcut.db"
    invoke("predict", manifest, "--db", db, *model)
    invoke("explain", "--db", db, *model)

    # every held-out photo (about 90): at 50 the mass moved was 0.042 [-0.001, 0.083], its interval's lower end on 0
    # and so at the mercy of the bootstrap's draw; at 90, 0.062 [0.032, 0.092]
    canary = invoke_json("eval", "canary", "--db", db, *model, "--size", "0.3", "--images", "90")["summary"]
    assert canary["flagged"] and canary["pull"]["class"] == "dog" and canary["pull"]["ci_low"] >= 0.05, canary
    # the maps look at the tag: mass moves onto it (its interval above 0), well above a flat map's share
    assert canary["mass_moved"]["ci_low"] > 0 and canary["mass_on_artifact"]["mean"] > 1.5 * canary["area"]["mean"]

    regions = tmp_path / "tag.json"
    regions.write_text(json.dumps({"regions": {"tag": list(TAG_BOX)}}))
    (found,) = invoke_json("eval", "regions", "--db", db, *model, "--artifact-regions", regions)["artifacts"]
    # of the model's dog calls, those resting on the tag put their mass on its place: they rank first
    assert found["by_class"][0]["class"] == "dog", found["by_class"]
    with sqlite3.connect(db) as conn:
        calls = conn.execute("select i.path, a.mass_share from artifact_scores a join images i on i.sha256 = "
                             "a.image_sha256 join saliency_maps s on s.id = a.saliency_id where s.target_label = "
                             "'dog'").fetchall()
    with_tag = [share for path, share in calls if path in tagged]
    without = [share for path, share in calls if path not in tagged]
    assert len(with_tag) >= 3 and len(without) >= 5  # the premise: tagged photos called dogs, and real dogs
    ranked_above = np.mean([a > b for a in with_tag for b in without])  # the ranking's AUC within the class
    assert ranked_above >= 0.9, (ranked_above, sorted(calls, key=lambda c: -c[1]))
    dog_top = [i["path"] for i in found["top_images"] if i["class"] == "dog"][:3]
    assert len(dog_top) == 3 and set(dog_top) <= tagged, found["top_images"]

    # clustering: the dog calls resting on the tag (a fifth of their map's mass or more on it, about twice a flat
    # map's share there) are a cluster of their own, flagged; the class's main cluster is the real dogs
    resting = {path for path, share in calls if path in tagged and share >= 0.2}
    assert len(resting) >= 5, sorted(calls, key=lambda c: -c[1])
    (dogs,) = [c for c in invoke_json("eval", "clusters", "--db", db)["classes"] if c["class"] == "dog"]
    paths = member_paths(db)
    found_tag = max(dogs["clusters"], key=lambda c: len({paths[m] for m in c["members"]} & tagged))
    members = {paths[m] for m in found_tag["members"]}
    assert found_tag["shortcut_candidate"] and found_tag["cluster"] != 0, dogs["clusters"]
    assert resting <= members and len(members & tagged) >= 0.8 * len(members), (resting, members)
    main = {paths[m] for m in dogs["clusters"][0]["members"]}
    assert len(main & tagged) <= 0.1 * len(main)
    # the report's findings show that cluster with exemplars: the tagged photos, drawn as thumbnails in the folder
    folder = (tmp_path / "report").resolve()
    invoke_json("report", "--db", db, "--out", folder)
    page, seen = open_report(browser, folder)
    try:
        shown = page.eval_on_selector_all(".cluster", "nodes => nodes.map(n => ({text: n.innerText, images: "
                                          "Array.from(n.querySelectorAll('img')).map(i => [i.getAttribute('src'), "
                                          "i.complete && i.naturalWidth > 0, i.getAttribute('alt')])}))")
    finally:
        page.close()
    (block,) = [b for b in shown if f"cluster #{found_tag['cluster']}, {found_tag['size']} of" in b["text"]]
    assert len(block["images"]) == 9 and all(loaded and src.startswith("thumbs/") for src, loaded, _ in
                                             block["images"]), block
    photos = {alt.split(" ", 1)[1] for _, _, alt in block["images"]}  # three exemplars of a cluster mostly tagged
    assert len(photos) == 3 and len(photos & tagged) >= 2, block
    assert all(url.startswith("file://") and Path(url[7:]).resolve().is_relative_to(folder) for url in seen["requests"])

    plain = tmp_path / "plain.db"
    invoke("predict", manifest, "--db", plain)
    lite0 = invoke_json("eval", "canary", "--db", plain, "--size", "0.3", "--images", "50")["summary"]
    assert not lite0["flagged"] and lite0["pull"]["mean"] < 0.05
    # nor do its maps: no cluster of tagged photos, and no class whose tagged photos' maps rest on the tag
    invoke("explain", "--db", plain)
    paths = member_paths(plain)
    groups = Path(__file__).resolve().parents[1] / "scripts" / "imagenet_superclasses.json"
    clustered = invoke_json("eval", "clusters", "--db", plain, "--groups", groups)["classes"]
    assert len(clustered) >= 3, clustered  # per super-class: the tagged photos' classes are clustered
    # most of the 27 tagged photos are in a clustered super-class (the rest in ones of fewer than 6 maps)
    assert sum(len({paths[m] for c in e["clusters"] for m in c["members"]} & tagged) for e in clustered) >= 15
    for entry in clustered:
        for cluster in entry["clusters"]:
            members = {paths[m] for m in cluster["members"]}
            assert not (cluster["shortcut_candidate"] and len(members & tagged) > len(members) / 2), entry
    (plain_found,) = invoke_json("eval", "regions", "--db", plain, "--artifact-regions", regions)["artifacts"]
    with sqlite3.connect(plain) as conn:
        shares = dict(conn.execute("select i.path, a.mass_share from artifact_scores a join images i on i.sha256 = "
                                   "a.image_sha256").fetchall())
    assert np.mean([shares[p] >= 0.2 for p in tagged]) < 0.2, sorted(shares[p] for p in tagged)


def member_paths(db) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select s.id, i.path from saliency_maps s join images i on i.sha256 = "
                                 "s.image_sha256").fetchall())
