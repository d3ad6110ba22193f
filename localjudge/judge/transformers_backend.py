"""Judge on Hugging Face transformers (CPU or GPU): a local Gemma-3 or Qwen2.5-VL directory, batched decoding,
output constrained to the judgment JSON schema by xgrammar.

The decoding loop is our own, over the model's forward pass and its KV cache, rather than generate(): a row whose
answer has ended leaves the batch (its cache rows are dropped), which generate() cannot do. Judge answers differ in
length by an order of magnitude, so this is most of what batching gains.

Why xgrammar: it is maintained, compiles a JSON schema once into a token mask that costs microseconds per step, ships
a transformers LogitsProcessor, and is vLLM's default structured-output backend, so the vLLM judge constrains the
same schema with the same engine.

torch and transformers are imported where they are used, so the judge registry loads without them."""

from __future__ import annotations

import inspect
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import offline
from .base import Judge, JudgeError, JudgeIdentity, JudgeOutput, JudgeRequest, JudgeSpec, vlm_family
from .parsing import JUDGMENT_SCHEMA

if TYPE_CHECKING:
    import torch


class TransformersSpec(JudgeSpec):
    name = "transformers"

    def decoding(self, config) -> dict:
        params = super().decoding(config)
        params["image_placeholders"] = "suppressed"  # never written into an answer (see TransformersJudge._choose)
        if config.temperature > 0:  # our decoding loop samples from the temperature-scaled distribution only
            params["sampling"] = "temperature, no top-k/top-p"
        return params

    def open(self, config, identity: JudgeIdentity) -> Judge:
        return TransformersJudge(Path(config.vlm), device=config.device, max_new_tokens=config.max_new_tokens,
                                 temperature=config.temperature, max_rows=config.max_num_seqs)


class TransformersJudge(Judge):
    backend = "transformers"

    def __init__(self, vlm_dir: Path, device: str = "auto", max_new_tokens: int = 512, temperature: float = 0.0,
                 max_rows: int = 32, overlap_grammar: bool | None = None):
        offline.enforce()  # a local directory only; never the hub
        import torch
        import xgrammar
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        from ..vision.torch_backend import resolve_device

        hf_logging.disable_progress_bar()  # our own progress bar covers the stage

        self.vlm_dir = Path(vlm_dir)
        self.family = vlm_family(self.vlm_dir)
        self.device = resolve_device(device)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_rows = max_rows  # answers written together
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
        # On a GPU the masks of the next step are filled on a host thread while the device runs the forward (measured
        # by scripts/bench_judge_steps.py: the fill is most of the host's time per step); on a CPU the forward
        # already has every core. None: on a GPU only. One filler thread per judge, shut down by close().
        self.overlap_grammar = self.device.type == "cuda" if overlap_grammar is None else overlap_grammar
        self._filler = None
        if self.overlap_grammar:
            from concurrent.futures import ThreadPoolExecutor

            self._filler = ThreadPoolExecutor(1, thread_name_prefix="grammar-fill")

    def close(self, cancel: bool = False) -> None:
        if self._filler is not None:
            self._filler.shutdown(wait=True)
            self._filler = None

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        return [self.output(*answer) for answer in self._decode(requests)]  # each decoding step: inference mode

    def output(self, tokens: list[int], finished: bool, prompt_tokens: int) -> JudgeOutput:
        return JudgeOutput(raw_text=self.processor.tokenizer.decode(tokens, skip_special_tokens=True),
                           input_tokens=prompt_tokens, output_tokens=len(tokens), finished=finished)

    def continuous(self) -> "ContinuousDecoder":
        """A decoder that takes requests while it writes answers: the pipeline hands it each batch from the vision
        stage as it comes, so rows never run alone at the end of a batch while work is waiting."""
        return ContinuousDecoder(self)

    def _decode(self, requests: list[JudgeRequest]) -> list[tuple[list[int], bool, int]]:
        """Returns (tokens, ended with an end token, prompt tokens) per request."""
        decoder = ContinuousDecoder(self)
        indices = decoder.submit(requests)
        while decoder.busy:
            decoder.step()
        return [decoder.answer(i) for i in indices]

    def prompt_inputs(self, requests: list[JudgeRequest]):
        """The model's inputs for these requests: each prompt in the model's chat template with its image's
        placeholder tokens (as many as the processor gives the image), padded on the left."""
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt}]}] for r in requests
        ]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        # The chat template writes every special token itself (Gemma-3's begins with <bos>, and its tokenizer adds
        # one too): tokenizing it with the tokenizer's own specials would start the prompt with two <bos>.
        return self.processor(text=texts, images=[[r.image] for r in requests], return_tensors="pt",
                              padding=True, add_special_tokens=False).to(self.device)

    def _prefill(self, rows: list[int], requests: list[JudgeRequest]) -> "DecodingBatch":
        inputs = self.prompt_inputs(requests)
        positions = self.model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))
        output = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        return DecodingBatch(rows=list(rows), cache=output[self._cache_argument], attention=inputs["attention_mask"],
                             position=positions[..., -1:], logits=output.logits[:, -1])

    def _choose(self, logits: torch.Tensor) -> list[int]:
        import torch

        if self._placeholders:
            # An answer is text: a real model never writes an image placeholder, and a random one must not either.
            logits[:, self._placeholders] = float("-inf")
        if self.temperature > 0:
            probabilities = torch.softmax(logits / self.temperature, dim=-1)
            return torch.multinomial(probabilities, 1)[:, 0].tolist()
        return logits.argmax(dim=-1).tolist()


