from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from localjudge.analysis import attention_matrix
from localjudge.saliency import heatmap_image, masked_image, soft_mask
from localjudge.store import pack_array, unpack_array


def test_soft_mask_is_the_papers_sigmoid():
    v = np.array([0.0, 0.6, 1.0], dtype=np.float32)
    mask = soft_mask(v, alpha=15, beta=0.6)
    expected = 1 / (1 + np.exp(15 * (0.6 - v)))
    assert np.allclose(mask, expected, atol=1e-6)
    assert mask[1] == pytest.approx(0.5) and mask[0] < 2e-4 and mask[2] > 0.997


def test_masked_image_blacks_out_what_the_model_ignored():
    image = Image.new("RGB", (64, 64), (200, 100, 50))
    saliency = np.zeros((8, 8), dtype=np.float32)
    saliency[:, 4:] = 1.0  # the model looked at the right half only
    masked = np.asarray(masked_image(image, saliency, alpha=15, beta=0.6))
    assert masked.shape == (64, 64, 3)
    assert masked[:, :24].max() == 0  # far left: black
    assert np.array_equal(masked[:, 44:][0, 0], [200, 100, 50])  # far right: untouched


def test_heatmap_overlay_has_the_image_size_and_warm_colours_where_attended():
    image = Image.new("RGB", (40, 30), (128, 128, 128))
    saliency = np.zeros((30, 40), dtype=np.float32)
    saliency[:, 20:] = 1.0
    overlay = np.asarray(heatmap_image(image, saliency)).astype(int)
    assert overlay.shape == (30, 40, 3)
    assert overlay[15, 35, 0] > overlay[15, 35, 2]  # red over blue where attended
    assert overlay[15, 5, 2] > overlay[15, 5, 0]  # blue over red where ignored


def test_heatmap_overlay_is_pytorch_grad_cams_pixel_for_pixel(data_dir):
    """Drawn without torch, but the same picture pytorch-grad-cam's show_cam_on_image draws (what the judge of a
    heatmap view has always been shown)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from localjudge.data import load_rgb
    from localjudge.saliency.masking import upsample

    image = load_rgb(data_dir / "seg-photos" / "images" / "coco_000000000009.jpg")
    saliency = np.random.default_rng(1).random((7, 7), dtype=np.float32)
    for weight in (0.5, 0.3):
        expected = show_cam_on_image(np.asarray(image, dtype=np.float32) / 255, upsample(saliency, image.size),
                                     use_rgb=True, image_weight=weight)
        assert np.array_equal(np.asarray(heatmap_image(image, saliency, weight)), expected)


def test_maps_survive_float16_compression():
    saliency = np.random.default_rng(0).random((224, 224), dtype=np.float32)
    restored = unpack_array(pack_array(saliency), saliency.shape)
    assert np.abs(restored - saliency).max() < 1e-3


def test_matrix_quadrants_threshold_and_unlabelled():
    correct = np.array([1, 1, 0, 0, 1, np.nan])
    scores = np.array([5, 1, 3, 0, 3, 4])
    m = attention_matrix(correct, scores, threshold=3)
    assert m["counts"] == {"CH": 2, "CL": 1, "WH": 1, "WL": 1}
    assert m["unlabelled"] == {"high": 1, "low": 0}
    assert m["judgments"] == 6 and m["average_score"] == pytest.approx(16 / 6)
    assert m["percent"]["CH"] == pytest.approx(40.0)
    stricter = attention_matrix(correct, scores, threshold=4)
    assert stricter["counts"] == {"CH": 1, "CL": 2, "WH": 0, "WL": 2}


def test_matrix_of_nothing():
    m = attention_matrix(np.array([]), np.array([]))
    assert m["counts"] == {"CH": 0, "CL": 0, "WH": 0, "WL": 0} and m["average_score"] is None
