"""`localjudge export`: one row per judgment with every stage's outputs and the run parameters, the same in CSV,
JSON and JSON lines, and safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

from localjudge.export import COLUMNS

from .conftest import FORMULA, XSS, invoke


def exported(db, fmt: str, *args) -> str:
    return invoke("export", "--db", db, "--format", fmt, *args).stdout


def test_one_row_per_judgment_in_every_format(hostile_audit):
    db = hostile_audit["db"]
    as_json = json.loads(exported(db, "json"))
    as_lines = [json.loads(line) for line in exported(db, "jsonl").splitlines()]
    as_csv = list(csv.DictReader(io.StringIO(exported(db, "csv"))))
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        judgments = {r["id"]: r for r in conn.execute("select * from judgments")}
        predictions = {r["id"]: r for r in conn.execute("select * from predictions")}
    assert as_json == as_lines
    assert [r["judgment_id"] for r in as_json] == [r["judgment_id"] for r in as_csv]
    assert sorted(r["judgment_id"] for r in as_json) == sorted(judgments)
    assert list(as_csv[0]) == list(COLUMNS) == list(as_json[0])
    for row, flat in zip(as_json, as_csv):
        stored = judgments[row["judgment_id"]]
        prediction = predictions[stored["prediction_id"]]
        assert (row["status"], row["score"], row["image_mode"]) == (stored["status"], stored["score"],
                                                                    stored["image_mode"])
        assert (row["predicted_label"], row["confidence"]) == (prediction["predicted_label"], prediction["confidence"])
        assert row["top5"] == json.loads(prediction["top5"]) and len(row["top5"]) == 5
        # the run parameters travel with each row
        assert row["judge_run"]["config"]["image_mode"] == row["image_mode"]
        assert row["judge_run"]["config"]["alpha"] == 15.0
        # a heatmap overlay reads no alpha: its judgment holds none
        assert row["alpha"] == (15.0 if row["image_mode"] == "masked" else None)
        assert row["predict_run"]["config"]["model"] == row["model"] == "efficientnet-lite0"
        if row["status"] == "ok":
            expected = ("C" if row["correct"] else "W") + ("H" if row["score"] >= 3 else "L")
            assert row["quadrant"] == (expected if row["correct"] is not None else "unlabelled")
            assert row["evaluation"] == flat["evaluation"] == XSS
            # a spreadsheet would run the judge's formula: CSV quotes it as text, JSON keeps it as said
            assert row["justification"] == FORMULA and flat["justification"] == "'" + FORMULA
        else:
            assert row["quadrant"] == "failed" and row["error"]
        assert float(flat["confidence"]) == row["confidence"]
        assert json.loads(flat["judge_run"]) == row["judge_run"]


def test_export_to_a_file_with_filters(hostile_audit, tmp_path):
    out = tmp_path / "masked.jsonl"
    result = invoke("export", "--db", hostile_audit["db"], "--format", "jsonl", "--out", out,
                    "--image-mode", "masked", "--threshold", "5")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"wrote {len(rows)} rows" in result.output and len(rows) == hostile_audit["images"]
    assert {r["image_mode"] for r in rows} == {"masked"} and {r["threshold"] for r in rows} == {5}
    assert {r["quadrant"] for r in rows if r["status"] == "ok" and r["score"] < 5} <= {"CL", "WL", "unlabelled"}


def test_a_heatmap_judgment_keeps_its_maps_region_scores(data_dir, tmp_path):
    """A heatmap judgment holds no beta (its overlay reads none): its map's region scores are read at the default
    beta, not lost to a join on NULL."""
    from .conftest import seg_photos_manifest

    manifest = seg_photos_manifest(data_dir, tmp_path / "two.csv", 2)
    db = tmp_path / "regions.db"
    invoke("run", manifest, "--db", db)
    invoke("eval", "regions", "--db", db, "--masks", data_dir / "seg-photos" / "masks")
    with sqlite3.connect(db) as conn:  # each judgment again as a heatmap judge would hold it: no alpha, no beta
        columns = [r[1] for r in conn.execute("pragma table_info(judgments)")]
        for row in conn.execute("select * from judgments").fetchall():
            values = dict(zip(columns, row), id=row[0] + "-heatmap", image_mode="heatmap", alpha=None, beta=None)
            conn.execute(f"insert into judgments ({', '.join(columns)}) values ({', '.join('?' * len(columns))})",
                         [values[c] for c in columns])
    rows = json.loads(invoke("export", "--db", db, "--format", "json").stdout)
    by_mode = {mode: [r["iou"] for r in rows if r["image_mode"] == mode] for mode in ("masked", "heatmap")}
    assert len(by_mode["heatmap"]) == 2 and None not in by_mode["masked"]
    assert by_mode["heatmap"] == by_mode["masked"]
