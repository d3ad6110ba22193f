"""Ground-truth regions and how attention masks agree with them: known answers on hand-made masks, the model-view
geometry, and every seg-photo scored through the CLI from a mask folder, a manifest column and COCO boxes."""

from __future__ import annotations

import csv
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from localjudge.analysis.regions import attention_mask, boxes_mask, region_scores
from localjudge.vision.preprocess import mask_view

from .conftest import invoke, invoke_json, write_manifest


def test_region_scores_on_hand_made_masks():
    attended = np.zeros((4, 4), bool)
    attended[:, :2] = True  # left half
    truth = np.zeros((4, 4), bool)
    truth[:2, :] = True  # top half: TP 4, FP 4, FN 4, TN 4
    scores = region_scores(attended, truth)
    assert scores["iou"] == pytest.approx(4 / 12)
    assert scores["dice"] == pytest.approx(0.5) and scores["f1"] == pytest.approx(0.5)
    assert scores["pixel_accuracy"] == pytest.approx(0.5)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)

    inside = np.zeros((10, 10), bool)
    inside[2:4, 2:7] = True  # 10 pixels, all inside a 30-pixel object
    obj = np.zeros((10, 10), bool)
    obj[2:5, 0:10] = True
    scores = region_scores(inside, obj)
    assert scores["iou"] == pytest.approx(10 / 30) and scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx(10 / 30) and scores["pixel_accuracy"] == pytest.approx(80 / 100)
    assert scores["dice"] == pytest.approx(2 * 10 / (2 * 10 + 0 + 20)) == pytest.approx(scores["f1"])

    assert region_scores(obj, obj)["iou"] == 1.0
    assert region_scores(~obj, obj)["iou"] == 0.0 and region_scores(~obj, obj)["pixel_accuracy"] == 0.0
    empty = np.zeros((3, 3), bool)
    assert region_scores(empty, empty)["iou"] == 1.0  # nothing to find, nothing claimed
    with pytest.raises(ValueError, match="shapes differ"):
        region_scores(empty, obj)


def test_attention_mask_is_the_map_at_or_above_beta():
    saliency = np.array([[0.1, 0.6], [0.59, 1.0]], np.float32)
    assert attention_mask(saliency, 0.6).tolist() == [[False, True], [False, True]]


def test_boxes_become_their_union():
    mask = boxes_mask([(1, 1, 2, 2), (2, 2, 2, 1), (8, 8, 5, 5)], width=10, height=6)
    assert mask.shape == (6, 10)
    assert mask[1:3, 1:3].all() and mask[2, 2:4].all() and mask.sum() == 4 + 1  # overlap counted once
    assert not mask[:, 8:].any()  # a box outside the image adds nothing


def test_a_region_is_cut_as_the_model_sees_the_image():
    # 300x200 image, object = left half (x < 150). Lite0's view: short side to 256 (scale 1.28, 384x256), centre
    # crop 224 from x = 80: the boundary at 150 * 1.28 = 192 lands at column 112, the middle of the crop.
    region = np.zeros((200, 300), bool)
    region[:, :150] = True
    geometry = {"resize": 256, "crop": 224, "interpolation": "bicubic"}
    view = mask_view(region, geometry)
    assert view.shape == (224, 224)
    assert view[:, :112].all() and not view[:, 112:].any()


@pytest.fixture(scope="module")
def seg_rows(data_dir):
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def seg_db(tmp_path_factory, data_dir, seg_rows):
    """The 70 seg-photos predicted and explained once (no judge needed for region scores)."""
    folder = tmp_path_factory.mktemp("regions")
    manifest = write_manifest(folder / "seg.csv", [
        {"path": str(data_dir / "seg-photos" / r["file"]), "label": r["imagenet_indices"],
         "mask": str(data_dir / "seg-photos" / r["mask"])} for r in seg_rows])
    db = folder / "seg.db"
    invoke("predict", manifest, "--db", db)
    invoke("explain", "--db", db)
    return db, manifest


