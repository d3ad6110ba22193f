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
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList

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
        self._vocab_size = tokenizer_info.vocab_size
        self._placeholders = sorted(placeholder_token_ids(self.model.config) - self._eos_ids)

    @torch.inference_mode()
    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        """Generate for the whole batch; when only a quarter of its rows are still writing, stop and continue those
        rows as a smaller batch from what they wrote so far (their prompt and tokens are computed again, a cheap
        prefill), so a few long answers do not keep every finished row in the batch for hundreds of steps.
        This is how vLLM preempts by recomputation; greedy answers are unchanged up to numerics."""
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt}]}] for r in requests
        ]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        written: dict[int, list[int]] = {i: [] for i in range(len(requests))}
        input_counts: dict[int, int] = {}
        done: dict[int, bool] = {}
        active = list(range(len(requests)))
        while active:
            prefix = len(written[active[0]])  # rows continued together have written the same number of tokens
            inputs = self._inputs([texts[i] for i in active], [requests[i].image for i in active],
                                  [written[i] for i in active])
            if prefix == 0:
                input_counts.update(zip(active, inputs["attention_mask"].sum(dim=1).tolist()))
            new_tokens = self._generate(inputs, [written[i] for i in active], self.max_new_tokens - prefix)
            still = []
            for i, row in zip(active, new_tokens.tolist()):
                used, finished = self._until_eos(row)
                written[i] = written[i] + used
                if finished or len(written[i]) >= self.max_new_tokens:
                    done[i] = finished
                else:
                    still.append(i)  # stopped with the stragglers: continue it
            active = still
        outputs = []
        for i in range(len(requests)):
            text = self.processor.tokenizer.decode(written[i], skip_special_tokens=True)
            outputs.append(JudgeOutput(raw_text=text, input_tokens=int(input_counts[i]), output_tokens=len(written[i]),
                                       finished=done[i]))
        return outputs

    def _inputs(self, texts: list[str], images: list, written: list[list[int]]):
        inputs = self.processor(text=texts, images=[[image] for image in images], return_tensors="pt", padding=True)
        if written[0]:
            # Prompts are padded on the left, so the tokens already written go on the right of every row. Per-token
            # tensors (attention mask, token types) grow with them: attended, and text, not image.
            tokens = torch.tensor(written, dtype=inputs["input_ids"].dtype)
            shape = inputs["input_ids"].shape
            for key, value in inputs.items():
                if key == "input_ids":
                    inputs[key] = torch.cat([value, tokens], dim=1)
                elif torch.is_tensor(value) and value.shape == shape:
                    fill = torch.ones_like(tokens) if key == "attention_mask" else torch.zeros_like(tokens)
                    inputs[key] = torch.cat([value, fill.to(value.dtype)], dim=1)
        return inputs.to(self.device)

    def _generate(self, inputs, written: list[list[int]], budget: int) -> torch.Tensor:
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {
            "do_sample": False}
        prompt_length = inputs["input_ids"].shape[1]
        stop = StoppingCriteriaList()
        if len(written) >= 4:  # below that, nothing is gained by splitting
            stop.append(StopForStragglers(prompt_length, self._eos_ids, keep=len(written) // 4))
        generated = self.model.generate(
            **inputs,
            max_new_tokens=budget,
            # A new processor per call: it holds per-row matcher state, advanced over what each row wrote.
            logits_processor=[GrammarConstraint(self._grammar, self._vocab_size, written)],
            stopping_criteria=stop,
            # An answer is text: an image placeholder in it would be read as an image slot when the answer is
            # continued (and a real model never writes one).
            suppress_tokens=self._placeholders or None,
            **sampling,
        )
        return generated[:, prompt_length:]

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


class GrammarConstraint(LogitsProcessor):
    """xgrammar's mask for each row, its matcher first advanced over the tokens that row already wrote (xgrammar's
    own transformers processor always starts from the beginning of the answer)."""

    def __init__(self, grammar, vocab_size: int, written: list[list[int]]):
        import xgrammar

        self._xgrammar = xgrammar
        self.matchers = []
        for tokens in written:
            matcher = xgrammar.GrammarMatcher(grammar)
            for token in tokens:
                if not matcher.accept_token(token):
                    raise RuntimeError("a continued answer does not follow the grammar")
            self.matchers.append(matcher)
        self.bitmask = xgrammar.allocate_token_bitmask(len(written), vocab_size)
        self.first_step = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.first_step:
            for row, matcher in enumerate(self.matchers):
                if not matcher.is_terminated() and not matcher.accept_token(int(input_ids[row, -1])):
                    raise RuntimeError("generation chose a token the grammar had masked")
        self.first_step = False
        for row, matcher in enumerate(self.matchers):
            if not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, row)
        device = scores.device
        scores = scores if device.type == "cuda" else scores.to("cpu")  # xgrammar masks on CUDA or CPU
        self._xgrammar.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores.to(device)


class StopForStragglers(StoppingCriteria):
    """Stops the whole batch once at most `keep` rows are still writing (and at least one is)."""

    def __init__(self, prompt_length: int, eos_ids: set[int], keep: int):
        self.prompt_length = prompt_length
        self.eos = torch.tensor(sorted(eos_ids))
        self.keep = keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        written = input_ids[:, self.prompt_length:]
        writing = int((~torch.isin(written, self.eos.to(written.device)).any(dim=1)).sum())
        stop = 0 < writing <= self.keep
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
