"""Every registered model builds from its card, predicts, and gives CAM maps at its input resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from localjudge.data import load_rgb
from localjudge.saliency.engine import CamEngine
from localjudge.vision import list_cards, load_card, main_class, open_model
from localjudge.vision.preprocess import model_view, to_tensor

CLASSIFIERS = [c.name for c in list_cards() if c.task == "classification"]
SEGMENTERS = [c.name for c in list_cards() if c.task == "segmentation"]


@pytest.fixture(scope="module")
def photos(data_dir):
    folder = data_dir / "seg-photos" / "images"
    return [load_rgb(folder / name) for name in ("coco_000000000009.jpg", "voc_2007_000063.jpg")]


def small_card(name: str, tmp_path, side: int = 160):
    """A registered segmentation card at a smaller input size, so CPU tests stay quick."""
    card = load_card(name)
    fields = {k: v for k, v in card.__dict__.items() if k != "card_path"}
    fields.update(resize=side, crop=side, input_size=side,
                  labels=str((Path(card.card_path).parent / card.labels).resolve()))
    path = tmp_path / f"{name}-{side}.json"
    path.write_text(json.dumps(fields))
    return load_card(str(path))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_predicts_and_explains(name, photos):
    card = load_card(name)
    model = open_model(card, None, "cpu")
    batch = to_tensor(photos, card)
    assert tuple(batch.shape) == (2, 3, card.crop, card.crop)
    probs = model.predict(batch)
    assert probs.shape == (2, 1000) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    with CamEngine("gradcam", model) as cam:
        maps = cam.compute(batch, probs.argmax(axis=1).tolist())
    assert maps.shape == (2, card.crop, card.crop) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_predicts_its_main_class_and_explains_it(name, photos, tmp_path):
    card = small_card(name, tmp_path)
    model = open_model(card, None, "cpu")
    batch = to_tensor(photos, card)
    shares = model.predict(batch)
    assert shares.shape == (2, 21) and np.allclose(shares.sum(axis=1), 1.0, atol=1e-5)
    targets = [main_class(s, "segmentation") for s in shares]
    assert all(t != 0 or s[1:].sum() == 0 for t, s in zip(targets, shares))  # background only if nothing else
    with CamEngine("gradcam", model) as cam:
        maps = cam.compute(batch, targets)
    assert maps.shape == (2, 160, 160) and 0.0 <= maps.min() and maps.max() <= 1.0


def test_main_class_ignores_background():
    assert main_class(np.array([0.7, 0.1, 0.2]), "segmentation") == 2
    assert main_class(np.array([1.0, 0.0, 0.0]), "segmentation") == 0
    assert main_class(np.array([0.7, 0.1, 0.2]), "classification") == 0


def test_embedded_model_attends_somewhere_in_particular(photos):
    card = load_card("efficientnet-lite0")
    model = open_model(card, None, "cpu")
    batch = to_tensor(photos, card)
    with CamEngine("gradcam", model) as cam:
        maps = cam.compute(batch, model.predict(batch).argmax(axis=1).tolist())
    for saliency in maps:
        assert saliency.max() == pytest.approx(1.0, abs=1e-3) and 0.0 < saliency.mean() < 0.8


def test_judge_view_is_the_model_crop_at_another_size(photos):
    geometry = load_card("efficientnet-lite0").preprocessing()
    small = np.asarray(model_view(photos[0], geometry), dtype=np.float32)
    large = model_view(photos[0], geometry, side=448)
    assert small.shape == (224, 224, 3) and large.size == (448, 448)
    # The same crop: the large view shrunk back matches the model's view closely.
    shrunk = np.asarray(large.resize((224, 224)), dtype=np.float32)
    assert np.abs(shrunk - small).mean() < 6.0


def test_inputs_are_normalised_by_the_cards_mean_and_std_by_hand():
    """(x / 255 - mean) / std per channel, from uint8 pixels in (batch, height, width, RGB) into (batch, RGB, height,
    width): known answers for black and white, and the same float32 values as the numpy expression it replaced."""
    import numpy as np

    from localjudge.vision.preprocess import normalised_batch

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.zeros((1, 1, 2, 3), np.uint8)
    pixels[0, 0, 1] = 255
    batch = normalised_batch(pixels, mean, std)
    assert batch.shape == (1, 3, 1, 2) and batch.is_contiguous()
    for channel in range(3):
        assert abs(float(batch[0, channel, 0, 0]) - (0 - mean[channel]) / std[channel]) < 1e-6
        assert abs(float(batch[0, channel, 0, 1]) - (1 - mean[channel]) / std[channel]) < 1e-6
    random = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    numpy_way = (random.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    assert np.array_equal(normalised_batch(random, mean, std).permute(0, 2, 3, 1).numpy(), numpy_way)
