"""The tiny test VLMs carry the released tokenizers, vocabulary sizes, image-token counts and chat templates, and the
judge builds its prompts with them: one <bos>, the template's markers, as many image tokens as the processor gives
the image (worked out here by hand from the released processors' rules). The other judge paths run these models
too: test_openai_judge (through `transformers serve`) and test_vllm_contract (the vLLM stand-in)."""

from __future__ import annotations

import csv
import json
import math
import sqlite3

import pytest
from PIL import Image

from localjudge.judge import JudgeRequest
from localjudge.judge.prompts import prompt_template, render
from localjudge.judge.transformers_backend import TransformersJudge
from localjudge.testing.tiny_vlms import TOKENIZERS

from .conftest import invoke_json, write_manifest

# The released vocabularies (the tokenizers' own sizes) and the released configs' embedding rows.
TOKENIZER_SIZE = {"gemma3": 262_145, "qwen2_5_vl": 151_669}
CONFIG_VOCABULARY = {"gemma3": 262_208, "qwen2_5_vl": 151_936}
MARKERS = {
    "gemma3": ["<bos><start_of_turn>user\n", "<start_of_image>", "<end_of_image>", "<end_of_turn>\n",
               "<start_of_turn>model\n"],
    "qwen2_5_vl": ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
                   "<|vision_start|>", "<|vision_end|>", "<|im_end|>\n<|im_start|>assistant\n"],
}


def qwen_image_tokens(width: int, height: int, factor: int = 28, min_pixels: int = 56 * 56,
                      max_pixels: int = 28 * 28 * 16_384) -> int:
    """Qwen2-VL's smart_resize, written out: each side rounded to a multiple of 28 (14 px patches merged 2 x 2), the
    area kept within the bounds; one token per 28 x 28 pixels."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / scale / factor) * factor, math.floor(width / scale / factor) * factor
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return (h // factor) * (w // factor)


def test_the_hand_count_of_qwen_image_tokens():
    assert qwen_image_tokens(448, 448) == 16 * 16
    assert qwen_image_tokens(500, 375) == 18 * 13  # 504 x 364
    assert qwen_image_tokens(20, 20) == 4  # raised to the minimum, 56 x 56


@pytest.fixture(scope="module")
def requests_(data_dir):
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:3]
    sizes = [(448, 448), (500, 375), (300, 700)]  # the judge's default square view, and two other shapes
    return [JudgeRequest(image=Image.open(data_dir / "imagenet-sample" / r["file"]).convert("RGB").resize(size),
                         label=r["class_name"], prompt=render(prompt_template("masked"), r["class_name"]))
            for r, size in zip(rows, sizes)]


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_prompts_carry_the_released_template_and_image_token_counts(family, tiny_vlms, requests_):
    judge = TransformersJudge(tiny_vlms[family], device="cpu", max_new_tokens=8)
    tokenizer = judge.processor.tokenizer
    assert len(tokenizer) == TOKENIZER_SIZE[family]
    assert judge.model.config.get_text_config().vocab_size == CONFIG_VOCABULARY[family] == judge._vocab_size
    if family == "gemma3":  # its chat template is the one its tokenizer was released with
        released = json.loads((TOKENIZERS / "gemma3" / "tokenizer_config.json").read_text())["chat_template"]
        assert judge.processor.chat_template == released

    inputs = judge.prompt_inputs(requests_)
    for row, request in enumerate(requests_):
        ids = [i for i, keep in zip(inputs["input_ids"][row].tolist(), inputs["attention_mask"][row].tolist())
               if keep]
        text = tokenizer.decode(ids)
        for marker in MARKERS[family]:
            assert marker in text, marker
        assert request.prompt.strip()[:60] in text
        if family == "gemma3":
            assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1  # one <bos>
            assert ids.count(262_144) == 256  # <image_soft_token>: 256 per image, whatever its shape
            assert text.count("<start_of_image>") == 1
        else:
            assert ids.count(151_655) == qwen_image_tokens(*request.image.size)  # <|image_pad|>
            assert text.count("<|vision_start|>") == 1


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_a_run_stores_judgments_with_the_prompts_token_counts(family, tiny_vlms, data_dir, tmp_path):
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:3]
    manifest = write_manifest(tmp_path / "three.csv", [
        {"path": str(data_dir / "seg-photos" / r["file"]), "label": r["imagenet_indices"]} for r in rows])
    db = tmp_path / "real.db"
    stages = invoke_json("run", manifest, "--db", db, "--vlm", tiny_vlms[family], "--max-new-tokens", "32")
    assert stages["judge"]["computed"] == 3
    with sqlite3.connect(db) as conn:
        judged = conn.execute("select status, failure_kind, input_tokens, output_tokens, judge_image_size "
                              "from judgments").fetchall()
    assert len(judged) == 3
    for status, failure, input_tokens, output_tokens, size in judged:
        assert status in {"ok", "failed"} and failure in {None, "parse"}
        assert 0 < output_tokens <= 32
        # the judge's square view: 256 image tokens either way, plus the rubric and the template's markers
        assert size == 448 and 256 + 100 < input_tokens < 256 + 2000
