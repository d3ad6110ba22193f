#!/usr/bin/env python
"""A hospital's own model, audited as a user would: a real 2-class classifier (dog / not dog; EfficientNet-Lite0's
real features with a logistic-regression head fitted on the even rows of imagenet-sample), a card from the command
line, a run on torch, an ONNX export and a run on ONNX Runtime, all on the held-out odd rows.

    python scripts/own_model_audit.py --vlm DIR [--images N] [--folder DIR]

Prints the held-out accuracy with its bootstrap interval beside the trivial baseline (always "not dog"), whether the
two engines agree, and each engine's 2x2 matrix. The judge is the VLM given: on this CPU-only machine the tiny random
Qwen2.5-VL of the tests (scripts/make_tiny_vlms.py), whose matrix shows the mechanics only, never the model's
attention."""

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
from tests.own_models import dog_manifest, imagenet_rows, is_dog, make_dog_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", type=Path, required=True, help="the judge's model directory")
    parser.add_argument("--images", type=int, default=None, help="audit only the first N held-out rows")
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="localjudge-own-model-"))
    os.environ.setdefault("LOCALJUDGE_HOME", str(folder / "home"))
    rows = imagenet_rows(DATA)
    weights, labels = make_dog_model(DATA, folder / "model", rows[0::2])
    held_out = rows[1::2][:args.images]
    manifest = dog_manifest(DATA, held_out, folder / "held-out.csv")
    card = folder / "dogs.json"
    localjudge("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--out", card)
    graph = folder / "dogs.onnx"
    localjudge("models", "export", card, "--weights", weights, "--out", graph)
    judge = ["--vlm", args.vlm, "--max-new-tokens", "256"]
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
