"""A run reads and decodes each image once: ingest keeps the picture it decoded to hash and check the file, the
vision stage predicts and explains from it, and the judge is handed the model's view of it. Counted with the one
function every image read goes through (`data.read_file`) and the one that decodes (`data.decode`), wrapped."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import localjudge.data as data

from .conftest import invoke, invoke_json, seg_photos_manifest
from .malformed import build_corpus


@pytest.fixture
def counted(monkeypatch):
    reads: Counter = Counter()
    decodes: list[int] = []
    read_file, decode = data.read_file, data.decode

    def counted_read(path):
        reads[str(Path(path).resolve())] += 1
        return read_file(path)

    def counted_decode(blob):
        decodes.append(len(blob))
        return decode(blob)

    monkeypatch.setattr(data, "read_file", counted_read)
    monkeypatch.setattr(data, "decode", counted_decode)
    return reads, decodes


def test_a_run_reads_and_decodes_each_image_once(counted, data_dir, tmp_path):
    reads, decodes = counted
    manifest = seg_photos_manifest(data_dir, tmp_path / "twenty.csv", 20)
    photos = {str(Path(line.split(",")[0]).resolve()) for line in manifest.read_text().splitlines()[1:]}
    db = tmp_path / "once.db"
    common = ["--db", db, "--batch-size", "8", "--judge-batch-size", "8"]  # several vision and judge batches
    stages = invoke_json("run", manifest, *common)
    assert stages["predict"]["computed"] == stages["explain"]["computed"] == stages["judge"]["computed"] == 20
    assert reads == {photo: 1 for photo in photos}
    assert len(decodes) == 20
    # Stored maps judged under another mask setting: the maps are not computed again, and each picture the judge
    # needs is still the one read at ingest.
    reads.clear()
    decodes.clear()
    stages = invoke_json("run", manifest, *common, "--alpha", "25")
    assert stages["explain"]["computed"] == 0 and stages["judge"]["computed"] == 20
    assert reads == {photo: 1 for photo in photos} and len(decodes) == 20
    # The stand-alone stages read what they need: `judge` alone reads each image once, for the judge's view.
    reads.clear()
    decodes.clear()
    assert invoke_json("judge", "--db", db, "--alpha", "35")["judge"]["computed"] == 20
    assert reads == {photo: 1 for photo in photos} and len(decodes) == 20


def loaded_as_before(path: Path) -> Image.Image:
    """How every stage loaded a picture before a run kept the one read at ingest (load_rgb at 3eb44c4, frozen)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            pixels = np.asarray(image, dtype=np.float32)
            low, high = float(pixels.min()), float(pixels.max())
            pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
            image = Image.fromarray(pixels.astype(np.uint8))
        return image.convert("RGB")


def test_the_picture_read_at_ingest_is_the_one_the_stages_loaded_before(data_dir, tmp_path):
    """The picture a run keeps from ingest (orientation, first frame, colour and bit-depth conversions) is pixel for
    pixel the one the stages used to load from the file again, and the one a stand-alone stage loads now."""
    corpus = build_corpus(data_dir, tmp_path / "corpus")
    files = [path for path, expected in corpus.values() if expected == "read"]
    files += sorted((data_dir / "seg-photos" / "images").glob("*.jpg"))[:5]
    for path in files:
        found = data.read_image(path)
        assert isinstance(found, data.ReadImage), path
        before = np.asarray(loaded_as_before(path))
        assert found.picture.mode == "RGB" and np.array_equal(np.asarray(found.picture), before), path
        assert np.array_equal(np.asarray(data.load_verified(path, found.sha256)), before), path
    assert len(files) >= 10


def test_a_predict_reads_each_image_once(counted, data_dir, tmp_path):
    reads, decodes = counted
    manifest = seg_photos_manifest(data_dir, tmp_path / "five.csv", 5)
    invoke("predict", manifest, "--db", tmp_path / "p.db", "--batch-size", "2")
    assert sorted(reads.values()) == [1] * 5 and len(decodes) == 5


def test_a_view_drawn_on_either_thread_is_the_one_the_judge_alone_draws(counted, data_dir, tmp_path):
    """The run hands the judge's thread a small picture to draw its view from, and a large one's view drawn on the
    vision stage's thread (local._views_to_hand_over): both give the judgments `judge` alone makes from the files."""
    import sqlite3

    from localjudge.pipeline import open_audit
    from localjudge.pipeline.local import PICTURE_HANDED_OVER, _views_to_hand_over

    from .conftest import write_manifest

    photos = sorted((data_dir / "seg-photos" / "images").glob("*.jpg"))[:4]
    large = tmp_path / "large.png"  # a photo enlarged past the hand-over limit (a scan at full size)
    with Image.open(photos[0]) as image:
        image.convert("RGB").resize((image.width * 3, image.height * 3), Image.BICUBIC).save(large)
    manifest = write_manifest(tmp_path / "mixed.csv", [{"path": str(p), "label": ""} for p in [*photos[1:], large]])
    audit = open_audit(tmp_path / "split.db", manifest, ("ingest",), show_progress=False)
    small_read, large_read = data.read_image(photos[1]), data.read_image(large)
    pictures = {small_read.sha256: small_read.picture, large_read.sha256: large_read.picture}
    side = audit.config.judge_image_size
    assert large_read.picture.width * large_read.picture.height > PICTURE_HANDED_OVER * side * side
    assert small_read.picture.width * small_read.picture.height <= PICTURE_HANDED_OVER * side * side
    views, handed = _views_to_hand_over(audit, set(pictures), pictures)
    assert set(views) == {large_read.sha256} and handed == {small_read.sha256: small_read.picture}
    assert views[large_read.sha256].size == (side, side)
    audit.store.close()

    run_db, alone_db = tmp_path / "run.db", tmp_path / "alone.db"
    reads, _ = counted
    reads.clear()
    assert invoke_json("run", manifest, "--db", run_db, "--batch-size", "2")["judge"]["computed"] == 4
    # each view came from the picture read at ingest, on whichever thread it was drawn: no file is read again
    assert reads == {str(path.resolve()): 1 for path in [*photos[1:], large]}
    with sqlite3.connect(run_db) as run, sqlite3.connect(alone_db) as alone:
        run.backup(alone)  # the store with what it holds in its write-ahead log
        alone.execute("delete from judgments")
    assert invoke_json("judge", "--db", alone_db)["judge"]["computed"] == 4
    query = "select id, saliency_id, score, raw_text from judgments order by id"
    with sqlite3.connect(run_db) as run, sqlite3.connect(alone_db) as alone:
        assert run.execute(query).fetchall() == alone.execute(query).fetchall()
