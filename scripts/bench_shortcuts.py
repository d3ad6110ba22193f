#!/usr/bin/env python
"""Time of the shortcut statistics on the 500 imagenet-sample maps (issue 18's target: clustering and the per-class
statistics in under a minute on a 2-core CPU), measured in one process:

1. without --db, `localjudge run` on the 500 photos (EfficientNet-Lite0, Grad-CAM, the embedded default judge)
   into a temporary store first (not part of the time);
2. timed, each as its command: `eval classes` per predicted class, `eval classes --groups` per coarse
   super-class (scripts/imagenet_superclasses.json), `eval clusters` per class (the classes with 6 or more maps)
   and `eval clusters --groups` per super-class (every map clustered in its super-class);
3. the total against the 60 s target, and the super-class table: n, accuracy, CL+WH share with its interval, and
   the super-classes to inspect.

    python scripts/bench_shortcuts.py [--db audit.db] [--images 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sample_data import imagenet_manifest, localjudge_json

from localjudge.queries import describe_setting

GROUPS = Path(__file__).resolve().parent / "imagenet_superclasses.json"
TARGET_SECONDS = 60.0


def timed(*args) -> tuple[dict, float]:
    started = time.perf_counter()
    found = localjudge_json(*args)
    return found, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="An existing audit (default: audit imagenet-sample first).")
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    db = args.db
    if db is None:
        folder = Path(tempfile.mkdtemp(prefix="localjudge-bench-shortcuts-"))
        db = folder / "audit.db"
        started = time.perf_counter()
        localjudge_json("run", imagenet_manifest(folder / "imagenet.csv", args.images), "--db", db, "--device", "cpu")
        print(f"audit of {args.images} imagenet-sample photos (not timed below): {time.perf_counter() - started:.1f} s")

    classes, classes_s = timed("eval", "classes", "--db", db)
    groups, groups_s = timed("eval", "classes", "--db", db, "--groups", GROUPS)
    clusters, clusters_s = timed("eval", "clusters", "--db", db)
    grouped, grouped_s = timed("eval", "clusters", "--db", db, "--groups", GROUPS)
    maps = sum(c["maps"] for c in grouped["classes"])
    print(f"eval classes (per class, {sum(len(s['groups']) for s in classes['settings'])} classes): {classes_s:.2f} s")
    print(f"eval classes --groups (per super-class): {groups_s:.2f} s")
    print(f"eval clusters (per class with 6+ maps: {len(clusters['classes'])} classes, "
          f"{sum(c['maps'] for c in clusters['classes'])} maps): {clusters_s:.2f} s")
    print(f"eval clusters --groups ({len(grouped['classes'])} super-classes, {maps} maps): {grouped_s:.2f} s")
    total = classes_s + groups_s + clusters_s + grouped_s
    print(f"total {total:.2f} s; target {TARGET_SECONDS:.0f} s; ratio total/target {total / TARGET_SECONDS:.3f}")

    for setting in groups["settings"]:
        base = setting["baseline"]["disagreement"]
        print(f"\nper super-class of scripts/imagenet_superclasses.json ({describe_setting(setting)}, threshold "
              f"{setting['threshold']}); the dataset's CL+WH share {share(base)}")
        print(f"{'super-class':38}{'n':>5}{'accuracy':>10}  CL+WH share [Wilson 95% CI]")
        for row in setting["groups"]:
            print(f"{row['group'][:37]:38}{row['n']:>5}{row['accuracy']['mean'] or 0:>10.3f}  "
                  f"{share(row['disagreement'])}")
        print("to inspect: " + "; ".join(f"{r['group']} {share(r['disagreement'])}" for r in setting["inspect"][:5]))
    for entry in grouped["classes"]:
        candidates = [c for c in entry["clusters"] if c["shortcut_candidate"]]
        print(f"clusters of {entry['class']} ({entry['maps']} maps): {len(entry['clusters'])}, "
              f"{len(candidates)} shortcut candidates" + "".join(f"; #{c['cluster']} ({c['size']} maps)"
                                                             for c in candidates))


def share(found: dict) -> str:
    if found["share"] is None:
        return "n/a"
    interval = "" if found["ci_low"] is None else f" [{found['ci_low']:.2f}, {found['ci_high']:.2f}]"
    return f"{found['share']:.2f}{interval}"


if __name__ == "__main__":
    main()
