"""Judge on Hugging Face transformers (CPU or GPU): a local Gemma-3 or Qwen2.5-VL directory, batched decoding,
output constrained to the judgment JSON schema by xgrammar.

The decoding loop is our own, over the model's forward pass and its KV cache, rather than generate(): a row whose
answer has ended leaves the batch (its cache rows are dropped), which generate() cannot do. Judge answers differ in
length by an order of magnitude, so this is most of what batching gains.

Why xgrammar: it is maintained, compiles a JSON schema once into a token mask that costs microseconds per step, ships
a transformers LogitsProcessor, and is vLLM's default structured-output backend, so the vLLM judge constrains the
same schema with the same engine."""

from __future__ import annotations

import json
import inspect
import os
from pathlib import Path

import torch

from . import JudgeError, JudgeOutput, JudgeRequest, vlm_family
from .parsing import JUDGMENT_SCHEMA
from ..vision.torch_backend import resolve_device


class TransformersJudge:
    backend = "transformers"

    def __init__(self, vlm_dir: Path, device: str = "auto", max_new_tokens: int = 512, temperature: float = 0.0):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory only; never the hub
        import xgrammar
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar covers the stage

        self.vlm_dir = Path(vlm_dir)
        self.family = vlm_family(self.vlm_dir)
        self.device = resolve_device(device)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(self.vlm_dir, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.vlm_dir, local_files_only=True, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError) as error:
            raise JudgeError(f"{self.vlm_dir}: cannot load the judge model ({error})") from error
        if not hasattr(self.model, "_prepare_position_ids_for_generation"):
            import transformers

            raise JudgeError(f"the transformers judge needs transformers >= 5.10 (installed: {transformers.__version__})")
        # The argument that carries the KV cache was renamed from past_key_values to cache in transformers 5.x.
        self._cache_argument = "cache" if "cache" in inspect.signature(self.model.forward).parameters else (
            "past_key_values")
        # New tokens are appended on the right of every row, so prompts are padded on the left.
        self.processor.tokenizer.padding_side = "left"
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        # Every id that ends generation must be a stop token for the grammar too: xgrammar only knows the
        # tokenizer's eos by default, and would otherwise accept Gemma's <end_of_turn> as text inside a string.
        tokenizer_info = xgrammar.TokenizerInfo.from_huggingface(
            self.processor.tokenizer, vocab_size=self.model.config.get_text_config().vocab_size,
            stop_token_ids=sorted(self._eos_ids))
        self._grammar = xgrammar.GrammarCompiler(tokenizer_info).compile_json_schema(
            json.dumps(JUDGMENT_SCHEMA), any_whitespace=False)
        self._vocab_size = tokenizer_info.vocab_size
        self._placeholders = sorted(placeholder_token_ids(self.model.config) - self._eos_ids)

    @torch.inference_mode()
    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt}]}] for r in requests
        ]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        inputs = self.processor(text=texts, images=[[r.image] for r in requests], return_tensors="pt",
                                padding=True).to(self.device)
        input_counts = inputs["attention_mask"].sum(dim=1).tolist()
        answers = self._decode(inputs)
        outputs = []
        for (tokens, finished), count in zip(answers, input_counts):
            outputs.append(JudgeOutput(raw_text=self.processor.tokenizer.decode(tokens, skip_special_tokens=True),
                                       input_tokens=int(count), output_tokens=len(tokens), finished=finished))
        return outputs

    def _decode(self, inputs) -> list[tuple[list[int], bool]]:
        """Greedy (or temperature) decoding of a left-padded batch, one token per row and step, every token allowed
        by the row's grammar matcher. A row that ends (end token or max_new_tokens) leaves the batch at once: its
        cache rows are dropped, so the steps that follow cost only the rows still writing. (generate() computes
        every row until the last one ends; with answers of very different lengths most of that work is wasted.)
        Positions are those generate() gives the same batch, so answers are generate()'s, token for token."""
        model = self.model
        count = inputs["input_ids"].shape[0]
        positions = model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))
        output = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = output[self._cache_argument]  # the output names it as the forward pass does
        attention = inputs["attention_mask"]
        position = positions[..., -1:]  # (rows, 1), or (axes, rows, 1) for multi-axis RoPE (Qwen2.5-VL)
        grammar = BatchGrammar(self._grammar, count, self._vocab_size)
        rows = list(range(count))
        written: list[list[int]] = [[] for _ in range(count)]
        finished = [False] * count
        logits = output.logits[:, -1]
        while True:
            tokens = self._choose(grammar.mask(logits, rows))
            grammar.accept(rows, tokens)
            keep = []
            for index, (row, token) in enumerate(zip(rows, tokens)):
                written[row].append(token)
                if token in self._eos_ids:
                    finished[row] = True
                elif len(written[row]) < self.max_new_tokens:
                    keep.append(index)
            if not keep:
                return list(zip(written, finished))
            if len(keep) < len(rows):
                kept = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(kept)
                attention = attention.index_select(0, kept)
                position = position.index_select(position.dim() - 2, kept)
                rows = [rows[i] for i in keep]
                tokens = [tokens[i] for i in keep]
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
            position = position + 1
            output = model(input_ids=torch.tensor(tokens, device=self.device)[:, None], attention_mask=attention,
                           position_ids=position, use_cache=True, logits_to_keep=1, **{self._cache_argument: cache})
            logits = output.logits[:, -1]

    def _choose(self, logits: torch.Tensor) -> list[int]:
        if self._placeholders:
            # An answer is text: a real model never writes an image placeholder, and a random one must not either.
            logits[:, self._placeholders] = float("-inf")
        if self.temperature > 0:
            probabilities = torch.softmax(logits / self.temperature, dim=-1)
            return torch.multinomial(probabilities, 1)[:, 0].tolist()
        return logits.argmax(dim=-1).tolist()

    def _until_eos(self, tokens: list[int]) -> tuple[list[int], bool]:
        for position, token in enumerate(tokens):
            if token in self._eos_ids:
                return tokens[: position + 1], True
        return tokens, False


