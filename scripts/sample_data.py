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
