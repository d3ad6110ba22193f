#!/usr/bin/env python
"""kill -9 at random moments of `localjudge run`, then run again: every readable image must end with exactly one
prediction, one map and one judgment; nothing lost, nothing twice, the database intact.

Each trial starts on a fresh database, kills the run (SIGKILL: no cleanup, no finally) after a random share of a
clean run's time, reads what the killed run had stored, re-runs the same command to completion and checks:

- every readable image has one prediction of the model, one Grad-CAM map per prediction and one judgment per map,
  all judgments successful; no row more (the keys are content-addressed, so a repeat would be the same row);
- PRAGMA integrity_check says ok and PRAGMA foreign_key_check finds nothing;
- the re-run computed only what was missing (stored + computed = expected).

    python scripts/kill_resilience.py [--trials 20] [--images 30] [--seed 0] [--json]

With --concurrent it also starts two runs on one database at once and checks both finish, the same counts, and that
each map was judged once across the two (their judge stages' new judgments add up to the images: the runs split
the judge work through their leases instead of both doing it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sample_data import DATA, write_manifest


def photos_manifest(path: Path, count: int) -> Path:
    with open(DATA / "seg-photos" / "labels.csv", newline="") as handle:
        rows = [(str(DATA / "seg-photos" / r["file"]), r["imagenet_indices"]) for r in csv.DictReader(handle)][:count]
    return write_manifest(path, rows)


def command(manifest: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "localjudge", "run", str(manifest), "--db", str(db), "--json",
            "--batch-size", "4", "--judge-batch-size", "4"]


def counts(db: Path) -> dict:
    """What the store holds, and whether it holds it once and consistently."""
    if not db.exists():
        return {"images": 0, "predictions": 0, "maps": 0, "judgments": 0, "ok_judgments": 0}
    with sqlite3.connect(db, timeout=60) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        if "judgments" not in tables:
            return {"images": 0, "predictions": 0, "maps": 0, "judgments": 0, "ok_judgments": 0,
                    "schema": sorted(tables)}
        return {
            "images": one("select count(*) from images"),
            "predictions": one("select count(*) from predictions"),
            "predicted_images": one("select count(distinct image_sha256) from predictions"),
            "maps": one("select count(*) from saliency_maps"),
            "mapped_predictions": one("select count(distinct prediction_id) from saliency_maps"),
            "judgments": one("select count(*) from judgments"),
            "judged_maps": one("select count(distinct saliency_id) from judgments"),
            "ok_judgments": one("select count(*) from judgments where status = 'ok'"),
            "integrity": one("pragma integrity_check"),
            "foreign_key_problems": len(conn.execute("pragma foreign_key_check").fetchall()),
        }


def complete(found: dict, expected: int) -> bool:
    return (found["images"] == found["predictions"] == found["predicted_images"] == found["maps"]
            == found["mapped_predictions"] == found["judgments"] == found["judged_maps"] == found["ok_judgments"]
            == expected and found["integrity"] == "ok" and found["foreign_key_problems"] == 0)


def clean_run(manifest: Path, folder: Path) -> tuple[float, int]:
    db = folder / "clean.db"
    started = time.perf_counter()
    result = subprocess.run(command(manifest, db), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return time.perf_counter() - started, counts(db)["images"]


def trial(manifest: Path, db: Path, kill_after: float, expected: int) -> dict:
    process = subprocess.Popen(command(manifest, db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    finished_first = process.poll() is not None
    if not finished_first:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = counts(db)
    rerun = subprocess.run(command(manifest, db), capture_output=True, text=True)
    after = counts(db)
    stages = json.loads(rerun.stdout) if rerun.returncode == 0 else {}
    computed = {name: stages.get(name, {}).get("computed") for name in ("predict", "explain", "judge")}
    return {"kill_after_s": round(kill_after, 2), "finished_before_kill": finished_first,
            "stored_at_kill": {k: before.get(k) for k in ("images", "predictions", "maps", "judgments")},
            "rerun_rc": rerun.returncode, "rerun_computed": computed, "after": after,
            "only_missing_redone": computed["judge"] == expected - (before.get("judgments") or 0)
            if rerun.returncode == 0 else False,
            "ok": rerun.returncode == 0 and complete(after, expected)}


def concurrent(manifest: Path, db: Path, expected: int) -> dict:
    first = subprocess.Popen(command(manifest, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command(manifest, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate() for p in (first, second)]
    after = counts(db)
    judged = []  # what each run's judge made: split between them, never both making one judgment
    for stdout, _ in outputs:
        try:
            judged.append(json.loads(stdout)["judge"]["computed"])
        except (ValueError, KeyError):
            judged.append(None)
    split = None not in judged and sum(judged) == expected
    return {"return_codes": [first.returncode, second.returncode], "after": after, "judged": judged,
            "judged_once": split,
            "stderr": [o[1][-500:] for o in outputs if o[1].strip() and "warning" not in o[1]],
            "ok": first.returncode == second.returncode == 0 and complete(after, expected) and split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrent", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="kill-resilience-"))
    manifest = photos_manifest(folder / "photos.csv", args.images)
    clean_run(manifest, folder)  # untimed: it fills the ONNX export cache, which would make the timed run long
    seconds, expected = clean_run(manifest, folder / "timed")
    rng = random.Random(args.seed)
    results = []
    for number in range(args.trials):
        result = trial(manifest, folder / f"trial-{number}.db", rng.uniform(0.05, 1.0) * seconds, expected)
        results.append(result)
        if not args.json:
            at = result["stored_at_kill"]
            print(f"trial {number + 1:2}: killed at {result['kill_after_s']:5.1f} s"
                  f"{' (had finished)' if result['finished_before_kill'] else ''}; stored then: "
                  f"{at['images']} images, {at['predictions']} predictions, {at['maps']} maps, {at['judgments']} "
                  f"judgments; re-run computed {result['rerun_computed']}; "
                  f"{'OK' if result['ok'] else 'FAILED ' + json.dumps(result['after'])}", flush=True)
    summary = {"images": expected, "clean_run_seconds": round(seconds, 1), "trials": len(results),
               "passed": sum(r["ok"] for r in results), "results": results}
    if args.concurrent:
        summary["concurrent"] = concurrent(manifest, folder / "concurrent.db", expected)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\n{summary['passed']} of {summary['trials']} trials left every one of the {expected} images with "
              f"exactly one prediction, map and judgment (a clean run takes {seconds:.1f} s)")
        if args.concurrent:
            c = summary["concurrent"]
            print(f"two runs at once on one database: return codes {c['return_codes']}, judged {c['judged']} "
                  f"(each map once: {c['judged_once']}), "
                  f"{'complete' if c['ok'] else 'INCOMPLETE ' + json.dumps(c['after'])}")
    sys.exit(0 if summary["passed"] == summary["trials"] and summary.get("concurrent", {"ok": True})["ok"] else 1)


if __name__ == "__main__":
    main()
