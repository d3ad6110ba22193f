"""The rendering version (saliency.masking.RENDER_VERSION) is in every judgment's key (issue 20): a change to what
turns a stored map into the judge's input must bump it, and a store then keeps its older judgments and judges again
under the new version. The fingerprint below is what each version draws from one real photo and one map; it fails
on any change to the rendering until the version is bumped and the new fingerprint recorded here."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

import numpy as np
from PIL import Image

from localjudge.config import DEFAULTS
from localjudge.judge.vllm_backend import PROCESSOR_SETTINGS
from localjudge.saliency import masking
from localjudge.saliency.masking import RENDER_VERSION, heatmap_image, masked_image, soft_mask, upsample
from localjudge.vision import resolve_card
from localjudge.vision.preprocess import model_view

from .conftest import invoke, invoke_json, seg_photos_manifest

# sha256 of the pictures each version draws (see rendering_fingerprint), and of what the recognizer makes of them
FINGERPRINTS = {1: "8551f39099085033180d21136ec2e8da5ba11df523467566dd95cb7354432c4f"}
RECOGNIZER_FINGERPRINTS = {1: "5625ea9dcb1d216d2b6c6067a7a422794be8b531eabc3d5695eb794beaf7c772"}


def drawn_from(data_dir) -> tuple[Image.Image, np.ndarray]:
    """The model's view of a real photo at the judge's size, and a 7 x 7 map peaking at (2, 4)."""
    card = resolve_card("efficientnet-lite0")
    with open(data_dir / "imagenet-sample" / "labels.csv") as handle:
        first = handle.read().splitlines()[1].split(",")[0]
    photo = Image.open(data_dir / "imagenet-sample" / first).convert("RGB")
    view = model_view(photo, card.preprocessing(), DEFAULTS.judge_image_size)
    y, x = np.mgrid[0:7, 0:7]
    return view, np.exp(-((x - 4.0) ** 2 + (y - 2.0) ** 2) / 4.0).astype(np.float32)


def rendering_fingerprint(data_dir) -> str:
    """The model's view of a real photo at the judge's size, a 7 x 7 map upsampled onto it, its soft mask, the
    masked image and the heatmap overlay (defaults alpha, beta, size), and the VLM processors' pixel caps."""
    view, saliency = drawn_from(data_dir)
    digest = hashlib.sha256()
    for part in (np.asarray(view), upsample(saliency, view.size),
                 soft_mask(upsample(saliency, view.size), DEFAULTS.alpha, DEFAULTS.beta),
                 np.asarray(masked_image(view, saliency, DEFAULTS.alpha, DEFAULTS.beta)),
                 np.asarray(heatmap_image(view, saliency))):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(json.dumps(PROCESSOR_SETTINGS, sort_keys=True).encode())
    return digest.hexdigest()


def recognizer_fingerprint(data_dir) -> str:
    """What the recognizer classifies, drawn from the same view and map by each of its designs (the masked image on
    black or on the normalisation mean, the attended region's crop), as its input tensor (resized and normalised)."""
    from localjudge.judge.base import JudgeRequest
    from localjudge.judge.recognizer import DESIGNS, RecognizerJudge

    view, saliency = drawn_from(data_dir)
    mask = soft_mask(upsample(saliency, view.size), DEFAULTS.alpha, DEFAULTS.beta)
    request = JudgeRequest(image=masked_image(view, saliency, DEFAULTS.alpha, DEFAULTS.beta, mask), label="",
                           prompt="", view=view, mask=mask)
    recognizer = RecognizerJudge(device="cpu", vision_backend="torch")
    digest = hashlib.sha256()
    for design in DESIGNS:
        recognizer.design = design
        digest.update(recognizer._inputs([recognizer._design_image(request)]).numpy().tobytes())
    return digest.hexdigest()


def test_the_rendering_is_the_one_its_version_names(data_dir):
    found = rendering_fingerprint(data_dir)
    assert FINGERPRINTS.get(RENDER_VERSION) == found, (
        f"the judge's input is drawn differently from what RENDER_VERSION {RENDER_VERSION} names: bump "
        f"saliency.masking.RENDER_VERSION and record FINGERPRINTS[{RENDER_VERSION + 1}] = {found!r}")
    found = recognizer_fingerprint(data_dir)
    assert RECOGNIZER_FINGERPRINTS.get(RENDER_VERSION) == found, (
        f"the recognizer's input is drawn differently from what RENDER_VERSION {RENDER_VERSION} names: bump "
        f"saliency.masking.RENDER_VERSION and record RECOGNIZER_FINGERPRINTS[{RENDER_VERSION + 1}] = {found!r}")


def test_a_new_rendering_version_judges_again_and_keeps_the_older_judgments(data_dir, tmp_path, monkeypatch):
    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db = tmp_path / "audit.db"
    invoke("run", manifest, "--db", db)
    before = invoke_json("matrix", "--db", db)["matrices"]
    assert [m["render_version"] for m in before] == [1]
    unchanged = invoke_json("judge", "--db", db)
    assert unchanged["judge"]["computed"] == 0  # the same version: nothing to judge

    monkeypatch.setattr("localjudge.pipeline.RENDER_VERSION", 2)
    output = invoke("run", manifest, "--db", db).stdout
    assert [int(n) for n in re.findall(r"over (\d+) judgments", output)] == [3]  # the new version's, alone
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select render_version, count(*) from judgments group by render_version").fetchall()
        assert rows == [(1, 3), (2, 3)]  # the older judgments are kept
    after = invoke_json("matrix", "--db", db)["matrices"]
    assert sorted(m["render_version"] for m in after) == [1, 2]  # two settings, never one matrix
    assert len({m["setting_key"] for m in after}) == 2
    assert next(m for m in after if m["render_version"] == 1)["setting_key"] == before[0]["setting_key"]
    assert invoke_json("judge", "--db", db)["judge"]["computed"] == 0
    assert masking.RENDER_VERSION == 1  # only the pipeline's view was patched
