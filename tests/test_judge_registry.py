"""The judge registry. Each backend's identity and decoding parameters feed every judgment's key: they are pinned
here with the values the code gave before the registry existed (commit bae1912 pinned them through the old code
paths), so a store made before it still finds its judgments."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from localjudge.config import DEFAULTS
from localjudge.judge import JUDGES
from localjudge.pipeline import open_audit
from localjudge.store import content_key, sha256_file

SCHEMA = "32bc0df3d3ee8753"  # the first 16 hex of the judgment schema's sha256
DECODING = {
    "transformers": {"backend": "transformers", "image_placeholders": "suppressed", "max_new_tokens": 512,
                     "schema": SCHEMA, "structured_output": "xgrammar-json-schema", "temperature": 0.0},
    "vllm": {"backend": "vllm", "max_new_tokens": 512, "schema": SCHEMA, "structured_output": "xgrammar-json-schema",
             "temperature": 0.0},
    "openai": {"backend": "openai", "max_new_tokens": 512, "schema": SCHEMA,
               "structured_output": "response-format-json-schema", "temperature": 0.0},
    # the default design, crop, is named in the key (black, the first, is not: judgments made before keep theirs)
    "recognizer": {"backend": "recognizer", "model": "efficientnet-lite2", "siblings": "81a1e17d569b851a",
                   "thresholds": [[0.5, 5], [0.25, 4], [0.1, 3], [0.03, 2], [0.01, 1]], "design": "crop"},
}
# A model directory whose files are known, so its hash is too.
VLM_HASH = "sha256:aa1864d62ddb2fef06ce53084aaee81bb8bdd9982945624a7cf4fc406a9147db"
IDENTITY = {
    "transformers": ("vlm", VLM_HASH),
    "vllm": ("vlm", VLM_HASH),
    "openai": ("qwen-tiny", "served:490588043759c7a8400370fc26cfc0ed"),
    "openai+vlm": ("qwen-tiny", "served:1fe4b31cd84591a5b7fa0f16e3d118dc"),
    # content_key("recognizer", EfficientNet-Lite2's weights hash): the recognizer on torch, its identity since it began
    "recognizer": ("recognizer:efficientnet-lite2", "59562f67dc67c6f3538d2b537344ac19"),
}


def recognizer_on_onnx() -> tuple[str, str]:
    """The recognizer on ONNX Runtime (the default backend where it is installed, as here): another judge for the
    store, named by the same weights and the exported graph's own sha256 (which depends on the exporter's version:
    read from the cached graph's file here, not written down). The identity's form is written out here on purpose,
    as IDENTITY's are: it is part of every judgment key, so a change to it (which would judge every store again)
    must fail this test. That the graph's bytes are what it names is tested apart: a tampered cached graph is
    caught and exported again (test_onnx_cli), and the torch recognizer is another judge (below)."""
    from localjudge.vision import exported_card, resolve_card

    card = resolve_card("efficientnet-lite2")
    weights = "sha256:" + card.weights_sha256
    graph = Path(exported_card(card, None, weights).card_path).with_suffix(".onnx")
    return ("recognizer:efficientnet-lite2",
            content_key("recognizer", f"localjudge-onnx-v1:{weights}:graph-sha256:{sha256_file(graph)}"))


@pytest.fixture
def known_vlm(tmp_path) -> Path:
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("a document: not part of the identity")
    return folder


def configured(name: str, vlm: Path) -> dict:
    server = {"base_url": "http://127.0.0.1:9/v1", "api_model": "served/qwen-tiny"}  # never contacted
    return {"transformers": {"judge": "transformers", "vlm": str(vlm)}, "vllm": {"judge": "vllm", "vlm": str(vlm)},
            "openai": {"judge": "openai", **server}, "openai+vlm": {"judge": "openai", "vlm": str(vlm), **server},
            "recognizer": {"judge": "recognizer"}}[name]


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_each_backend_keeps_its_identity(name, known_vlm, tmp_path):
    given = configured(name, known_vlm)
    found = JUDGES[given["judge"]].identity(DEFAULTS.replace(**given), sha256_file)
    assert (found.name, found.hash) == IDENTITY[name]
    # and an audit keys its judgments by it, on the backend it settles on
    audit = open_audit(tmp_path / "identity.db", None, ("judge",), **given)
    expected = recognizer_on_onnx() if name == "recognizer" and audit.config.backend == "onnx" else IDENTITY[name]
    assert (audit.judge_name(), audit.judge_hash()) == expected
    audit.store.close()
    torch_audit = open_audit(tmp_path / "torch.db", None, ("judge",), **given, backend="torch")
    assert (torch_audit.judge_name(), torch_audit.judge_hash()) == IDENTITY[name]
    if name == "recognizer" and audit.config.backend == "onnx":  # the two engines are two judges of one store
        assert torch_audit.judge_hash() != expected[1]
    torch_audit.store.close()


@pytest.mark.parametrize("name", sorted(DECODING))
def test_each_backend_keeps_its_decoding_parameters(name, tmp_path):
    decoding = JUDGES[name].decoding(DEFAULTS.replace(max_new_tokens=512, temperature=0.0))
    assert json.loads(json.dumps(decoding)) == DECODING[name]


def test_sampling_is_part_of_the_transformers_decoding():
    decoding = JUDGES["transformers"].decoding(DEFAULTS.replace(max_new_tokens=64, temperature=0.7))
    assert decoding == {**DECODING["transformers"], "max_new_tokens": 64, "temperature": 0.7,
                        "sampling": "temperature, no top-k/top-p"}


def test_the_registry_holds_every_backend_in_the_order_the_cli_offers_them():
    from localjudge.judge import JUDGE_CHOICES

    assert JUDGE_CHOICES == ("auto", "transformers", "vllm", "openai", "recognizer")
    assert all(spec.name == name for name, spec in JUDGES.items())


# --- every backend through its real path (vLLM through the named stand-in, where vLLM cannot run) ---------------
@pytest.fixture(scope="module")
def two_requests(data_dir):
    """Two real photos as a judge sees them: masked by a map that keeps their centre, with the rubric prompt."""
    import numpy as np

    from localjudge.data import load_rgb
    from localjudge.judge import JudgeRequest
    from localjudge.judge.prompts import prompt_template, render
    from localjudge.saliency import judge_view

    saliency = np.zeros((7, 7), dtype=np.float32)
    saliency[2:5, 2:5] = 1.0
    geometry = {"resize": 256, "crop": 224, "interpolation": "bilinear"}
    requests = []
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        for row in list(csv.DictReader(handle))[:2]:
            index = int(row["imagenet_indices"].split(";")[0])
            image = judge_view(load_rgb(data_dir / "seg-photos" / row["file"]), geometry, saliency, "masked", 15.0,
                               0.6, 448)
            requests.append(JudgeRequest(image=image, label=row["class_name"], label_index=index,
                                         prompt=render(prompt_template("masked"), row["class_name"])))
    return requests


@pytest.fixture
def backend_settings(request, tiny_vlms, monkeypatch):
    """What each backend needs to open: a tiny VLM directory, the vLLM stand-in, a loopback server."""
    name = request.param
    server = None
    if name == "vllm":
        from . import vllm_standin

        for module_name, module in vllm_standin.modules().items():
            monkeypatch.setitem(sys.modules, module_name, module)
    if name == "openai":
        from .model_server import ScriptedServer

        server = ScriptedServer(lists_models=True)
    given = {"transformers": {"vlm": str(tiny_vlms["qwen2_5_vl"])}, "vllm": {"vlm": str(tiny_vlms["qwen2_5_vl"])},
             "openai": {"base_url": server.url if server else None}, "recognizer": {}}[name]
    yield name, {"judge": name, "device": "cpu", "max_new_tokens": 1024, **given}
    if server is not None:
        server.shutdown()


@pytest.mark.parametrize("backend_settings", sorted(JUDGES), indirect=True)
def test_every_backend_opens_judges_two_images_and_closes(backend_settings, two_requests):
    from localjudge.judge import imagenet_labels, parse_answer

    name, given = backend_settings
    spec = JUDGES[name]
    config = DEFAULTS.replace(**given)
    spec.check(config, list(imagenet_labels()))
    identity = spec.identity(config, sha256_file)
    assert identity.name and identity.hash
    judge = spec.open(config, identity)
    try:
        assert judge.backend == name
        outputs = judge.judge(two_requests)
    finally:
        judge.close()
    assert len(outputs) == 2
    for output in outputs:
        assert output.error is None and output.raw_text
        # a finished answer was written under the schema (or templated): it parses
        assert parse_answer(output.raw_text).ok or not output.finished
    assert any(output.finished and parse_answer(output.raw_text).ok for output in outputs)
    if name == "recognizer":  # the visible centre of a real photo: scored from measured probabilities
        assert all(0 <= parse_answer(o.raw_text).score <= 5 for o in outputs)


def test_judgment_keys_hold_exactly_what_shapes_the_judges_input(known_vlm, tmp_path, monkeypatch):
    """alpha and beta only where the judge sees the soft mask, the prompt only for a judge that reads one, the
    rendering's version from version 2 on (issue 20)."""
    def key(**given) -> str:
        audit = open_audit(tmp_path / "keys.db", None, ("judge",), **given)
        try:
            return audit.judgment_keys(["a-map"])["a-map"]
        finally:
            audit.store.close()

    vlm = {"judge": "transformers", "vlm": str(known_vlm)}
    masked = key(**vlm)
    audit = open_audit(tmp_path / "keys.db", None, ("judge",), **vlm)
    _, template_hash, decoding = audit.judgment_key_parts()
    audit.store.close()
    # a VLM shown the masked image: the key its judgments had before (a store's judgments stay valid)
    assert masked == content_key("judgment", "a-map", 15.0, 0.6, "masked", VLM_HASH, template_hash, decoding, 448,
                                 "photo")
    assert len({masked, key(**vlm, alpha=25.0), key(**vlm, beta=0.4), key(**vlm, prompt_style="concise")}) == 4
    heatmap = key(**vlm, image_mode="heatmap")
    assert key(**vlm, image_mode="heatmap", alpha=25.0, beta=0.4) == heatmap  # an overlay reads neither
    assert key(**vlm, image_mode="heatmap", prompt_style="concise") != heatmap
    recognizer = key(judge="recognizer", backend="torch")
    assert key(judge="recognizer", backend="torch", prompt_style="concise") == recognizer  # it reads no prompt
    assert key(judge="recognizer", backend="torch", alpha=25.0) != recognizer  # it reads the soft mask
    monkeypatch.setattr("localjudge.pipeline.RENDER_VERSION", 2)
    assert key(**vlm) != masked and key(**vlm, image_mode="heatmap") != heatmap
    assert key(judge="recognizer", backend="torch") != recognizer