def region_rows(db) -> dict[str, dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["image_sha256"]: dict(r) for r in conn.execute("select * from region_scores")}


def test_every_seg_photo_is_scored_from_a_mask_folder_and_again_from_a_manifest_column(seg_db, data_dir):
    db, manifest = seg_db
    result = invoke_json("eval", "regions", "--db", db, "--masks", data_dir / "seg-photos" / "masks")
    assert result["stages"]["truth"]["rows"] == 70 and result["stages"]["regions"]["computed"] == 70
    assert result["means"]["maps"] == 70
    scores = region_rows(db)
    assert len(scores) == 70
    for row in scores.values():
        assert 0 <= row["iou"] <= row["dice"] <= 1 and row["dice"] == pytest.approx(row["f1"])
        assert 0 <= row["pixel_accuracy"] <= 1
    means = {m: np.mean([r[m] for r in scores.values()]) for m in ("iou", "dice", "pixel_accuracy", "f1")}
    assert means == pytest.approx({m: result["means"][m] for m in means})
    # Lite0 is a real classifier: what it attends to lies on the object far more often than the object's share of
    # the photo (what a mask placed at random would get). At beta 0.6 it attends to a small core of the object.
    with sqlite3.connect(db) as conn:
        share, = conn.execute("select avg(area_fraction) from ground_truth").fetchone()
    assert np.mean([r["precision"] for r in scores.values()]) > share + 0.2

    # The same masks named in a manifest column: the same regions, so nothing new is stored or scored.
    again = invoke_json("eval", "regions", "--db", db, "--mask-column", "mask", "--manifest", manifest)
    assert again["stages"]["truth"]["rows"] == 70 and again["stages"]["truth"]["computed"] == 0
    assert again["stages"]["regions"]["computed"] == 0 and again["means"] == result["means"]
    # Another beta is another score of the same maps.
    other = invoke_json("eval", "regions", "--db", db, "--masks", data_dir / "seg-photos" / "masks", "--beta", "0.4")
    assert other["stages"]["regions"]["computed"] == 70
    assert other["means"]["iou"] != result["means"]["iou"]


def test_a_stored_score_equals_one_computed_by_hand(seg_db, data_dir):
    db, _ = seg_db
    invoke("eval", "regions", "--db", db, "--masks", data_dir / "seg-photos" / "masks")
    from localjudge.store import Store, unpack_array

    store = Store(db)
    score = next(iter(store.query("select * from region_scores where beta = 0.6 limit 1")))
    saliency = store.saliency_maps([score["saliency_id"]])[0]
    prediction = store.predictions([saliency["prediction_id"]])[0]
    image = store.images([score["image_sha256"]])[0]
    from pathlib import Path

    mask_file = data_dir / "seg-photos" / "masks" / (Path(image["path"]).stem + ".png")
    truth = np.asarray(Image.open(mask_file).convert("L")) > 0
    view = mask_view(truth, json.loads(prediction["preprocessing"]), saliency["width"])
    expected = region_scores(unpack_array(saliency["map"], (saliency["height"], saliency["width"])) >= 0.6, view)
    assert {k: score[k] for k in expected} == pytest.approx(expected)
    store.close()


