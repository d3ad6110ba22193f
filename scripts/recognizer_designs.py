#!/usr/bin/env python
"""Which recognizer design tracks where the object is? Every design (`--recognizer-design`) judges the same stored
maps, and each is measured three ways:

1. seg-photos (70 photos with object masks; EfficientNet-Lite0, Grad-CAM): Pearson and Spearman, with bootstrap
   intervals, between the judge's score and the attention mask's IoU with the object, and the share of the map's
   mass on the object (`eval correlate`);
2. imagenet-sample, the label-noise experiment (labels = Lite0's own predictions): the judge's label-issue F1 (and
   its WH-only rule's) against keeping every label (`eval label-issues`; cleanlab reads Lite2's probabilities);
3. the reliability card (`eval judge-check`) on 50 of those maps.

    python scripts/recognizer_designs.py [--images 500] [--seg 70] [--out designs.md]
                                         [--designs black,mean,crop,relative]

The maps are computed once per dataset; each design judges a copy of the store."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from localjudge.judge.recognizer import DESIGNS  # noqa: E402
from sample_data import DATA, label_noise, localjudge_json, seg_manifest  # noqa: E402


def reuse_or_copy(source: Path, target: Path) -> Path:
    """A design's own store: a copy of the maps' store, or the one an earlier run left (its judgments kept)."""
    if not target.is_file():
        with sqlite3.connect(source) as origin, sqlite3.connect(target) as copied:
            origin.backup(copied)
    return target


def interval(c: dict, low: str = "ci_low", high: str = "ci_high") -> str:
    if c.get("r") is None:
        return "n/a"
    return f"{c['r']:+.2f}" + ("" if c.get(low) is None else f" [{c[low]:+.2f}, {c[high]:+.2f}]")


def with_interval(method: dict) -> str:
    return f"{method['f1']:.3f} [{method['f1_ci_low']:.3f}, {method['f1_ci_high']:.3f}]"


def label_noise_store(folder: Path, images: int) -> tuple[Path, Path]:
    """The label-noise experiment's store with Lite0's maps of the relabelled images, and its truth file."""
    db = folder / "noise.db"
    noisy, truth = label_noise(folder, images, db)
    localjudge_json("predict", noisy, "--db", db)  # the noisy labels, read as the audit's labels
    localjudge_json("explain", "--db", db)
    localjudge_json("predict", noisy, "--db", db, "--model", "efficientnet-lite2")
    return db, truth


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seg", type=int, default=70, help="seg-photos used (the first N; a test takes a few)")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--out", type=Path, default=Path("designs.md"))
    parser.add_argument("--folder", type=Path, help="a folder of an earlier run: its maps (seg.db, noise.db, "
                                                    "truth.csv) and each design's stores are used again")
    args = parser.parse_args(argv)
    designs = [d for d in args.designs.split(",") if d]
    started = time.perf_counter()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="localjudge-designs-"))
    os.environ.setdefault("LOCALJUDGE_HOME", str(folder / "home"))
    seg_db, noise_db, truth = folder / "seg.db", folder / "noise.db", folder / "truth.csv"
    if not (args.folder and seg_db.is_file() and noise_db.is_file() and truth.is_file()):
        localjudge_json("predict", seg_manifest(folder / "seg.csv", args.seg), "--db", seg_db)
        localjudge_json("explain", "--db", seg_db)
        localjudge_json("eval", "regions", "--db", seg_db, "--masks", DATA / "seg-photos" / "masks")
        noise_db, truth = label_noise_store(folder, args.images)
    lines = ["## Recognizer designs, measured on the same maps (EfficientNet-Lite0, Grad-CAM)", "",
             "| design | score vs IoU: Pearson | Spearman | score vs mass share: Pearson | Spearman | label-issue F1 "
             "(judge / WH only / keep all) | judge F1 - keep all | card |", "|---|---|---|---|---|---|---|---|"]
    for design in designs:
        db = reuse_or_copy(seg_db, folder / f"seg-{design}.db")
        localjudge_json("judge", "--db", db, "--recognizer-design", design)
        correlations = {r["signal"]: r for r in localjudge_json("eval", "correlate", "--db", db)["correlations"]}
        noise = reuse_or_copy(noise_db, folder / f"noise-{design}.db")
        localjudge_json("judge", "--db", noise, "--recognizer-design", design)
        issues = localjudge_json("eval", "label-issues", "--db", noise, "--truth", truth, "--probs-model",
                                 "efficientnet-lite2")
        f1 = {m["method"]: m for m in issues["methods"]}
        card = localjudge_json("eval", "judge-check", "--db", noise, "--recognizer-design", design)
        rates = ", ".join(f"{name} {found['rate']:.2f}" for name, found in card["canaries"].items()
                          if found["rate"] is not None and name in ("blank", "full_view", "absent_class",
                                                                              "mask_sensitivity"))
        iou, share = correlations.get("iou", {}), correlations.get("mass_share", {})
        lines.append(f"| {design} | {interval(iou.get('pearson', {}))} | {interval(iou.get('spearman', {}))} | "
                     f"{interval(share.get('pearson', {}))} | {interval(share.get('spearman', {}))} | "
                     f"{with_interval(f1['judge'])} / {with_interval(f1['judge-wh'])} / {f1['keep-all']['f1']:.3f} | "
                     f"{f1['judge']['f1_minus_keep_all']:+.3f} [{f1['judge']['f1_minus_keep_all_ci_low']:+.3f}, "
                     f"{f1['judge']['f1_minus_keep_all_ci_high']:+.3f}] | {card['verdict']} "
                     f"({rates}) |")
        print(lines[-1], file=sys.stderr)
    lines += ["", f"{args.seg} seg-photos; {args.images} imagenet-sample images for the label-issue experiment and "
              f"the card; intervals: 95 % bootstrap; built in {time.perf_counter() - started:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
