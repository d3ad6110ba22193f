"""A store made before this version is upgraded in place: degenerate maps it holds are found (m007), calibrations
are keyed with the target tensor (m009), and what was judged of degenerate maps stays out of the matrices."""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from localjudge.queries import GROUP_COLUMNS, calibrated_thresholds, setting_key
from localjudge.store import Store, pack_array
from localjudge.store.schema import ALL_ZERO_MAP

from .conftest import invoke, invoke_json, seg_photos_manifest


def forget(db, migration: str, sql: str = "") -> None:
    """Make the store look as a store made before `migration` (its change undone, its record gone)."""
    with sqlite3.connect(db) as conn:
        if sql:
            conn.execute(sql)
        conn.execute("delete from _migrations where name = ?", [migration])


def test_an_old_stores_degenerate_maps_are_found_and_its_calibrations_keyed_again(data_dir, tmp_path):
    manifest = seg_photos_manifest(data_dir, tmp_path / "four.csv", 4)
    db = tmp_path / "old.db"
    invoke("run", manifest, "--db", db)
    store = Store(db)
    (one, *_) = store.query("select id, height, width from saliency_maps order by id")
    # as an old store held it: a flat map, normalised to all zeros, and judged
    store.db["saliency_maps"].update(one["id"], {"map": pack_array(np.zeros((one["height"], one["width"])))})
    (sample,) = [s for s in store.query(
        "select p.model, p.model_hash, s.method as cam, s.target_layer, j.judge_model, j.judge_model_hash, "
        "j.image_mode, j.alpha, j.beta, j.judge_image_size, j.prompt_hash, j.decoding from judgments j "
        "join predictions p on p.id = j.prediction_id join saliency_maps s on s.id = j.saliency_id limit 1")]
    old_setting = {c: sample[c] for c in GROUP_COLUMNS if c not in ("target_layer", "render_version")}
    store.add_calibration({"id": "c1", "setting_key": "an-old-key", "setting": json.dumps(old_setting),
                           "raters": "[]", "human_threshold": 3, "threshold": 2, "n": 10, "created_at": "then"})
    store.close()
    forget(db, "m007_map_failures", "alter table saliency_maps drop column failure")
    forget(db, "m009_calibrations_keyed_with_the_target")

    store = Store(db)  # migrates
    failures = {r["id"]: r["failure"] for r in store.query("select id, failure from saliency_maps")}
    assert failures[one["id"]] == ALL_ZERO_MAP and sum(f is not None for f in failures.values()) == 1
    assert calibrated_thresholds(store) == {setting_key(dict(sample)): 2}
    store.close()
    matrix = invoke_json("matrix", "--db", db)["matrices"][0]
    assert matrix["judgments"] == 3  # the degenerate map's judgment is no finding
    assert invoke_json("matrix", "--db", db, "--threshold", "calibrated")["matrices"][0]["threshold"] == 2


def test_a_merge_from_an_old_store_finds_its_degenerate_maps(data_dir, tmp_path):
    """Merged stores are not migrated: the all-zero maps copied from a store made before degenerate maps were caught
    are flagged as m007 would have, with the engine's own reason, and their judgments stay out of the matrix."""
    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    old = tmp_path / "old.db"
    invoke("run", manifest, "--db", old)
    store = Store(old)
    (one, *_) = store.query("select id, height, width from saliency_maps order by id")
    store.db["saliency_maps"].update(one["id"], {"map": pack_array(np.zeros((one["height"], one["width"])))})
    store.close()
    forget(old, "m007_map_failures", "alter table saliency_maps drop column failure")
    merged = tmp_path / "merged.db"
    invoke("db", "merge", old, "--into", merged)
    with sqlite3.connect(merged) as conn:
        failures = dict(conn.execute("select id, failure from saliency_maps").fetchall())
    assert failures[one["id"]] == ALL_ZERO_MAP and sum(f is not None for f in failures.values()) == 1
    assert invoke_json("matrix", "--db", merged)["matrices"][0]["judgments"] == 2


def test_region_scores_stored_before_mass_shares_are_scored_again(data_dir, tmp_path):
    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db = tmp_path / "regions.db"
    invoke("run", manifest, "--db", db)
    invoke("eval", "regions", "--db", db, "--masks", data_dir / "seg-photos" / "masks")
    with sqlite3.connect(db) as conn:
        shares = dict(conn.execute("select id, mass_share from region_scores").fetchall())
        conn.execute("update region_scores set mass_share = null")  # as m011 left an older store's scores
    assert len(shares) == 3 and all(0 <= v <= 1 for v in shares.values())
    invoke("eval", "regions", "--db", db, "--masks", data_dir / "seg-photos" / "masks")
    with sqlite3.connect(db) as conn:
        again = dict(conn.execute("select id, mass_share from region_scores").fetchall())
    assert again == shares  # the same rows, filled in


def test_ground_truth_of_an_old_store_becomes_each_images_object_region(data_dir, tmp_path):
    """m015: an old store's one region per image becomes the region labelled '' (the image's object), scored as
    before; merged from an old store, the same."""
    manifest = seg_photos_manifest(data_dir, tmp_path / "two.csv", 2)
    old = tmp_path / "old.db"
    invoke("run", manifest, "--db", old, "--masks", data_dir / "seg-photos" / "masks")
    store = Store(old)
    store.db["ground_truth"].transform(drop={"label"}, pk="image_sha256")
    for column in ("finding", "target_probability", "current_target"):
        store.db.execute(f"alter table saliency_maps drop column {column}")
    store.db.execute("alter table predictions drop column task")
    store.close()
    forget(old, "m015_findings_and_regions_per_finding")
    merged = tmp_path / "merged.db"
    invoke("db", "merge", old, "--into", merged)
    store = Store(old)  # migrates
    assert [r["label"] for r in store.query("select label from ground_truth")] == ["", ""]
    store.close()
    for db in (old, merged):
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*), min(label) from ground_truth").fetchone() == (2, "")
        again = invoke_json("eval", "regions", "--db", db, "--masks", data_dir / "seg-photos" / "masks")
        assert again["stages"]["regions"]["computed"] == 0 and again["means"]["maps"] == 2
