"""The project's real images (../shared/data, or $LOCALJUDGE_TEST_DATA) as manifests the benchmark and reproduction
scripts hand to localjudge; read in place, never copied."""

from __future__ import annotations

import csv
import os
from pathlib import Path

DATA = Path(os.environ.get("LOCALJUDGE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def imagenet_rows(count: int | None = None) -> list[dict]:
    """imagenet-sample's labels.csv rows (the first `count`), each with its absolute `path`."""
    with open(DATA / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [{**r, "path": str(DATA / "imagenet-sample" / r["file"])} for r in rows]


def write_manifest(path: Path, rows: list[tuple]) -> Path:
    """A `path,label` CSV manifest."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def imagenet_manifest(path: Path, count: int | None = None) -> Path:
    """The first `count` imagenet-sample images with their real ImageNet indices."""
    return write_manifest(path, [(r["path"], r["imagenet_index"]) for r in imagenet_rows(count)])


def seg_manifest(path: Path, count: int | None = None) -> Path:
    """The 70 seg-photos (the first `count`) with their ImageNet indices (';'-separated)."""
    with open(DATA / "seg-photos" / "labels.csv", newline="") as handle:
        rows = [(str(DATA / "seg-photos" / r["file"]), r["imagenet_indices"]) for r in csv.DictReader(handle)][:count]
    return write_manifest(path, rows)


def localjudge_json(*args) -> dict:
    """A localjudge command's --json output, run in this process; the script stops with the command's output if it
    fails."""
    import json
    import sys

    from click.testing import CliRunner

    from localjudge.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--json"], catch_exceptions=False)
    if result.exit_code != 0:
        sys.exit(f"localjudge {' '.join(map(str, args))} failed:\n{result.output}")
    return json.loads(result.stdout)


def label_noise(folder: Path, images: int, db: Path) -> tuple[Path, Path]:
    """The paper's ImageNet label-noise set-up on the first `images` imagenet-sample photos: EfficientNet-Lite0
    predicts them (into `db`), its predictions become the labels (the noisy manifest), and the truth file says
    whether each matches the real label (label_ok)."""
    import sqlite3

    rows = imagenet_rows(images)
    localjudge_json("predict", imagenet_manifest(folder / "real.csv", images), "--db", db)
    with sqlite3.connect(db) as conn:
        predicted = dict(conn.execute("select i.path, p.predicted_index from predictions p join images i "
                                      "on i.sha256 = p.image_sha256"))
    noisy = write_manifest(folder / "noisy.csv", [(r["path"], predicted[r["path"]]) for r in rows])
    truth = folder / "truth.csv"
    with open(truth, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label_ok"])
        writer.writerows([r["path"], int(predicted[r["path"]] == int(r["imagenet_index"]))] for r in rows)
    return noisy, truth
