#!/usr/bin/env python
"""A hospital's own model, audited as a user would: a real 2-class classifier (dog / not dog; EfficientNet-Lite0's
real features with a logistic-regression head fitted on the even rows of imagenet-sample), a card from the command
line, a run on torch, an ONNX export and a run on ONNX Runtime, all on the held-out odd rows.

    python scripts/own_model_audit.py --vlm DIR [--images N] [--folder DIR] [--multilabel]

Prints the held-out accuracy with its bootstrap interval beside the trivial baseline (always "not dog"), whether the
two engines agree, and each engine's 2x2 matrix. With --multilabel, instead a real multilabel model (one logistic head
per VOC/COCO category on Lite0's features, fitted on the even seg-photos) audited on the odd ones with --targets
labelled and each photo's mask as its main category's region: its per-class accuracy beside the trivial baseline
(every class absent), its matrices overall and per finding, and its region metrics per finding beside the
localisation baselines. The judge is the VLM given: on this CPU-only machine the tiny random Qwen2.5-VL of the tests
(scripts/make_tiny_vlms.py), whose matrix shows the mechanics only, never the model's attention."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' model maker (tests/own_models.py)

from localjudge.analysis.bootstrap import mean_interval  # noqa: E402
from sample_data import DATA, localjudge_json  # noqa: E402
from tests.own_models import (dog_manifest, imagenet_rows, is_dog, make_dog_model, make_multilabel_model,  # noqa: E402
                              objects_of, seg_rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", type=Path, required=True, help="the judge's model directory")
    parser.add_argument("--images", type=int, default=None, help="audit only the first N held-out rows")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--multilabel", action="store_true", help="audit the multilabel model instead")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="localjudge-own-model-"))
    os.environ.setdefault("LOCALJUDGE_HOME", str(folder / "home"))
    judge = ["--vlm", args.vlm, "--max-new-tokens", "256"]
    if args.multilabel:
        multilabel(folder, judge)
        return 0
    rows = imagenet_rows(DATA)
    weights, labels = make_dog_model(DATA, folder / "model", rows[0::2])
    held_out = rows[1::2][:args.images]
    manifest = dog_manifest(DATA, held_out, folder / "held-out.csv")
    card = folder / "dogs.json"
    localjudge("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--out", card)
    graph = folder / "dogs.onnx"
    localjudge("models", "export", card, "--weights", weights, "--out", graph)
    engines = {"torch": ["--model", card, "--weights", weights], "onnx": ["--model", graph]}
    for name, model in engines.items():
        db = folder / f"{name}.db"
        localjudge_json("run", manifest, "--db", db, *model, *judge)
        correct = np.array([p["correct"] for p in predictions(db)], dtype=float)
        low, high = mean_interval(correct)
        dogs = float(np.mean([is_dog(r) for r in held_out]))
        print(f"{name}: held-out accuracy {correct.mean():.3f} [{low:.3f}, {high:.3f}] on {len(correct)} images; "
              f"trivial baseline (always 'not dog') {1 - dogs:.3f}")
        for m in localjudge_json("matrix", "--db", db)["matrices"]:
            counts, percent = m["counts"], m["percent"]
            print(f"  matrix ({m['judge_model']}, {m['judgments']} judgments): " +
                  ", ".join(f"{q} {counts[q]} ({percent[q]:.1f}%)" for q in ("CH", "CL", "WH", "WL")))
    same = {p["image_sha256"]: p["predicted_label"] for p in predictions(folder / "torch.db")} == \
        {p["image_sha256"]: p["predicted_label"] for p in predictions(folder / "onnx.db")}
    print(f"torch and ONNX Runtime predict the same label for every image: {same}")
    return 0


def multilabel(folder: Path, judge: list) -> None:
    import csv
    import json
    import sqlite3

    from localjudge.store import unpack_array

    rows = seg_rows(DATA)
    weights, labels, classes = make_multilabel_model(DATA, folder / "multilabel", rows[0::2])
    held_out = [r for r in rows[1::2] if set(objects_of(r)) <= set(classes)]  # classes the heads were fitted on
    manifest = folder / "seg-held-out.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "mask", "finding"])
        writer.writeheader()
        writer.writerows({"path": str(DATA / "seg-photos" / r["file"]), "label": ";".join(objects_of(r)),
                          "mask": str(DATA / "seg-photos" / r["mask"]), "finding": objects_of(r)[0]}
                         for r in held_out)
    card = folder / "objects.json"
    localjudge("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--task",
               "multilabel", "--out", card)
    db = folder / "multilabel.db"
    model = ["--model", card, "--weights", weights]
    localjudge_json("run", manifest, "--db", db, *model, *judge, "--targets", "labelled", "--mask-column", "mask",
                    "--mask-label-column", "finding")
    with sqlite3.connect(db) as conn:
        stored = conn.execute("select probs, label_indices from predictions").fetchall()
    calls = np.array([[int(p >= 0.5) == int(c in json.loads(indices)) for c, p in
                       enumerate(unpack_array(blob, (-1,), np.float32))] for blob, indices in stored], dtype=float)
    absent = np.array([[c not in json.loads(indices) for c in range(len(classes))] for _, indices in stored],
                      dtype=float)
    low, high = mean_interval(calls.mean(axis=1))  # images resampled, each with all its classes
    print(f"multilabel: {len(classes)} classes, {len(stored)} held-out photos; per-class calls right "
          f"{calls.mean():.3f} [{low:.3f}, {high:.3f}]; trivial baseline (every class absent) {absent.mean():.3f}")
    for m in localjudge_json("matrix", "--db", db)["matrices"]:
        counts, intervals = m["counts"], m["intervals"]
        print(f"  matrix ({m['judgments']} targets, intervals by {m['bootstrap']['unit']}): " + ", ".join(
            f"{q} {counts[q]} ({m['percent'][q]:.1f}% [{intervals[q]['ci_low']:.1f}, {intervals[q]['ci_high']:.1f}])"
            for q in ("CH", "CL", "WH", "WL")))
        for f in m["by_finding"]:
            print(f"    {f['finding']:14} {f['judgments']:3} targets: " + ", ".join(
                f"{q} {f['counts'][q]} ({f['percent'][q]:.0f}% [{f['intervals'][q]['ci_low'] or 0:.0f}, "
                f"{f['intervals'][q]['ci_high'] or 0:.0f}])" for q in ("CH", "CL", "WH", "WL")))
    regions = localjudge_json("eval", "regions", "--db", db, *model, "--mask-column", "mask", "--mask-label-column",
                              "finding", "--manifest", manifest)
    print(f"  region metrics per finding at beta=0.6 ({regions['means']['maps']} maps with their own region):")
    for f in regions["means"]["by_finding"]:
        iou = f["intervals"]["iou"]
        print(f"    {f['finding']:14} {f['maps']:3} maps: IoU {f['iou']:.3f} "
              f"[{iou['ci_low']:.3f}, {iou['ci_high']:.3f}], F1 {f['f1']:.3f}")
    table = regions["localisation"]
    for column in ("maps", "centre point", "centred gaussian"):
        found = table[column]
        iou, pointing = found.get("at_beta", {}).get("iou") or {}, found["energy_pointing_game"]
        print(f"  {column:17} IoU@beta {iou.get('mean', float('nan')):.3f}, mass share "
              f"{pointing['mean'] if isinstance(pointing, dict) else pointing:.3f}")


def localjudge(*args) -> None:
    """A localjudge command without --json output (models card, models export), run in this process."""
    from click.testing import CliRunner

    from localjudge.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        sys.exit(f"localjudge {' '.join(map(str, args))} failed:\n{result.output}")


def predictions(db: Path) -> list[dict]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("select image_sha256, predicted_label, correct from predictions")]


if __name__ == "__main__":
    raise SystemExit(main())
