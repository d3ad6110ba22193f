#!/usr/bin/env python
"""Issue 18's figures on the 70 seg-photos with EfficientNet-Lite0 (Grad-CAM, the embedded default judge, the masks
as ground-truth regions), in one run:

1. the background table (eval background): each variant's accuracy with its interval, the background gap and the
   trivial baseline (always the commonest labelled class), overall and for the labelled classes with 5 or more
   images;
2. the per-class statistics (eval classes) for the classes with n >= 5, by predicted and by labelled class: n,
   accuracy, CL+WH share with its Wilson interval beside the dataset's share, mean score, mass in the region, map
   entropy and attended area.

    python scripts/seg_photo_findings.py [--db audit.db]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sample_data import DATA, localjudge_json

VARIANTS = ("original", "only_object", "no_object", "mixed_same", "mixed_rand")
MIN_N = 5


def interval(value, low, high, digits=2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + ("" if low is None else f" [{low:.{digits}f}, {high:.{digits}f}]")


def gap_text(gap: dict) -> str:
    if gap["difference"] is None:
        return "n/a"
    return f"{gap['difference']:+.2f}" + ("" if gap["ci_low"] is None else
                                          f" [{gap['ci_low']:+.2f}, {gap['ci_high']:+.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="An existing audit of the seg-photos (default: audit them first).")
    args = parser.parse_args()
    db = args.db
    if db is None:
        db = Path(tempfile.mkdtemp(prefix="localjudge-seg-findings-")) / "audit.db"
        localjudge_json("run", DATA / "seg-photos" / "labels.csv", "--path-column", "file", "--label-column",
                        "imagenet_indices", "--mask-column", "mask", "--db", db, "--device", "cpu")

    background = localjudge_json("eval", "background", "--db", db)
    print("background (eval background --json): accuracy [95% CI]")
    print(f"{'':14}{'n':>4}" + "".join(f"{v:>20}" for v in VARIANTS) + "   BG-gap (same - rand)")

    def row(name: str, figures: dict) -> str:
        cells = [interval(figures[v]["accuracy"], figures[v]["ci_low"], figures[v]["ci_high"]) for v in VARIANTS]
        return f"{name[:13]:14}{figures['images']:>4}" + "".join(f"{c:>20}" for c in cells) + "   " + \
            gap_text(figures["bg_gap"])

    print(row("all", background["overall"]))
    for entry in background["by_class"]:
        if entry["images"] >= MIN_N:
            print(row(entry["class"], entry))
    print(f"trivial baseline, always the commonest labelled class: {background['overall']['majority_baseline']:.3f}")

    for by in ("predicted", "labelled"):
        for setting in localjudge_json("eval", "classes", "--db", db, "--by", by)["settings"]:
            base = setting["baseline"]["disagreement"]
            print(f"\nper {by} class, n >= {MIN_N} (eval classes --by {by} --json; threshold {setting['threshold']}); "
                  f"the dataset's CL+WH share {interval(base['share'], base['ci_low'], base['ci_high'])}, "
                  f"accuracy {interval(**_mean(setting['baseline']['accuracy']))}")
            print(f"{'class':22}{'n':>4}{'accuracy':>10}  {'CL+WH [Wilson 95%]':22}{'score':>7}{'mass':>7}"
                  f"{'entropy':>9}{'area':>7}")
            for group in setting["groups"]:
                if group["n"] < MIN_N:
                    continue
                d = group["disagreement"]
                flag = "  above the dataset's" if group["above_baseline"] else ""
                print(f"{str(group['group'])[:21]:22}{group['n']:>4}{_num(group['accuracy']):>10}  "
                      f"{interval(d['share'], d['ci_low'], d['ci_high']):22}{_num(group['average_score']):>7}"
                      f"{_num(group['mass_in_region']):>7}{_num(group['entropy'], 3):>9}"
                      f"{_num(group['attended_area']):>7}{flag}")


def _mean(found: dict) -> dict:
    return {"value": found["mean"], "low": found["ci_low"], "high": found["ci_high"]}


def _num(found: dict, digits: int = 2) -> str:
    return "n/a" if found["mean"] is None else f"{found['mean']:.{digits}f}"


if __name__ == "__main__":
    main()
