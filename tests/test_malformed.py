"""What real folders hold besides good photos: each file gets a clear stored error, or is read as it should be
(EXIF orientation applied, the first frame of an animation, 16 bits scaled), and the run goes on; a checkpoint that
carries code is refused before anything in it runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import torch

from localjudge.data import load_rgb

from .conftest import REPO, invoke, invoke_json
from .malformed import SOURCE, build_corpus


def test_every_malformed_input_is_a_clear_error_or_read_correctly(data_dir, tmp_path):
    corpus = build_corpus(data_dir, tmp_path / "corpus")
    db = tmp_path / "malformed.db"
    stages = invoke_json("run", tmp_path / "corpus", "--db", db)
    with sqlite3.connect(db) as conn:
        errors = dict(conn.execute("select path, reason from read_errors"))
        images = {row[0]: row for row in conn.execute("select path, sha256 from images")}
        judged = {row[0] for row in conn.execute(
            "select i.path from judgments j join images i on i.sha256 = j.image_sha256 where j.status = 'ok'")}
    expected_errors = {name for name, (_, outcome) in corpus.items() if outcome.startswith("error")}
    for name, (path, outcome) in corpus.items():
        if outcome == "read":
            assert str(path) in images and str(path) in judged, name
        else:
            assert errors.get(str(path), "").startswith(outcome[len("error: "):]), (name, errors.get(str(path)))
    assert stages["ingest"]["failed"] == len(expected_errors)
    # the palette, LA, CMYK, 16-bit and GIF files become RGB pictures of the photo's size
    size = load_rgb(data_dir / SOURCE).size
    for name in ("CMYK JPEG", "16-bit PNG", "palette PNG", "LA PNG (grey + alpha)", "animated GIF"):
        picture = load_rgb(corpus[name][0])
        assert picture.mode == "RGB" and picture.size == size, name


def test_exif_orientation_and_first_frame_give_the_photos_own_prediction(data_dir, tmp_path):
    corpus = build_corpus(data_dir, tmp_path / "corpus")
    upright = np.asarray(load_rgb(data_dir / SOURCE), dtype=np.float32)
    rotated = np.asarray(load_rgb(corpus["EXIF-rotated JPEG"][0]), dtype=np.float32)
    assert rotated.shape == upright.shape and np.abs(rotated - upright).mean() < 3  # JPEG noise only
    gif = np.asarray(load_rgb(corpus["animated GIF"][0]), dtype=np.float32)
    flipped = upright[:, ::-1]
    assert np.abs(gif - upright).mean() < np.abs(gif - flipped).mean() / 3  # the first frame, not the second
    db = tmp_path / "p.db"
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "\n".join(str(p) for p in (
        data_dir / SOURCE, corpus["EXIF-rotated JPEG"][0])) + "\n")
    invoke("predict", manifest, "--db", db)
    with sqlite3.connect(db) as conn:
        predictions = conn.execute("select predicted_index, confidence from predictions").fetchall()
    assert len(predictions) == 2 and predictions[0][0] == predictions[1][0]
    assert abs(predictions[0][1] - predictions[1][1]) < 0.05


def test_an_unreadable_file_is_a_stored_reason(data_dir, tmp_path):
    locked = tmp_path / "locked.jpg"
    locked.write_bytes((data_dir / SOURCE).read_bytes())
    locked.chmod(0)
    command = [sys.executable, "-m", "localjudge", "run", str(tmp_path), "--db", str(tmp_path / "l.db"), "--json"]
    if os.geteuid() == 0:
        # root reads any file; without the capabilities that let it (setpriv, util-linux) it reads as others do
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("select path, reason from read_errors").fetchall() == [
            (str(locked), "cannot read file: Permission denied")]


def test_a_checkpoint_that_carries_code_is_refused_before_it_runs(data_dir, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "resnet18.pt"
    torch.save({"fc.weight": torch.zeros(1), "extra": Payload()}, evil)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "zebra.jpg").write_bytes((data_dir / SOURCE).read_bytes())
    result = invoke("predict", folder, "--db", tmp_path / "e.db", "--model", "resnet18", "--weights", evil,
                    expect_ok=False)
    assert result.exit_code == 1
    assert "refused: the file holds pickled Python objects beyond tensors" in result.output
    assert not marker.exists()
