"""Shards and merging: `--shard 1/2` and `--shard 2/2` runs into separate stores, merged with `db merge`, hold
exactly the rows of one run over everything (keys and values; only provenance differs); merging again changes
nothing; a row that differs under the same key is reported and the target's kept."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from localjudge.store import unpack_array
from localjudge.store.merge import PROVENANCE
from localjudge.store.schema import TABLES

from .conftest import copy_db, invoke, invoke_json, write_manifest


def content(db: Path) -> dict[str, dict]:
    """Every row of every merged table but runs and run_images (which runs read what: each shard is its own run), by
    key, without provenance; probability vectors, maps and top-5
    decoded to numbers."""
    found = {}
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        for table, key in TABLES:
            if table in ("runs", "run_images"):
                continue
            rows = {}
            for row in conn.execute(f"select * from [{table}]"):
                values = {}
                for column in row.keys():
                    value = row[column]
                    if column in PROVENANCE:
                        continue
                    if column == "probs":
                        value = unpack_array(value, (-1,), np.float32)
                    elif column == "map":
                        value = unpack_array(value, (-1,))
                    elif column == "top5":
                        entries = json.loads(value)
                        value = ([e["index"] for e in entries], np.array([e["probability"] for e in entries]))
                        value = tuple(value)
                    values[column] = value
                rows[tuple(row[k] for k in key)] = values
            found[table] = rows
    return found


def assert_same(merged: dict, whole: dict) -> None:
    """The same keys and the same values; a model's float outputs to 1e-4 (their last bits depend on the batch
    they were computed in), everything else exactly."""
    assert merged.keys() == whole.keys()
    for table in whole:
        assert merged[table].keys() == whole[table].keys(), table
        for key, row in whole[table].items():
            for column, value in row.items():
                other = merged[table][key][column]
                if isinstance(value, float):
                    assert other == pytest.approx(value, rel=1e-4, abs=1e-5), (table, key, column)
                elif isinstance(value, np.ndarray):
                    assert np.allclose(other, value, rtol=1e-3, atol=1e-3), (table, key, column)
                elif isinstance(value, tuple) and column == "top5":
                    assert other[0] == value[0] and np.allclose(other[1], value[1], atol=1e-5), (table, key)
                else:
                    assert other == value, (table, key, column)


def test_shards_merged_equal_one_run_and_merging_again_changes_nothing(data_dir, bad_files, tmp_path):
    import csv

    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        photos = list(csv.DictReader(handle))[:16]
    rows = [{"path": str(data_dir / "seg-photos" / p["file"]), "label": p["imagenet_indices"]} for p in photos]
    rows += [{"path": str(p), "label": "339"} for p in bad_files.values()]
    manifest = write_manifest(tmp_path / "photos.csv", rows)
    whole, first, second, merged = (tmp_path / f"{n}.db" for n in ("whole", "first", "second", "merged"))
    invoke("run", manifest, "--db", whole)
    one = invoke_json("run", manifest, "--db", first, "--shard", "1/2")
    two = invoke_json("run", manifest, "--db", second, "--shard", "2/2")
    assert one["judge"]["rows"] + two["judge"]["rows"] == 16 and min(one["judge"]["rows"], two["judge"]["rows"]) > 0
    assert one["ingest"]["failed"] + two["ingest"]["failed"] == 3  # each read error in exactly one shard

    report = invoke_json("db", "merge", first, second, "--into", merged)
    assert report["conflicts"] == [] and report["added"] > 0
    assert_same(content(merged), content(whole))
    whole_content = content(whole)
    assert all(len(rows) for table, rows in whole_content.items()
               if table in ("images", "read_errors", "predictions", "saliency_maps", "judgments"))
    with sqlite3.connect(merged) as conn:  # each shard's run is kept, and every row names one of them
        runs = {r[0] for r in conn.execute("select id from runs")}
        assert len(runs) == 2
        assert {r[0] for r in conn.execute("select distinct run_id from judgments")} == runs
        # which run read which image: both shards' runs, together every image of the whole run
        assert {r[0] for r in conn.execute("select distinct run_id from run_images")} == runs
        merged_read = {r[0] for r in conn.execute("select image_sha256 from run_images")}
    with sqlite3.connect(whole) as conn:
        assert merged_read == {r[0] for r in conn.execute("select image_sha256 from run_images")} == {
            key[0] for key in whole_content["images"]}

    again = invoke_json("db", "merge", first, second, "--into", merged)
    assert again["added"] == 0 and again["conflicts"] == []
    assert_same(content(merged), content(whole))


def test_a_conflict_is_reported_and_the_target_kept(data_dir, tmp_path):
    manifest = write_manifest(tmp_path / "p.csv", [{"path": str(data_dir / "seg-photos/images/coco_000000000034.jpg"),
                                                     "label": "340"}])
    db = tmp_path / "a.db"
    invoke("run", manifest, "--db", db)
    other = copy_db(db, tmp_path / "b.db")
    with sqlite3.connect(other) as conn:
        conn.execute("update judgments set score = (score + 1) % 6")
        (key,) = conn.execute("select id from judgments").fetchone()
    result = invoke("db", "merge", other, "--into", db)
    assert "conflict: judgments" in result.output and "differs in score" in result.output
    assert "0 rows added, 1 conflicts" in result.output
    with sqlite3.connect(db) as conn, sqlite3.connect(other) as changed:
        assert conn.execute("select score from judgments where id = ?", [key]).fetchone() != \
            changed.execute("select score from judgments where id = ?", [key]).fetchone()
    missing = invoke("db", "merge", tmp_path / "nope.db", "--into", db, expect_ok=False)
    assert missing.exit_code == 2  # click: the file does not exist
