"""Judge on Hugging Face transformers (CPU or GPU): a local Gemma-3 or Qwen2.5-VL directory, batched generation,
output constrained to the judgment JSON schema by xgrammar.

Why xgrammar: it is maintained, compiles a JSON schema once into a token mask that costs microseconds per step, ships
a transformers LogitsProcessor, and is vLLM's default structured-output backend, so the vLLM judge constrains the
same schema with the same engine."""

from __future__ import annotations

import json
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
        # Batched generation appends new tokens on the right, so prompts are padded on the left.
        self.processor.tokenizer.padding_side = "left"
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        # Every id that ends generation must be a stop token for the grammar too: xgrammar only knows the
        # tokenizer's eos by default, and would otherwise accept Gemma's <end_of_turn> as text inside a string,
        # after which generate() stops that row and the grammar rejects the padding that follows.
        tokenizer_info = xgrammar.TokenizerInfo.from_huggingface(
            self.processor.tokenizer, vocab_size=self.model.config.get_text_config().vocab_size,
            stop_token_ids=sorted(self._eos_ids))
        self._grammar = xgrammar.GrammarCompiler(tokenizer_info).compile_json_schema(
            json.dumps(JUDGMENT_SCHEMA), any_whitespace=False)
        self._logits_processor = xgrammar.contrib.hf.LogitsProcessor

    @torch.inference_mode()
    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt}]}] for r in requests
        ]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        inputs = self.processor(text=texts, images=[[r.image] for r in requests], return_tensors="pt",
                                padding=True).to(self.device)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {
            "do_sample": False}
        generated = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            # A new processor per call: xgrammar's holds per-sequence matcher state.
            logits_processor=[self._logits_processor(self._grammar)],
            **sampling,
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        input_counts = inputs["attention_mask"].sum(dim=1).tolist()
        outputs = []
        for row, input_count in zip(new_tokens.tolist(), input_counts):
            used, finished = self._until_eos(row)
            text = self.processor.tokenizer.decode(used, skip_special_tokens=True)
            outputs.append(JudgeOutput(raw_text=text, input_tokens=int(input_count), output_tokens=len(used),
                                       finished=finished))
        return outputs

    def _until_eos(self, tokens: list[int]) -> tuple[list[int], bool]:
        for position, token in enumerate(tokens):
            if token in self._eos_ids:
                return tokens[: position + 1], True
        return tokens, False