class ContinuousDecoder:
    """Continuous batching over the model's forward pass and KV cache: at most `max_rows` answers are written
    together, one token per row and step, each allowed by its row's grammar matcher. A row whose answer ends (end
    token or max_new_tokens) leaves the batch at once (its cache rows are dropped), and once a quarter of the places
    are free, waiting requests are prefilled and join (their cache rows padded on the left to the batch's length), so
    no step is spent on a finished answer and the batch stays full. Requests may be submitted at any time, also while
    answers are being written. generate() computes every row until the longest ends. Positions are those generate()
    gives each prompt, so answers are generate()'s, token for token.

    Each request is charged its share of the time of every forward pass it took part in (a step's time split evenly
    over its rows), so the shares of all requests add up to the decoder's busy time."""

    def __init__(self, judge: TransformersJudge):
        self.judge = judge
        self.waiting: deque[int] = deque()
        self.requests: dict[int, JudgeRequest] = {}
        self.written: dict[int, list[int]] = {}
        self.finished: dict[int, bool] = {}
        self.prompt_tokens: dict[int, int] = {}
        self.seconds: dict[int, float] = {}
        self.grammar = BatchGrammar(judge._grammar, judge.max_rows, judge._vocab_size, filler=judge._filler)
        self.batch: DecodingBatch | None = None
        self._next = 0

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or self.batch is not None

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    def submit(self, requests: list[JudgeRequest]) -> list[int]:
        """Queue requests; their indices, by which their answers are asked for."""
        indices = list(range(self._next, self._next + len(requests)))
        self._next += len(requests)
        for index, request in zip(indices, requests):
            self.requests[index] = request
            self.written[index] = []
            self.seconds[index] = 0.0
            self.grammar.add(index)
        self.waiting.extend(indices)
        return indices

    def step(self) -> list[int]:
        """Waiting requests join where they can, then one token for every row: the indices whose answers ended."""
        import torch

        judge = self.judge
        ended = []
        with torch.inference_mode():
            batch = self.batch
            free = judge.max_rows - (len(batch.rows) if batch else 0)
            if self.waiting and (batch is None or (batch.can_join and free >= max(1, judge.max_rows // 4))):
                joining = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
                started = time.perf_counter()
                new = judge._prefill(joining, [self.requests[i] for i in joining])
                self._charge(joining, time.perf_counter() - started)
                for row, count in zip(joining, new.attention.sum(dim=1).tolist()):
                    self.prompt_tokens[row] = int(count)
                    del self.requests[row]  # its image is in the cache now
                batch = self.batch = new if batch is None else batch.joined(new)
            started = time.perf_counter()
            tokens = judge._choose(self.grammar.mask(batch.logits, batch.rows))
            self.grammar.accept(batch.rows, tokens)
            keep = []
            for index, (row, token) in enumerate(zip(batch.rows, tokens)):
                self.written[row].append(token)
                if token in judge._eos_ids:
                    self.finished[row] = True
                    ended.append(row)
                elif len(self.written[row]) < judge.max_new_tokens:
                    keep.append(index)
                else:
                    self.finished[row] = False
                    ended.append(row)
            rows = batch.rows
            if keep:
                batch.keep(keep)
                if self.grammar.overlapped:  # the next masks are filled while the forward runs
                    self.grammar.prefetch(batch.rows)
                batch.step(judge.model, [tokens[i] for i in keep], judge._cache_argument)
            else:
                self.batch = None
            self._charge(rows, time.perf_counter() - started)
        return ended

    def has_ended(self, index: int) -> bool:
        """Whether the request's answer has ended (and not been taken yet)."""
        return index in self.finished

    def answer(self, index: int) -> tuple[list[int], bool, int]:
        """An ended request's (tokens, ended with an end token, prompt tokens); what was kept for it is let go."""
        self.grammar.remove(index)
        self.seconds.pop(index)
        return self.written.pop(index), self.finished.pop(index), self.prompt_tokens.pop(index)

    def take(self, index: int) -> tuple[JudgeOutput, float]:
        """An ended request's output and the decoder time charged to it."""
        seconds = self.seconds[index]
        return self.judge.output(*self.answer(index)), seconds

    def _charge(self, rows: list[int], seconds: float) -> None:
        for row in rows:
            self.seconds[row] += seconds / len(rows)


PLACEHOLDER_TOKEN_NAMES = ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                           "vision_end_token_id", "boi_token_index", "eoi_token_index")


def placeholder_token_ids(config) -> set[int]:
    """The ids that mark where an image goes in a prompt (Qwen2.5-VL's vision start/end and image pad, Gemma-3's
    begin/end-of-image and image soft token)."""
    ids = {getattr(config, name, None) for name in PLACEHOLDER_TOKEN_NAMES}
    return {i for i in ids if isinstance(i, int)}


@dataclass
class DecodingBatch:
    """The rows being written together: their request indices, KV cache, attention mask (left-padded), the position
    of each row's last token ((rows, 1), or (axes, rows, 1) for multi-axis RoPE) and the logits of its next token."""

    rows: list[int]
    cache: object
    attention: torch.Tensor
    position: torch.Tensor
    logits: torch.Tensor

    @property
    def can_join(self) -> bool:
        """Rows can join only where every cache layer holds the whole sequence: a sliding-window layer (Gemma-3's
        local attention) keeps the last tokens of each row relative to its own length, which padding would shift."""
        return all(not getattr(layer, "is_sliding", False) and hasattr(layer, "keys")
                   for layer in getattr(self.cache, "layers", [None]))

    def keep(self, indices: list[int]) -> None:
        import torch

        if len(indices) == len(self.rows):
            return
        kept = torch.tensor(indices, device=self.attention.device)
        self.cache.batch_select_indices(kept)
        self.attention = self.attention.index_select(0, kept)
        self.position = self.position.index_select(self.position.dim() - 2, kept)
        self.logits = self.logits.index_select(0, kept)
        self.rows = [self.rows[i] for i in indices]
        if self.can_join:
            # Columns that are padding in every remaining row (the long prompts that left) are cut, so the cache
            # does not grow with every request a long call has seen. (Sliding-window layers keep their own
            # windows, so their batches are left as they are.)
            start = int((self.attention.sum(dim=0) > 0).nonzero()[0])
            if start:
                self.attention = self.attention[:, start:]
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def joined(self, other: "DecodingBatch") -> "DecodingBatch":
        """This batch and `other` as one, both padded on the left to the longer one's length (padding is masked)."""
        import torch

        length = max(self.attention.shape[1], other.attention.shape[1])

        def padded(tensor: torch.Tensor, dim_from_end: int, own: int) -> torch.Tensor:
            pad = [0, 0] * (dim_from_end - 1) + [length - own, 0]
            return torch.nn.functional.pad(tensor, pad) if length > own else tensor

        mine, theirs = self.attention.shape[1], other.attention.shape[1]
        for layer, joining in zip(self.cache.layers, other.cache.layers):
            layer.keys = torch.cat([padded(layer.keys, 2, mine), padded(joining.keys, 2, theirs)])
            layer.values = torch.cat([padded(layer.values, 2, mine), padded(joining.values, 2, theirs)])
        return DecodingBatch(
            rows=self.rows + other.rows, cache=self.cache,
            attention=torch.cat([padded(self.attention, 1, mine), padded(other.attention, 1, theirs)]),
            position=torch.cat([self.position, other.position], dim=self.position.dim() - 2),
            logits=torch.cat([self.logits, other.logits]))

    def step(self, model, tokens: list[int], cache_argument: str) -> None:
        """Feed each row its chosen token; the logits of the next one come back."""
        import torch

        self.attention = torch.cat([self.attention, self.attention.new_ones((len(self.rows), 1))], dim=1)
        self.position = self.position + 1
        output = model(input_ids=torch.tensor(tokens, device=self.attention.device)[:, None],
                       attention_mask=self.attention, position_ids=self.position, use_cache=True, logits_to_keep=1,
                       **{cache_argument: self.cache})
        self.logits = output.logits[:, -1]


class BatchGrammar:
    """One xgrammar matcher per request (by its index, added and removed as requests come and go); the masks of the
    rows being written are filled by one call, on several threads. `overlapped`: the next step's masks are filled on
    a thread of their own (xgrammar releases the GIL) while the forward pass runs, and into pinned memory, copied to
    the device without blocking."""

    def __init__(self, grammar, rows: int, vocab_size: int, filler=None):
        import xgrammar

        self._xgrammar = xgrammar
        self._grammar = grammar
        self.matchers: dict[int, object] = {}
        self.bitmask = xgrammar.allocate_token_bitmask(rows, vocab_size)
        self.batch = xgrammar.BatchGrammarMatcher()
        self._filler = filler  # a one-thread executor: the overlapped fill (see TransformersJudge)
        self._pending: tuple[list[int], object] | None = None
        self.prefetched = 0  # fills started ahead (the steps whose masks were filled during a forward)
        if filler is not None:
            import torch

            if torch.cuda.is_available():
                self.bitmask = self.bitmask.pin_memory()

    @property
    def overlapped(self) -> bool:
        return self._filler is not None

    def add(self, index: int) -> None:
        self.matchers[index] = self._xgrammar.GrammarMatcher(self._grammar)

    def remove(self, index: int) -> None:
        self.matchers.pop(index, None)

    def prefetch(self, rows: list[int]) -> None:
        """Start filling the masks of `rows` (their matchers have accepted this step's tokens)."""
        matchers = [self.matchers[row] for row in rows]
        self._pending = (list(rows), self._filler.submit(self.batch.batch_fill_next_token_bitmask, matchers,
                                                         self.bitmask[: len(rows)]))
        self.prefetched += 1

    def mask(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """`logits` holds the rows still writing, in the order of `rows`; masked in place (on CPU or CUDA)."""
        bitmask = self.bitmask[: len(rows)]
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].result()  # waits for the fill (and raises its error)
        if pending is None or pending[0] != list(rows):  # nothing started, or rows joined since: fill them all
            self.batch.batch_fill_next_token_bitmask([self.matchers[row] for row in rows], bitmask)
        logits = logits.float()
        on_cpu = logits.device.type == "cpu"
        # the next fill into this host buffer starts only after accept, after _choose has read the masked logits
        self._xgrammar.apply_token_bitmask_inplace(
            logits, bitmask if on_cpu else bitmask.to(logits.device, non_blocking=True))
        return logits

    def accept(self, rows: list[int], tokens: list[int]) -> None:
        accepted = self._xgrammar.BatchGrammarMatcher.batch_accept_token([self.matchers[row] for row in rows], tokens)
        if not all(accepted):
            raise RuntimeError("generation chose a token the grammar had masked")


SPEC = TransformersSpec()
