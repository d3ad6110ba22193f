"""Which images a matrix counts: `run` prints the matrix of the images it read, not of every image the store holds
for its setting; `matrix`, `compare` and `report` take --run ID and --source PATH (issue 20)."""

from __future__ import annotations

import csv
import re
import sqlite3

from .conftest import invoke, invoke_json, write_manifest


def seg_rows(data_dir, start: int, stop: int) -> list[dict]:
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[start:stop]
    return [{"path": str(data_dir / "seg-photos" / r["file"]), "label": r["imagenet_indices"]} for r in rows]


def judged(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"over (\d+) judgments", output)]


def test_run_matrix_counts_its_own_images_and_matrix_compare_report_take_run_and_source(data_dir, tmp_path):
    db = tmp_path / "audit.db"
    first = write_manifest(tmp_path / "first.csv", seg_rows(data_dir, 0, 4))
    second = write_manifest(tmp_path / "second.csv", seg_rows(data_dir, 3, 9))  # one image in both
    assert judged(invoke("run", first, "--db", db).stdout) == [4]
    # the store holds 9 judged images of this setting now; the second run read 6 of them
    assert judged(invoke("run", second, "--db", db).stdout) == [6]

    runs = invoke_json("db", "runs", "--db", db)["runs"]
    assert sorted(r["images"] for r in runs) == [4, 6]
    by_images = {r["images"]: r["id"] for r in runs}
    assert invoke_json("matrix", "--db", db)["matrices"][0]["judgments"] == 9
    for run_id, n in ((by_images[4], 4), (by_images[6][:10], 6)):  # an id or its start
        assert invoke_json("matrix", "--db", db, "--run", run_id)["matrices"][0]["judgments"] == n
    assert invoke_json("matrix", "--db", db, "--source", first)["matrices"][0]["judgments"] == 4
    assert invoke_json("matrix", "--db", db, "--source", second)["matrices"][0]["judgments"] == 6
    assert invoke_json("compare", "--db", db, "--run", by_images[6])["settings"][0]["judgments"] == 6
    report = invoke_json("report", "--db", db, "--out", tmp_path / "report", "--source", first)
    assert report["samples"] == 4

    unknown = invoke("matrix", "--db", db, "--run", "ffffffffff", expect_ok=False)
    assert unknown.exit_code != 0 and "no run of" in unknown.output
    # the same command again on a manifest that has lost an image: its matrix counts the images it read now
    write_manifest(first, seg_rows(data_dir, 0, 3))
    assert judged(invoke("run", first, "--db", db).stdout) == [3]
    # each run's images are recorded as it read them (the image in both manifests, once for each)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select run_id, count(*) from run_images group by run_id").fetchall()
    assert sorted(n for _, n in rows) == [4, 6]