def test_boxes_and_bad_masks(tmp_path, data_dir):
    """TBX11K boxes name images by their own folder (tb/tb0005.png): matched by unique base name. A mask of the
    wrong size and an unreadable mask are reported by file and reason; the other images are scored."""
    xray = data_dir / "chest-xray"
    rows = [{"path": str(xray / name), "label": ""} for name in ("tb0005.png", "tb0007.png", "h0001.png")]
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (7, 7), 255).save(masks / "tb0005.png")  # wrong size
    (masks / "tb0007.png").write_bytes(b"not a png")
    with Image.open(xray / "h0001.png") as image:
        Image.new("L", image.size, 255).save(masks / "h0001.png")
    manifest = write_manifest(tmp_path / "xray.csv", rows)
    db = tmp_path / "xray.db"
    invoke("predict", manifest, "--db", db)
    invoke("explain", "--db", db)

    boxes = invoke_json("eval", "regions", "--db", db, "--boxes", xray / "TBX11K_train.json")
    assert boxes["stages"]["truth"]["rows"] == 3 and boxes["stages"]["regions"]["computed"] == 3
    with sqlite3.connect(db) as conn:
        areas = dict(conn.execute("select reference, area_fraction from ground_truth where source = 'boxes'"))
    tb5, tb7, healthy = (areas[f"{xray / 'TBX11K_train.json'}#{name}"]
                         for name in ("tb/tb0005.png", "tb/tb0007.png", "health/h0001.png"))
    assert tb5 == pytest.approx(41 * 45 / 512 ** 2, rel=0.1) and 0 < tb7 < 0.2
    assert healthy == 0  # a healthy radiograph: listed, with no box

    result = invoke("eval", "regions", "--db", db, "--masks", masks, expect_ok=True)
    assert "tb0005.png: mask is 7x7" in result.output and "tb0007.png" in result.output
    with sqlite3.connect(db) as conn:
        whole = conn.execute("select g.area_fraction, r.precision, r.recall, r.attended_fraction from ground_truth g "
                             "join region_scores r on r.mask_sha256 = g.mask_sha256 where g.source = 'masks'").fetchall()
    # The whole image is the object: everything attended is on it, and recall is the share attended.
    assert len(whole) == 1
    area, precision, recall, attended = whole[0]
    assert area == 1.0 and precision == 1.0 and recall == pytest.approx(attended)


def test_run_scores_regions_and_records_their_source(tmp_path, data_dir, seg_rows, tiny_vlms_bpe512):
    manifest = write_manifest(tmp_path / "three.csv", [
        {"path": str(data_dir / "seg-photos" / r["file"]), "label": r["imagenet_indices"]} for r in seg_rows[:3]])
    db = tmp_path / "run.db"
    masks = data_dir / "seg-photos" / "masks"
    result = invoke_json("run", manifest, "--db", db, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--max-new-tokens", "64",
                         "--masks", masks)
    assert result["truth"]["computed"] == 3 and result["regions"]["computed"] == 3
    with sqlite3.connect(db) as conn:
        config, = conn.execute("select config from runs where command = 'run'").fetchone()
    assert json.loads(config)["masks"] == str(masks)


def test_mask_files_palette_void_jpeg_noise_and_binary(tmp_path):
    from localjudge.ground_truth import read_mask_file

    palette = Image.new("P", (4, 1))
    palette.putdata([0, 15, 255, 3])  # background, a class, VOC's void border, another class
    palette.putpalette(list(range(256)) * 3)  # a full palette, as VOC's masks have (else PNG shrinks it)
    palette.save(tmp_path / "voc.png")
    assert read_mask_file(tmp_path / "voc.png", (4, 1)).tolist() == [[False, True, False, True]]
    noisy = Image.new("L", (4, 1))
    noisy.putdata([0, 3, 200, 255])  # JPEG ringing next to a 0/255 mask
    noisy.save(tmp_path / "noisy.png")
    assert read_mask_file(tmp_path / "noisy.png", (4, 1)).tolist() == [[False, False, True, True]]
    binary = Image.new("L", (3, 1))
    binary.putdata([0, 1, 1])
    binary.save(tmp_path / "binary.png")
    assert read_mask_file(tmp_path / "binary.png", (3, 1)).tolist() == [[False, True, True]]


