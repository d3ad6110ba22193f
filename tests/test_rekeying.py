"""A store made before judgment keys held exactly what shapes the judge's input (m025) is keyed anew in place: its
heatmap judgments by a VLM lose alpha and beta, its recognizer judgments their prompt, and the store is not judged
again; people's ratings of heatmap views and the calibrations of those settings follow their judgments."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
from pathlib import Path

from localjudge.queries import GROUP_COLUMNS, calibrated_thresholds, samples, setting_key
from localjudge.store import Store, content_key

from .conftest import invoke, invoke_json, seg_photos_manifest, write_manifest

STORES = Path(__file__).parent / "stores"


def key_before_m025(row: dict) -> str:
    """A judgment's key as localjudge made it before m025 (Audit.judgment_keys at 04df9c1, frozen): alpha, beta and
    the prompt's hash always in it. Checked against that code's own keys: the store in stores/ holds them."""
    return content_key("judgment", row["saliency_id"], row["alpha"], row["beta"], row["image_mode"],
                       row["judge_model_hash"], row["prompt_hash"], json.loads(row["decoding"]),
                       row["judge_image_size"], row["image_kind"])


def view_before_m025(saliency_id: str, alpha: float, beta: float, image_mode: str) -> str:
    return content_key("view", saliency_id, float(alpha), float(beta), image_mode)  # queries.view_id at 04df9c1


def forget_m025(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("delete from _migrations where name = 'm025_keys_hold_what_shapes_the_input'")


def rows(db: Path, sql: str, params=()) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]


def test_a_store_the_earlier_release_wrote_is_not_judged_again(data_dir, tmp_path):
    """stores/before_m025.db.gz was written by localjudge at 04df9c1 (the commit before the keys changed): `run` of
    the first two seg-photos with --backend torch and the default judge (the recognizer, masked)."""
    db = tmp_path / "old.db"
    with gzip.open(STORES / "before_m025.db.gz") as packed, open(db, "wb") as out:
        shutil.copyfileobj(packed, out)
    before = rows(db, "select * from judgments order by id")
    assert len(before) == 2 and all(r["prompt_hash"] for r in before)
    assert all(key_before_m025(r) == r["id"] for r in before)  # the frozen old key is that release's own
    manifest = seg_photos_manifest(data_dir, tmp_path / "two.csv", 2)
    stages = invoke_json("run", manifest, "--db", db, "--backend", "torch")
    assert stages["predict"]["computed"] == 0 and stages["judge"]["computed"] == 0
    after = rows(db, "select * from judgments order by saliency_id")
    assert len(after) == 2 and all(r["prompt_hash"] is None for r in after)
    by_map = {r["saliency_id"]: r for r in before}
    for row in after:  # the same answers, under the key a run makes now
        old = by_map[row["saliency_id"]]
        assert (row["score"], row["raw_text"], row["alpha"], row["beta"]) == (
            old["score"], old["raw_text"], old["alpha"], old["beta"])


def test_heatmap_judgments_their_ratings_and_calibrations_are_keyed_anew(data_dir, tmp_path, tiny_vlms_bpe512):
    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db = tmp_path / "heatmap.db"
    common = ["--db", db, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--image-mode", "heatmap", "--max-new-tokens",
              "48"]
    assert invoke_json("run", manifest, *common)["judge"]["computed"] == 3
    made = rows(db, "select * from judgments order by saliency_id")
    assert all(r["alpha"] is None and r["beta"] is None for r in made)

    # The store as the earlier release left it: alpha and beta in every heatmap judgment and its key (each an
    # answer with a score: a tiny random VLM's 48 tokens seldom end one; the second by vLLM, which shares the model's
    # hash with transformers); two maps judged at a second alpha too (twins: one older than its map's first
    # judgment, one newer) and one in masked mode; a person's ratings of a view at both alphas, and a calibration of
    # each heatmap setting, keyed with them.
    with sqlite3.connect(db) as conn:
        for score, row in enumerate(made, start=1):
            old = {**row, "alpha": 15.0, "beta": 0.6}
            conn.execute("update judgments set id = ?, alpha = 15.0, beta = 0.6, status = 'ok', score = ?, "
                         "judge_backend = ? where id = ?",
                         [key_before_m025(old), score, "vllm" if score == 2 else "transformers", row["id"]])
            row["score"] = score
        twin = {**made[0], "alpha": 25.0, "beta": 0.6, "created_at": "2020-01-01T00:00:00",
                "status": "ok", "score": 0}
        newer_twin = {**made[2], "alpha": 25.0, "beta": 0.6, "created_at": "2999-01-01T00:00:00",
                      "status": "ok", "score": 4}
        masked = {**made[2], "image_mode": "masked", "alpha": 15.0, "beta": 0.6, "status": "ok", "score": 5}
        for extra in (twin, newer_twin, masked):
            extra["id"] = key_before_m025(extra)  # a masked judgment's key is the same before and after
            conn.execute(f"insert into judgments ({', '.join(extra)}) values ({', '.join('?' * len(extra))})",
                         list(extra.values()))
        rated = made[1]
        for alpha, score, when in ((15.0, 4, "t"), (25.0, 1, "s")):  # the rating at alpha 25 is the older
            view = view_before_m025(rated["saliency_id"], alpha, 0.6, "heatmap")
            conn.execute("insert into ratings (id, view_id, saliency_id, image_sha256, alpha, beta, image_mode, "
                         "rater, score, created_at, updated_at) values (?, ?, ?, ?, ?, 0.6, 'heatmap', 'ann', ?, ?, ?)",
                         [content_key("rating", view, "ann"), view, rated["saliency_id"], rated["image_sha256"],
                          alpha, score, when, when])
    settings = {r["alpha"]: r for r in rows(
        db, "select p.model, p.model_hash, s.method as cam, s.target_layer, j.judge_model, j.judge_model_hash, "
            "j.image_mode, j.alpha, j.beta, j.judge_image_size, j.prompt_hash, j.decoding, j.render_version "
            "from judgments j join predictions p on p.id = j.prediction_id join saliency_maps s on "
            "s.id = j.saliency_id where j.image_mode = 'heatmap'")}
    store = Store(db)
    for alpha, threshold in ((15.0, 2), (25.0, 5)):
        setting = settings[alpha]
        store.add_calibration({"id": f"c{threshold}", "setting_key": setting_key(setting),
                               "setting": json.dumps({c: setting[c] for c in GROUP_COLUMNS if c != "render_version"}),
                               "raters": "[\"ann\"]", "human_threshold": 3, "threshold": threshold, "n": 10,
                               "created_at": "t"})
    store.close()
    forget_m025(db)

    store = Store(db)  # migrates
    now = {r["id"]: r for r in store.query("select * from judgments")}
    assert len(now) == 6  # nothing stored is lost
    assert {r["id"] for r in made} <= set(now)  # each map keyed as a run keys it now (it made those ids itself)
    assert [(now[r["id"]]["alpha"], now[r["id"]]["score"]) for r in made] == [(None, 1), (None, 2), (None, 4)]
    assert now[twin["id"]]["alpha"] == 25.0  # the older twin keeps its own key: one map, one key
    left = key_before_m025({**made[2], "alpha": 15.0, "beta": 0.6})  # the newer twin took the key of map 3
    assert now[left]["alpha"] == 15.0 and now[left]["score"] == 3
    assert now[masked["id"]]["alpha"] == 15.0 and now[masked["id"]]["prompt_hash"] == masked["prompt_hash"]
    moved = {**settings[15.0], "alpha": None, "beta": None}
    # the calibration of the setting that moved the most judgments (2 at alpha 15, one by vLLM, against 1 at alpha
    # 25) follows them; the other stays with its setting
    assert calibrated_thresholds(store) == {setting_key(moved): 2, setting_key(settings[25.0]): 5}
    ratings = sorted(store.query("select alpha, score from ratings"), key=lambda r: r["score"])
    assert [(r["alpha"], r["score"]) for r in ratings] == [(25.0, 1), (None, 4)]  # the older one kept as it was
    rated_samples = [s for s in samples(store, 3) if s["ratings"]]
    assert [(s["saliency_id"], s["alpha"], s["ratings"]) for s in rated_samples] == [
        (rated["saliency_id"], None, [{"rater": "ann", "score": 4}])]
    store.close()
    assert invoke_json("run", manifest, *common)["judge"]["computed"] == 0  # not judged again
    matrix = invoke_json("matrix", "--db", db, "--threshold", "calibrated")["matrices"]
    # the three's setting and the twin's, each with its calibration; the masked one at the default threshold
    # the three maps' setting, calibrated; what stayed at alpha 25 (calibrated) and at alpha 15; the masked one
    found = [(m["image_mode"], m["alpha"], m["judgments"], m["threshold"]) for m in matrix]
    assert len(found) == 4 and set(found) == {
        ("heatmap", 15.0, 1, 3), ("heatmap", 25.0, 1, 5), ("heatmap", None, 3, 2), ("masked", 15.0, 1, 3)}


def test_a_judgment_keyed_before_image_kinds_were_stays_as_it_is(tmp_path, data_dir):
    """A row whose old key cannot be made again from what it holds is left alone, not keyed by a guess."""
    manifest = write_manifest(tmp_path / "one.csv", [{"path": str(data_dir / "seg-photos" / "images" /
                                                                  "voc_2007_000042.jpg"), "label": ""}])
    db = tmp_path / "kinds.db"
    invoke("run", manifest, "--db", db)
    (row,) = rows(db, "select * from judgments")
    with sqlite3.connect(db) as conn:
        conn.execute("update judgments set id = 'keyed-some-other-way', prompt_hash = ? where id = ?",
                     ["0" * 64, row["id"]])
    forget_m025(db)
    Store(db).close()
    (after,) = rows(db, "select id, prompt_hash from judgments")
    assert after["id"] == "keyed-some-other-way" and after["prompt_hash"] is not None