PLACEHOLDER_TOKEN_NAMES = ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                           "vision_end_token_id", "boi_token_index", "eoi_token_index")


def placeholder_token_ids(config) -> set[int]:
    """The ids that mark where an image goes in a prompt (Qwen2.5-VL's vision start/end and image pad, Gemma-3's
    begin/end-of-image and image soft token)."""
    ids = {getattr(config, name, None) for name in PLACEHOLDER_TOKEN_NAMES}
    return {i for i in ids if isinstance(i, int)}


class BatchGrammar:
    """One xgrammar matcher per row of a batch; the masks of all rows still writing are filled by one call, on
    several threads."""

    def __init__(self, grammar, rows: int, vocab_size: int):
        import xgrammar

        self._xgrammar = xgrammar
        self.matchers = [xgrammar.GrammarMatcher(grammar) for _ in range(rows)]
        self.bitmask = xgrammar.allocate_token_bitmask(rows, vocab_size)
        self.batch = xgrammar.BatchGrammarMatcher()

    def mask(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """`logits` holds the rows still writing, in the order of `rows`; masked in place (on CPU or CUDA)."""
        bitmask = self.bitmask[: len(rows)]
        self.batch.batch_fill_next_token_bitmask([self.matchers[row] for row in rows], bitmask)
        logits = logits.float()
        on_cpu = logits.device.type == "cpu"
        self._xgrammar.apply_token_bitmask_inplace(logits, bitmask if on_cpu else bitmask.to(logits.device))
        return logits

    def accept(self, rows: list[int], tokens: list[int]) -> None:
        accepted = self._xgrammar.BatchGrammarMatcher.batch_accept_token([self.matchers[row] for row in rows], tokens)
        if not all(accepted):
            raise RuntimeError("generation chose a token the grammar had masked")
