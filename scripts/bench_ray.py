#!/usr/bin/env python
"""Images per second of a whole run (ingest, predict, explain, judge) on this machine: one process, and `--ray`
on a local cluster with 1 and with 2 workers per stage, each on a fresh database, in one run.

On 2 cores expect little gain: the figure is to see the cluster's overhead (start-up, moving rows), not speed.

    python scripts/bench_ray.py [--vlm DIR]   (the 70 seg-photos)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sample_data import seg_manifest


def timed_run(manifest: Path, db: Path, extra: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "localjudge", "run", str(manifest), "--db", str(db), "--json",
                             *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return seconds, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlm", help="A VLM directory for the judge (default: the recognizer).")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    manifest = seg_manifest(folder / "photos.csv")
    judge = ["--vlm", args.vlm] if args.vlm else []
    rows = []
    for name, extra in (("one process", []), ("ray, 1 worker", ["--ray", "--ray-workers", "1"]),
                        ("ray, 2 workers", ["--ray", "--ray-workers", "2"])):
        seconds, stages = timed_run(manifest, folder / f"{len(rows)}.db", judge + extra)
        images = stages["judge"]["rows"]
        rows.append({"setting": name, "images": images, "seconds": seconds, "images_per_second": images / seconds})
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    print(json.dumps(rows, indent=2))
    base = rows[0]["images_per_second"]
    for row in rows:
        print(f"{row['setting']:>15}: {row['images']} images in {row['seconds']:.1f} s = "
              f"{row['images_per_second']:.2f} images/s ({row['images_per_second'] / base:.2f}x one process)")
    print(f"2 workers / 1 worker: {rows[2]['images_per_second'] / rows[1]['images_per_second']:.2f}x")


if __name__ == "__main__":
    main()
