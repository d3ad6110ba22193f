"""Each judge backend's identity and decoding parameters feed every judgment's key: they are pinned here, with the
values the code gave before the judge registry (so a store made before it still finds its judgments)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localjudge.config import DEFAULTS
from localjudge.judge import decoding_params
from localjudge.pipeline import Audit
from localjudge.store import Store

SCHEMA = "32bc0df3d3ee8753"  # the first 16 hex of the judgment schema's sha256
DECODING = {
    "transformers": {"backend": "transformers", "image_placeholders": "suppressed", "max_new_tokens": 512,
                     "schema": SCHEMA, "structured_output": "xgrammar-json-schema", "temperature": 0.0},
    "vllm": {"backend": "vllm", "max_new_tokens": 512, "schema": SCHEMA, "structured_output": "xgrammar-json-schema",
             "temperature": 0.0},
    "openai": {"backend": "openai", "max_new_tokens": 512, "schema": SCHEMA,
               "structured_output": "response-format-json-schema", "temperature": 0.0},
    "recognizer": {"backend": "recognizer", "model": "efficientnet-lite2", "siblings": "81a1e17d569b851a",
                   "thresholds": [[0.5, 5], [0.25, 4], [0.1, 3], [0.03, 2], [0.01, 1]]},
}
# A model directory whose files are known, so its hash is too.
VLM_HASH = "sha256:aa1864d62ddb2fef06ce53084aaee81bb8bdd9982945624a7cf4fc406a9147db"
IDENTITY = {
    "transformers": ("vlm", VLM_HASH),
    "vllm": ("vlm", VLM_HASH),
    "openai": ("qwen-tiny", "served:490588043759c7a8400370fc26cfc0ed"),
    "openai+vlm": ("qwen-tiny", "served:1fe4b31cd84591a5b7fa0f16e3d118dc"),
    # content_key("recognizer", EfficientNet-Lite2's weights hash)
    "recognizer": ("recognizer:efficientnet-lite2", "59562f67dc67c6f3538d2b537344ac19"),
}


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


def identity(tmp_path: Path, given: dict) -> tuple[str, str]:
    store = Store(tmp_path / "identity.db")
    try:
        return Audit(store, DEFAULTS.replace(**given)).judge_identity()
    finally:
        store.close()


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_each_backend_keeps_its_identity(name, known_vlm, tmp_path):
    assert identity(tmp_path, configured(name, known_vlm)) == IDENTITY[name]


@pytest.mark.parametrize("name", sorted(DECODING))
def test_each_backend_keeps_its_decoding_parameters(name):
    assert json.loads(json.dumps(decoding_params(name, 512, 0.0))) == DECODING[name]


def test_sampling_is_part_of_the_transformers_decoding():
    assert decoding_params("transformers", 64, 0.7) == {**DECODING["transformers"], "max_new_tokens": 64,
                                                        "temperature": 0.7,
                                                        "sampling": "temperature, no top-k/top-p"}
