"""Labels as every model's predictions read them (issue 20): a corrected label re-marks every model's predictions,
cleanlab reads all of an image's labels, and stored probabilities are of one version of a model."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from localjudge.analysis.label_issues import given_labels
from localjudge.queries import stored_probabilities
from localjudge.store import Store, unpack_array

from .conftest import invoke_json, seg_photos_manifest, write_manifest


def test_the_label_cleanlab_reads_is_the_likeliest_of_an_images_labels():
    probs = np.array([[0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.7],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.1],
                      [0.0, 0.5, 0.4, 0.0, 0.0, 0.0, 0.0, 0.1]])
    # by hand: 7 beats 3 in the first row, 5 is the second's only label, 1 beats 2 in the third
    assert given_labels([[3, 7], [5], [2, 1]], probs).tolist() == [7, 5, 1]


def test_a_corrected_label_re_marks_every_models_predictions_and_probabilities_are_of_one_version(data_dir,
                                                                                                     tmp_path):
    manifest = seg_photos_manifest(data_dir, tmp_path / "four.csv", 4)
    db = tmp_path / "labels.db"
    invoke_json("predict", manifest, "--db", db)  # EfficientNet-Lite0 on ONNX Runtime
    invoke_json("predict", manifest, "--db", db, "--model", "efficientnet-lite1", "--backend", "torch")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select path, label from images").fetchall()
    # every image relabelled as class 0 (tench), read again by Lite0 only
    write_manifest(tmp_path / "relabelled.csv", [{"path": path, "label": "0"} for path, _ in rows])
    invoke_json("predict", tmp_path / "relabelled.csv", "--db", db)
    with sqlite3.connect(db) as conn:
        found = conn.execute("select model, label_indices, correct, predicted_index from predictions").fetchall()
    assert {model for model, *_ in found} == {"efficientnet-lite0", "efficientnet-lite1"} and len(found) == 8
    for model, label_indices, correct, predicted in found:  # Lite1's too, which did not read the new labels
        assert json.loads(label_indices) == [0] and correct == int(predicted == 0), model

    invoke_json("predict", manifest, "--db", db, "--model", "efficientnet-lite1", "--backend", "onnx")
    store = Store(db)
    shas = [r["sha256"] for r in store.images()]
    with pytest.raises(ValueError, match="2 versions of efficientnet-lite1"):
        stored_probabilities(store, shas, "efficientnet-lite1")
    on_torch = stored_probabilities(store, shas, "efficientnet-lite1", "sha256:")
    expected = {r["image_sha256"]: unpack_array(r["probs"], (-1,), np.float32) for r in store.query(
        "select image_sha256, probs from predictions where model = 'efficientnet-lite1' and backend = 'torch'")}
    assert np.array_equal(on_torch, np.stack([expected[sha] for sha in shas]))
    store.close()
