"""Faithfulness metrics: known answers on small tensors, and equality with the reference implementations (torchcam's
DeletionInsertionMetric, pytorch-grad-cam's confidence metrics) on 10 real images, from the maps and model of a run."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from localjudge.analysis.faithfulness import (aopc, area, confidence_change, curves, perturbed_inputs, relevance_ranks,
                                              step_counts)
from localjudge.data import load_rgb
from localjudge.store import Store, unpack_array
from localjudge.testing.torchcam_reference import StoredMaps
from localjudge.vision import open_model, resolve_card
from localjudge.vision.preprocess import to_tensor

from .conftest import invoke, invoke_json, write_manifest


def test_step_counts_follow_torchcam():
    assert step_counts(10, 4) == [0, 3, 6, 9, 10]
    assert step_counts(8, 4) == [0, 2, 4, 6, 8]
    assert step_counts(3, 20) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        step_counts(10, 0)


def test_perturbed_inputs_remove_and_restore_the_most_relevant_positions_first():
    image = torch.arange(1, 5, dtype=torch.float32).view(1, 2, 2)  # positions 0..3 hold 1..4
    baseline = torch.zeros_like(image)
    saliency = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])  # order: position 1, 2, 3, 0
    ranks = relevance_ranks(saliency)[0]
    assert ranks.tolist() == [3, 0, 1, 2]
    stacked = perturbed_inputs(image, baseline, ranks, [0, 1, 2, 3, 4])
    flat = stacked.flatten(1).tolist()
    assert flat[:3] == [[1, 0, 3, 4], [1, 0, 0, 4], [1, 0, 0, 0]]  # deletion after 1, 2, 3 positions
    assert flat[3:6] == [[0, 2, 0, 0], [0, 2, 3, 0], [0, 2, 3, 4]]  # insertion of 1, 2, 3 positions
    assert flat[6] == [0, 0, 0, 0]  # all baseline


def test_curves_areas_and_aopc_on_known_scores():
    counts = [0, 1, 2, 3, 4]
    # Scores of perturbed_inputs' rows: deletion 0.6, 0.3, 0.1; insertion 0.2, 0.5, 0.7; all-baseline 0.0.
    deletion, insertion = curves(0.8, np.array([0.6, 0.3, 0.1, 0.2, 0.5, 0.7, 0.0]), len(counts))
    assert deletion.tolist() == [0.8, 0.6, 0.3, 0.1, 0.0]
    assert insertion.tolist() == [0.0, 0.2, 0.5, 0.7, 0.8]
    assert area(deletion, counts) == pytest.approx((0.8 + 0.6) / 8 + (0.6 + 0.3) / 8 + (0.3 + 0.1) / 8 + 0.1 / 8)
    assert aopc(deletion) == pytest.approx(np.mean([0, 0.2, 0.5, 0.7, 0.8]))
    assert confidence_change(0.8, 0.6) == (pytest.approx(0.25), 0.0)
    assert confidence_change(0.5, 0.7) == (0.0, 1.0)


IMAGES = 10  # each image is 2 x 20 perturbed forwards in ours and in each reference: the suite's time


@pytest.fixture(scope="module")
def ten(tmp_path_factory, data_dir):
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:IMAGES]
    folder = tmp_path_factory.mktemp("faithfulness")
    manifest = write_manifest(folder / "ten.csv", [
        {"path": str(data_dir / "imagenet-sample" / r["file"]), "label": r["imagenet_index"]} for r in rows])
    db = folder / "ten.db"
    invoke("predict", manifest, "--db", db)
    invoke("explain", "--db", db)
    result = invoke_json("eval", "faithfulness", "--db", db)
    return db, result


def test_faithfulness_equals_torchcam_and_pytorch_grad_cam_on_10_real_images(ten):
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchcam.metrics import DeletionInsertionMetric

    db, result = ten
    assert result["faithfulness"]["computed"] == IMAGES and result["means"]["maps"] == IMAGES
    store = Store(db)
    rows = list(store.query("select * from faithfulness order by image_sha256"))
    maps = {m["id"]: m for m in store.saliency_maps([r["saliency_id"] for r in rows])}
    paths = {i["sha256"]: i["path"] for i in store.images([r["image_sha256"] for r in rows])}
    card = resolve_card("efficientnet-lite0")
    module = open_model(card, None, "cpu", "torch").module.eval()
    inputs = to_tensor([load_rgb(Path(paths[r["image_sha256"]])) for r in rows], card)
    saliency = torch.stack([torch.from_numpy(unpack_array(maps[r["saliency_id"]]["map"],
                                                          (maps[r["saliency_id"]]["height"],
                                                           maps[r["saliency_id"]]["width"]))) for r in rows])
    targets = [r["target_index"] for r in rows]

    for index, row in enumerate(rows):
        reference = DeletionInsertionMetric(StoredMaps(module, saliency[index:index + 1]),
                                            partial(torch.softmax, dim=-1), steps=20, batch_size=32)
        reference.update(inputs[index:index + 1], class_idx=[targets[index]])
        assert row["deletion_auc"] == pytest.approx(reference.deletion, abs=1e-4)
        assert row["insertion_auc"] == pytest.approx(reference.insertion, abs=1e-4)
        deletion = json.loads(row["deletion_curve"])
        # the stored curve is rounded to 7 decimals; the AOPC is computed before rounding
        assert len(deletion) == 21
        assert row["aopc"] == pytest.approx(np.mean(deletion[0] - np.asarray(deletion)), abs=1e-6)

    softmax_targets = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    drops = DropInConfidence()(inputs, saliency.numpy(), softmax_targets, module)  # max(0, Y - O), per image
    increases = IncreaseInConfidence()(inputs, saliency.numpy(), softmax_targets, module)
    ours_drop = np.array([r["average_drop"] * r["original_score"] for r in rows])
    assert ours_drop == pytest.approx(drops.ravel(), abs=1e-4)
    assert [r["increase_in_confidence"] for r in rows] == increases.ravel().tolist()
    # A real classifier's Grad-CAM is faithful: removing what it marks hurts far more than adding it back helps.
    assert np.mean([r["deletion_auc"] for r in rows]) < np.mean([r["insertion_auc"] for r in rows])
    store.close()


def test_faithfulness_is_stored_once_per_setting(ten):
    db, first = ten
    again = invoke_json("eval", "faithfulness", "--db", db)
    assert again["faithfulness"]["computed"] == 0 and not again["faithfulness"]["model_loaded"]
    assert again["means"] == first["means"]
    black = invoke_json("eval", "faithfulness", "--db", db, "--baseline", "black", "--steps", "10")
    assert black["faithfulness"]["computed"] == IMAGES and black["means"] != first["means"]
    store = Store(db)
    steps = {r["steps"]: r["baseline"] for r in store.query("select distinct steps, baseline from faithfulness")}
    run = json.loads(next(iter(store.query("select config from runs order by started_at desc, rowid desc limit 1")))
                     ["config"])
    store.close()
    assert steps == {20: "zeros", 10: "black"}
    assert run["faithfulness_steps"] == 10 and run["faithfulness_baseline"] == "black"
