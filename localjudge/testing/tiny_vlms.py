#!/usr/bin/env python
"""Build two tiny, randomly initialised vision-language checkpoints for offline tests.

No model weights can be downloaded where the tests run, so this script makes stand-ins for a
Qwen2.5-VL and a Gemma 3 checkpoint from configs alone. Each is saved with ``save_pretrained``
(model, generation config, processor with tokenizer and chat template), so the tests load it
through exactly the code a real checkpoint goes through::

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)

The weights are random (seeded), so the generated text is gibberish by design; what matters
is that the whole pipeline (chat template, image placeholders, vision tower, generate,
constrained decoding) runs.

Two vocabularies:
- ``real`` (the default): the released tokenizers (../shared/data/tokenizers: Gemma-3's 262,144 tokens + its added
  tokens, Qwen's 151,643 + its special tokens), the released configs' vocabulary sizes (262,208; 151,936), image-token
  ids and counts (Gemma-3: 256 ``<image_soft_token>`` per image; Qwen2.5-VL: one ``<|image_pad|>`` per 28x28 pixels,
  the released processor's pixel bounds) and chat templates (Gemma-3's from its tokenizer config; Qwen2.5-VL's
  documented template, since the shared Qwen tokenizer carries Qwen3's text template). Each checkpoint is 40-70 MB
  (the embedding), built in seconds.
- ``bpe512``: a 512-token byte-level BPE trained here, for tests that need speed only; < 1 MB each.

Usage::

    python scripts/make_tiny_vlms.py OUT_DIR [--vocabulary real|bpe512]

writes OUT_DIR/tiny-qwen2.5-vl and OUT_DIR/tiny-gemma3 (``-bpe512`` appended for the small vocabulary). Recipe:
shared/docs/tiny-vlm-recipe.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SEED = 0
VOCABULARIES = ("real", "bpe512")
# The released tokenizers travel with the shared test data (its README says where they come from).
TOKENIZERS = Path(os.environ.get("LOCALJUDGE_TEST_DATA", Path(__file__).resolve().parents[2].parent / "shared" /
                                 "data")) / "tokenizers"
# Upper bound for BPE training; the few sentences below yield ~455 tokens. Model configs use
# len(tokenizer) so embeddings and tokenizer always agree.
VOCAB_SIZE = 512

# Text the BPE is trained on. Any text still encodes (byte-level alphabet), but these make the
# tokens that JSON-constrained evaluation needs (braces, quotes, colons, digits, the field names)
# short, so grammar-constrained generation finishes in few steps.
TRAINING_TEXT = [
    "You are a helpful assistant.",
    "Is this a dog? Answer in JSON.",
    "Describe the image. Is there a cat, a dog, a person, a car or a tree in this picture?",
    '{"evaluation": "The image shows a dog on the grass.", "justification": "fur, tail", "score": 5}',
    '{"evaluation":"no","justification":"none","score":0}',
    '{"evaluation":"yes","justification":"clear","score":1}',
    '{"evaluation":"maybe","justification":"blurry","score":2}',
    '{"evaluation":"partly","justification":"small","score":3}',
    '{"evaluation":"mostly","justification":"good","score":4}',
    "evaluation justification score true false null 0 1 2 3 4 5 [ ] { } : , \" \n",
    "The quick brown fox jumps over the lazy dog. Rate the answer from 0 to 5.",
]

# The language model of both families: hidden 64, 2 layers, 4 heads, 2 KV heads (the recipe's sizes).
TINY_TEXT_DIMENSIONS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)

# Where 4.x and 5.x differ (tokenizer class, RoPE argument name) the builder switches on this.
_TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5


def _train_byte_level_bpe(special_tokens: list[str]) -> Tokenizer:
    """Train a small byte-level BPE whose first ids are ``special_tokens`` (in that order).

    Byte-level like the real Qwen tokenizer: every string encodes, decoding is lossless.
    """
    tok = Tokenizer(models.BPE())
    # The same pre-tokenizer/decoder pair as GPT-2/Qwen, so tools that inspect the serialized
    # tokenizer (xgrammar's TokenizerInfo.from_huggingface) detect a byte-level vocabulary.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=special_tokens,  # become ids 0..n-1 and are registered as special added tokens
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no unknown text
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    return tok


def _wrap_tokenizer(tok: Tokenizer, family_class: str, **kwargs) -> PreTrainedTokenizerFast:
    """Wrap a trained ``tokenizers.Tokenizer`` as a transformers tokenizer.

    transformers 5 processors accept any tokenizer, and a plain PreTrainedTokenizerFast reloads
    from tokenizer.json exactly as saved. transformers 4.x processors insist on the family's
    fast class (e.g. Qwen2TokenizerFast), which also just wraps ``tokenizer_object``.
    """
    cls = PreTrainedTokenizerFast if _TRANSFORMERS_V5 else getattr(transformers, family_class)
    return cls(tokenizer_object=tok, **kwargs)


def _save(model, processor, out: Path, eos_token_id, pad_token_id, bos_token_id) -> Path:
    transformers.utils.logging.disable_progress_bar()  # a sub-second save needs no progress bar
    # generate() reads stop/pad ids from the generation config, as with a real checkpoint.
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = bos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------
# Qwen2.5-VL
# --------------------------------------------------------------------------------------------

# Same structure as the official Qwen2.5-VL template (default system prompt, list-of-parts
# content, optional "Picture N:" ids, generation prompt).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


# Qwen2.5-VL's released sizes: the config's vocabulary (3B-Instruct: 151,936 rows, more than the tokenizer's ids, as
# released) and the preprocessor's pixel bounds (3,136 .. 12,845,056 pixels: 4 .. 16,384 image tokens).
QWEN_VOCAB_SIZE = 151_936
QWEN_PIXELS = (56 * 56, 28 * 28 * 16_384)


def _real_tokenizer(family: str):
    from transformers import AutoTokenizer

    folder = TOKENIZERS / family
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: the released {family} tokenizer is not there (set LOCALJUDGE_TEST_DATA "
                                "to shared/data, or build with --vocabulary bpe512)")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def build_tiny_qwen2_5_vl(out: Path, vocabulary: str = "real") -> Path:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor)

    torch.manual_seed(SEED)
    if vocabulary == "real":
        tokenizer = _real_tokenizer("qwen")
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE  # the shared tokenizer's own template is Qwen3's (text only)
        vocab_size = QWEN_VOCAB_SIZE
        min_pixels, max_pixels = QWEN_PIXELS
    else:
        tokenizer = _wrap_tokenizer(
            _train_byte_level_bpe(QWEN_SPECIALS),
            "Qwen2TokenizerFast",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=QWEN_SPECIALS[1:],  # as in the real tokenizer_config.json
            chat_template=QWEN_CHAT_TEMPLATE,
            model_max_length=4096,
        )
        vocab_size = len(tokenizer)
        # Tiny images: 56*56..112*112 pixels, 14px patches merged 2x2 -> 4..16 tokens per image.
        min_pixels, max_pixels = 56 * 56, 112 * 112
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}

    vision_kwargs = dict(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        # 4.x processors read these attributes rather than `size` (5.x folds them into `size`).
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    image_processor = Qwen2VLImageProcessor(**vision_kwargs)
    try:  # the separate video processor exists from transformers 4.52 on
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(**vision_kwargs)
    except ImportError:
        video_processor = None
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )

    # Multimodal RoPE splits head_dim/2 = 8 frequencies into (temporal, height, width) sections.
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1_000_000.0}
    # transformers 5 calls it rope_parameters; 4.x expects rope_scaling with type "mrope".
    rope_kwargs = (
        {"rope_parameters": rope}
        if _TRANSFORMERS_V5
        else {"rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "rope_theta": 1_000_000.0}
    )
    text_config = dict(
        vocab_size=vocab_size,
        **TINY_TEXT_DIMENSIONS,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **rope_kwargs,
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,  # = text hidden size
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,  # 2x2 merged patches per window; block 1 attends globally
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        # as released for Qwen2.5-VL-3B: one 151,936 x 64 table, not two (the small variant keeps its two, the
        # checkpoint its tests were written against)
        tie_word_embeddings=vocabulary == "real",
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if not _TRANSFORMERS_V5:  # 4.x reads vocab_size and token ids from the top-level config
        config.vocab_size = vocab_size
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return _save(
        model,
        processor,
        out,
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )


# --------------------------------------------------------------------------------------------
# Gemma 3
# --------------------------------------------------------------------------------------------

# Same structure as the official Gemma 3 template: <bos>, system text folded into the first
# user turn, "assistant" renamed to "model", one <start_of_image> per image part (the processor
# expands it to <start_of_image><image_soft_token>*N<end_of_image>).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Same order as the real Gemma vocabulary for the first four (pad=0, eos=1, bos=2, unk=3).
GEMMA_SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]


# Gemma-3's released sizes (4B-IT): the config's vocabulary (262,208 rows: the tokenizer's 262,144 + <image_soft_token>
# and unused rows) and 256 soft tokens per image. The tiny vision tower sees 224 px in 14 px patches (the released
# patch size): 16 x 16 patches, one soft token each (the released 896 px would pool 64 x 64 patches 4 x 4 to the same
# 256 tokens, at 16 times the vision cost).
GEMMA_VOCAB_SIZE = 262_208
GEMMA_IMAGE_TOKENS = 256


def build_tiny_gemma3(out: Path, vocabulary: str = "real") -> Path:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    torch.manual_seed(SEED)
    if vocabulary == "real":
        tokenizer = _real_tokenizer("gemma3")  # with the released chat template
        vocab_size, image_size, patch_size, image_tokens = GEMMA_VOCAB_SIZE, 224, 14, GEMMA_IMAGE_TOKENS
    else:
        tokenizer = _small_gemma_tokenizer()
        # 32x32 images, 8px patches -> 4x4 patches, pooled to 2x2 = 4 soft tokens per image.
        vocab_size, image_size, patch_size, image_tokens = len(tokenizer), 32, 8, 4
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA_SPECIALS}

    image_processor = Gemma3ImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_length=image_tokens,
    )

    config = Gemma3Config(
        text_config=dict(
            vocab_size=vocab_size,
            **TINY_TEXT_DIMENSIONS,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=64,
            sliding_window_pattern=2,  # layer 0 sliding, layer 1 global, to exercise both
            pad_token_id=ids["<pad>"],
            eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
            bos_token_id=ids["<bos>"],
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        mm_tokens_per_image=image_tokens,  # must match the processor's image_seq_length
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    return _finish_gemma3(Gemma3ForConditionalGeneration(config).eval(), processor, out, ids)


def _small_gemma_tokenizer():
    return _wrap_tokenizer(
        _train_byte_level_bpe(GEMMA_SPECIALS),
        "GemmaTokenizerFast",
        add_bos_token=False,  # the chat template writes <bos> itself (4.x GemmaTokenizerFast would add another)
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        # Gemma3Processor reads these named tokens from the tokenizer (tokenizer.boi_token, ...).
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        chat_template=GEMMA_CHAT_TEMPLATE,
        model_max_length=4096,
    )


def _finish_gemma3(model, processor, out: Path, ids: dict) -> Path:
    # Gemma 3 initialises the vision->text projection to zeros (real checkpoints overwrite it),
    # which would make every image embed to 0 and the output independent of the image. Give it
    # random weights on the scale of the sqrt(hidden)-scaled text embeddings (~0.16).
    for name, param in model.named_parameters():
        if name.endswith("mm_input_projection_weight"):
            with torch.no_grad():
                param.normal_(mean=0.0, std=0.2)
    return _save(
        model,
        processor,
        out,
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
    )


# --------------------------------------------------------------------------------------------


def build_tiny_vlms(out_dir: Path, vocabulary: str = "real") -> dict[str, Path]:
    """Build both tiny checkpoints under ``out_dir`` and return their directories."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, not {vocabulary!r}")
    out_dir = Path(out_dir)
    suffix = "" if vocabulary == "real" else f"-{vocabulary}"
    return {
        "qwen2_5_vl": build_tiny_qwen2_5_vl(out_dir / f"tiny-qwen2.5-vl{suffix}", vocabulary),
        "gemma3": build_tiny_gemma3(out_dir / f"tiny-gemma3{suffix}", vocabulary),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where to write the checkpoints")
    parser.add_argument("--vocabulary", choices=VOCABULARIES, default="real",
                        help="the released tokenizers (default) or a 512-token BPE, for speed only")
    args = parser.parse_args(argv)
    for name, path in build_tiny_vlms(args.out_dir, args.vocabulary).items():
        size_kb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024
        print(f"{name}: {path} ({size_kb:.0f} KB)")


if __name__ == "__main__":
    main()
