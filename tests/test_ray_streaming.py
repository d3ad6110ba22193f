"""A Ray run's judge-only work is read from the store a batch at a time (issue 20): the driver never holds every map
of a large judge-only run. Needs no Ray: the payloads are made on the driver, then put into Ray's object store."""

from __future__ import annotations

import pickle

from localjudge.pipeline.distributed import judge_payloads
from localjudge.store import Store

from .conftest import invoke_json, seg_photos_manifest


def test_judge_only_payloads_read_their_maps_a_batch_at_a_time(data_dir, tmp_path):
    manifest = seg_photos_manifest(data_dir, tmp_path / "five.csv", 5)
    db = tmp_path / "maps.db"
    invoke_json("predict", manifest, "--db", db)
    invoke_json("explain", "--db", db)
    store = Store(db)
    ids = [r["id"] for r in store.query("select id from saliency_maps order by id")]
    images = {r["sha256"]: r for r in store.images()}
    files = {sha: row["path"] for sha, row in images.items()}
    payloads = judge_payloads(store, ids, 2, images, files)
    first = pickle.loads(next(payloads))
    assert first["to_judge"] == ids[:2] and [m["id"] for m in first["saliency_maps"]] == ids[:2]
    assert len(first["predictions"]) == 2 and {i["sha256"] for i in first["images"]} == {
        m["image_sha256"] for m in first["saliency_maps"]}
    # what the store says of a later batch's map after the first payload was made is what its payload carries:
    # read when that batch's turn comes, not with the first
    store.db.execute("update saliency_maps set target_label = 'read later' where id = ?", [ids[3]])
    store.db.conn.commit()
    second, third = (pickle.loads(p) for p in payloads)
    assert [m["id"] for m in second["saliency_maps"]] == ids[2:4] and third["to_judge"] == ids[4:]
    assert second["saliency_maps"][1]["target_label"] == "read later"
    store.close()