def test_masks_follow_exif_orientation_and_ambiguous_names_are_refused(tmp_path, data_dir):
    from localjudge.ground_truth import from_mask_folder

    source = Image.open(data_dir / "seg-photos" / "images" / "voc_2007_000042.jpg").convert("RGB").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source.save(tmp_path / "a" / "photo.jpg", exif=exif)
    source.save(tmp_path / "b" / "other.jpg")
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (200, 300), 255).save(masks / "photo.png")  # drawn on the portrait picture
    Image.new("L", (300, 200), 255).save(masks / "other.png")
    images = [{"sha256": "p", "path": str(tmp_path / "a" / "photo.jpg"), "width": 300, "height": 200},
              {"sha256": "o", "path": str(tmp_path / "b" / "other.jpg"), "width": 300, "height": 200}]
    found = from_mask_folder(masks, images)
    assert found[("p", "")].mask.shape == (300, 200) and found[("o", "")].mask.shape == (200, 300)
    twins = images + [{"sha256": "t", "path": str(tmp_path / "b" / "photo.jpg"), "width": 300, "height": 200}]
    refused = from_mask_folder(masks, twins)
    assert "2 images are named 'photo'" in refused[("p", "")].reason and "2 images" in refused[("t", "")].reason


def test_mask_column_needs_a_manifest_and_the_recognizer_needs_masked_images(tmp_path, data_dir):
    folder = data_dir / "seg-photos" / "images"
    result = invoke("run", folder, "--db", tmp_path / "x.db", "--mask-column", "mask", expect_ok=False)
    assert result.exit_code == 2 and "--mask-column reads the CSV manifest" in result.output
    result = invoke("run", folder, "--db", tmp_path / "x.db", "--mask-label-column", "finding", expect_ok=False)
    assert result.exit_code == 2 and "--mask-label-column names the class" in result.output
    result = invoke("judge", "--db", tmp_path / "y.db", "--image-mode", "heatmap", expect_ok=False)
    assert result.exit_code != 0 and "recognizer judge reads the masked image" in result.output


def test_coco_categories_are_regions_of_their_own(data_dir):
    """TBX11K's boxes have categories: each image's union of boxes (label '') and each category's boxes under its
    name; a healthy radiograph has only its empty union."""
    from localjudge.ground_truth import from_coco_boxes

    xray = data_dir / "chest-xray"
    images = [{"sha256": name, "path": str(xray / name), "width": 512, "height": 512}
              for name in ("tb0005.png", "tb0007.png", "h0001.png")]
    found = from_coco_boxes(xray / "TBX11K_train.json", images)
    assert set(found) == {("tb0005.png", ""), ("tb0005.png", "ActiveTuberculosis"), ("tb0007.png", ""),
                          ("tb0007.png", "ObsoletePulmonaryTuberculosis"), ("h0001.png", "")}
    assert found[("tb0005.png", "ActiveTuberculosis")].label == "ActiveTuberculosis"
    assert (found[("tb0005.png", "")].mask == found[("tb0005.png", "ActiveTuberculosis")].mask).all()
    assert not found[("h0001.png", "")].mask.any()


def test_a_map_is_measured_against_its_own_findings_region():
    """Known answers of ground_truth.region_of_map: the target's own region (case aside); the image's object region
    for a single-label map, or for a finding that is the image's only label; nothing for another finding."""
    from localjudge.ground_truth import region_of_map

    regions = {"": "object", "Horse": "horse"}
    assert region_of_map(regions, {"target_label": "horse", "finding": 1, "target_index": 3}, [3, 5]) == "horse"
    assert region_of_map(regions, {"target_label": "person", "finding": 1, "target_index": 5}, [3, 5]) is None
    assert region_of_map(regions, {"target_label": "person", "finding": 0, "target_index": 5}, [5]) == "object"
    assert region_of_map(regions, {"target_label": "sorrel", "finding": None, "target_index": 339}, None) == "object"
    assert region_of_map({"Horse": "horse"}, {"target_label": "sorrel", "finding": None, "target_index": 339},
                         [339]) is None
