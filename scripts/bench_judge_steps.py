#!/usr/bin/env python
"""Structured decoding at real vocabulary size (issue 19, part 2): what the transformers judge costs on the host per
judge load and per decoding step, with both real vocabularies (the tiny Qwen2.5-VL with Qwen's 151,669 tokens and
151,936 logits; the tiny Gemma-3 with Gemma's 262,145 tokens and 262,208 logits).

1. Per judge load: xgrammar.TokenizerInfo.from_huggingface(...) and GrammarCompiler(...).compile_json_schema(...),
   called exactly as TransformersJudge.__init__ calls them (median of --compile-repeats, each with a new compiler),
   the same schema compiled again by the same compiler (its cache) and by a new compiler on the same TokenizerInfo
   (xgrammar's cache is per compiler), and the whole TransformersJudge(...) load for context.
2. Per decoding step, at --batches (default 1, 8 and 32 rows): the judge's own decoding loop (TransformersJudge._decode
   with its BatchGrammar and DecodingBatch) runs on requests made from the first imagenet-sample images (448x448,
   prompt = render(prompt_template("masked"), class name)); the parts of every step are timed around the real calls
   (the classes are wrapped in this process only, nothing of the product is changed):
     a  fill    BatchGrammar's batch_fill_next_token_bitmask for all rows (xgrammar, on its own threads)
     b  apply   apply_token_bitmask_inplace on the logits. Measured on the CPU here; on a GPU it is a kernel on the
                device's logits (plus the bitmask's copy to the device), i.e. device time, so it is kept out of the
                host total
     c  choose  TransformersJudge._choose (placeholder suppression, argmax, .tolist()). On the CPU the argmax over
                rows x vocabulary is computed here; on a GPU that is a kernel, so "choose, host part" is the same call
                on rows x 1,024 logits (the launch and Python overhead only)
     d  accept  BatchGrammar.accept (batch_accept_token)
     e  keep+bk DecodingBatch.keep (when a row leaves: cache rows dropped) and DecodingBatch.step less the model's
                forward (attention and position concatenation, the token tensor)
        other   the rest of the loop's Python (per-row bookkeeping, time charging, mask glue)
   host total = a + c + d + e + other per step (b and the forward excluded), as the median and p90 over the steps at
   which all rows of the batch were writing. Two token sources: "model" (the tiny model's own grammar-constrained
   argmax: random weights write short or repetitive strings) and "answers" (the loop runs as it is, but the token
   fed back is the next one of a realistic judge answer, so the grammar states are those of English JSON answers).
   Rows leaving are rare in --max-new-tokens steps, so after the timed steps --leave-events rows are dropped from
   the live batch one at a time with the real DecodingBatch.keep, and "keep per event" is reported; amortized over
   an answer's length it adds event x rows / answer tokens per step.
3. Experiments (not in the product), at the largest batch: the fill with xgrammar's BatchGrammarMatcher on 1, 2 and
   "auto" (= hardware_concurrency / 2) threads and one matcher at a time (the cost per row, from which the fill on
   T threads is about rows x per-row / T), walking matchers through the realistic answers; the same for the schema
   without its strings' maxLength; and the decoding loop with the next step's fill started on a background thread
   right before the forward (xgrammar releases the GIL during the fill), that thread and the loop's pinned to CPUs
   of their own, the fill's visible wait measured.

The process keeps freed memory (mallopt; --raw-malloc leaves glibc as it is): glibc gives buffers over 32 MiB back
to the system at every free, and Gemma's 33.5 MB logits at 32 rows then cost ~3 ms of page faults every other step
on the CPU, which CUDA's caching allocator never costs. torch runs on --torch-threads (default 1).

Anchor and target: a 7B judge's decoding step takes ~25 ms on one H100 at batch 32; the host side of a step (grammar
masks for all rows, sampling, cache bookkeeping) should take <= 2.5 ms at batch 32, 10 % of that.

    .venv/bin/python scripts/bench_judge_steps.py                    # both families, CPU; a few minutes on 2 cores
    .venv/bin/python scripts/bench_judge_steps.py --json > steps.json
    .venv/bin/python scripts/bench_judge_steps.py --vlms DIR         # DIR/tiny-qwen2.5-vl, DIR/tiny-gemma3 (reused)

On --device cuda the forward is followed by torch.cuda.synchronize(), so every part includes its own device time
and nothing overlaps (an upper bound of the serial step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sample_data import imagenet_rows  # noqa: E402

TARGET_MS = 2.5
ANCHOR_MS = 25.0
FAMILIES = {"qwen2_5_vl": "tiny-qwen2.5-vl", "gemma3": "tiny-gemma3"}

# Judge answers as the prompt asks for them (4-6 sentences of evaluation, a short justification, a score): the token
# source of the "answers" runs and of the fill experiments. Each is 87-116 tokens in both vocabularies.
ANSWERS = [
    {"evaluation": "The unmasked region covers the {label} in the centre of the photo, while the background and the "
                   "edges of the frame are blacked out. The attention is concentrated on the body and its outline, "
                   "which are the features that distinguish a {label} from similar classes. Some attention spills "
                   "onto the ground at the lower left, but it is weak. Overall the classifier looks at the object "
                   "itself rather than at its context.",
     "justification": "Attention on the object's body and outline; little on the background.", "score": 4},
    {"evaluation": "Most of the visible area is background: the sky, a wall and part of a table remain, while the "
                   "{label} itself is almost entirely blacked out. Only a thin strip along one edge of the object is "
                   "kept. The classifier seems to rely on the setting in which a {label} usually appears. This is a "
                   "shortcut rather than evidence from the object.",
     "justification": "The kept pixels are context; the object is masked.", "score": 1},
    {"evaluation": "The attention is split between the {label} and a second object next to it. The head and the "
                   "upper part of the {label} are visible, the rest is masked. The second object is not part of "
                   "the class and draws about half of the attention. The evidence is partly relevant.",
     "justification": "Half on the object's head, half on an unrelated object nearby.", "score": 3},
    {"evaluation": "Nearly the whole {label} is visible and sharply delimited, with its characteristic texture and "
                   "colour pattern kept, and the background is removed almost completely. No other object is "
                   "visible. The mask follows the contour closely, including thin parts. This is the evidence a "
                   "person would use to name the class.",
     "justification": "Tight mask on the whole object, distinctive texture and shape kept.", "score": 5},
    {"evaluation": "The kept region is a small patch in a corner of the image that shows no recognisable part of a "
                   "{label}. It contains grass and a shadow. The object, in the middle of the photo, is fully "
                   "blacked out. Whatever the classifier used, it is not visible evidence of the class.",
     "justification": "Only a corner with grass and a shadow is kept; the object is not.", "score": 0},
    {"evaluation": "The attention lies on the lower half of the {label}: its base and the surface it stands on are "
                   "visible, the upper half is masked. The base carries some of the typical shape, but the most "
                   "distinctive part, higher up, is not used. A human could guess the class from what is kept, "
                   "though with some doubt.",
     "justification": "Lower half of the object kept, distinctive upper part masked.", "score": 2},
    {"evaluation": "Two separate regions are kept: the {label} in the foreground and a text label in the top right "
                   "corner. The object region is large and well placed. The text could be a watermark that "
                   "correlates with the class in the training data. The decision may rest partly on it, so the "
                   "evidence is mixed.",
     "justification": "Object kept, but a watermark-like text region is attended to as well.", "score": 3},
    {"evaluation": "The map highlights the {label} and a person holding it. The person's hands and arms take a "
                   "large part of the kept area, the object the rest. Objects of this class are often photographed "
                   "held by people, so the hands may act as a cue. Still, the object itself is clearly visible and "
                   "central to the kept region.",
     "justification": "Object visible and central; hands of the person holding it also kept.", "score": 4},
]


def now() -> int:
    return time.perf_counter_ns()


def ms(ns: float) -> float:
    return ns / 1e6


def quantiles(values: list[float]) -> dict:
    """Median and p90 (nearest rank) of values in ns, as ms; None where there are none."""
    if not values:
        return {"median": None, "p90": None, "n": 0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered) + 0.5) - 1)] if len(ordered) > 1 else ordered[0]
    return {"median": ms(statistics.median(ordered)), "p90": ms(p90), "n": len(ordered)}


class Proxy:
    """`target` with some attributes replaced."""

    def __init__(self, target, **overrides):
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._target, name)


class Recorder:
    """Times the parts of the judge's decoding steps. A step runs from one BatchGrammar.mask call to the next (or to
    the end of _decode); prefill and join are taken out of it (they are per request, not per step)."""

    def __init__(self, sync_cuda: bool):
        self.sync_cuda = sync_cuda
        self.parts: dict[str, int] = defaultdict(int)
        self.totals: dict[str, int] = defaultdict(int)  # over the whole run
        self.steps: list[dict] = []
        self.leave_events: list[dict] = []
        self._started: int | None = None
        self._rows = 0
        self.grammar = None  # the BatchGrammar of the current _decode
        self.batch = None  # the last DecodingBatch stepped
        self.rows: list[int] = []  # the rows of the current step, in batch order
        self.accepted: dict[int, int] = defaultdict(int)  # tokens accepted per request index
        self.prefetch: ThreadPoolExecutor | None = None  # the experiment: the next fill during the forward
        self.forced: dict[int, list[int]] | None = None  # request index -> answer tokens fed instead of argmax

    def timed(self, name: str, function):
        def call(*args, **kwargs):
            started = now()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = now() - started
                self.parts[name] += elapsed
                self.totals[name] += elapsed
        return call

    def begin_step(self, rows: list[int]) -> None:
        self.end_step()
        self.parts = defaultdict(int)
        self._started = now()
        self._rows = len(rows)
        self.rows = list(rows)

    def end_step(self) -> None:
        if self._started is None:
            return
        total = now() - self._started
        p = self.parts
        step = {name: p[name] for name in ("fill", "apply", "mask", "choose", "accept", "keep", "step", "forward",
                                           "prefill", "joined", "fill_wait", "fill_background", "fill_start")}
        step["rows"] = self._rows
        step["glue"] = step["mask"] - step["fill"] - step["apply"] - step["fill_wait"]
        step["bookkeeping"] = step["keep"] + step["step"] - step["forward"] - step["fill_start"]
        step["other"] = (total - step["mask"] - step["choose"] - step["accept"] - step["keep"] - step["step"]
                         - step["prefill"] - step["joined"]) + step["glue"]
        step["host"] = (step["fill"] + step["fill_wait"] + step["fill_start"] + step["choose"] + step["accept"]
                        + step["bookkeeping"] + step["other"])
        self.steps.append(step)
        self._started = None


@contextmanager
def instrumented(judge, recorder: Recorder):
    """The judge's decoding loop with its parts timed: BatchGrammar is replaced (in this process) by a subclass that
    wraps the real fill, apply and accept; DecodingBatch's keep, joined and step are wrapped; the judge's _choose and
    _prefill are wrapped on the instance."""
    import torch

    from localjudge.judge import transformers_backend as backend

    real_grammar = backend.BatchGrammar
    real_keep, real_joined, real_step = backend.DecodingBatch.keep, backend.DecodingBatch.joined, \
        backend.DecodingBatch.step

    class TimedGrammar(real_grammar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._fill = self.batch.batch_fill_next_token_bitmask
            self.batch = Proxy(self.batch, batch_fill_next_token_bitmask=recorder.timed("fill", self._fill))
            self._xgrammar = Proxy(self._xgrammar, apply_token_bitmask_inplace=recorder.timed(
                "apply", self._xgrammar.apply_token_bitmask_inplace))
            self.pending = None  # (rows, future) of a fill started before the forward (the experiment)
            recorder.grammar = self

        def mask(self, logits, rows):
            recorder.begin_step(rows)
            started = now()
            try:
                if self.pending is not None and self.pending[0] == list(rows):
                    # The experiment: the fill ran during the forward; only its remaining time is waited for.
                    waited = now()
                    recorder.parts["fill_background"] += self.pending[1].result()
                    recorder.parts["fill_wait"] += now() - waited
                    self.pending = None
                    bitmask = self.bitmask[: len(rows)]
                    logits = logits.float()
                    on_cpu = logits.device.type == "cpu"
                    self._xgrammar.apply_token_bitmask_inplace(
                        logits, bitmask if on_cpu else bitmask.to(logits.device))
                    return logits
                if self.pending is not None:  # rows joined: the fill started for the old rows is let finish
                    self.pending[1].result()
                    self.pending = None
                return super().mask(logits, rows)
            finally:
                recorder.parts["mask"] += now() - started

        def accept(self, rows, tokens):
            started = now()
            try:
                super().accept(rows, tokens)
            finally:
                recorder.parts["accept"] += now() - started
            for row in rows:
                recorder.accepted[row] += 1

        def start_fill(self, rows):
            matchers = [self.matchers[row] for row in rows]
            bitmask = self.bitmask[: len(rows)]

            def fill() -> int:
                started = now()
                self._fill(matchers, bitmask)
                return now() - started
            self.pending = (list(rows), recorder.prefetch.submit(fill))

    def keep(self, indices):
        before = len(self.rows)
        started = now()
        real_keep(self, indices)
        elapsed = now() - started
        recorder.parts["keep"] += elapsed
        if len(self.rows) != before:
            recorder.leave_events.append({"rows": before, "ns": elapsed, "during": "decoding"})

    def joined(self, other):
        return recorder.timed("joined", real_joined)(self, other)

    class TimedModel:
        """The model, its forward timed (and on CUDA waited for)."""

        def __init__(self, model):
            self._model = model

        def __getattr__(self, name):
            return getattr(self._model, name)

        def __call__(self, *args, **kwargs):
            started = now()
            try:
                output = self._model(*args, **kwargs)
                if recorder.sync_cuda:
                    torch.cuda.synchronize()
                return output
            finally:
                recorder.parts["forward"] += now() - started

    def step(self, model, tokens, cache_argument):
        started = now()
        try:
            if recorder.prefetch is not None and recorder.grammar is not None:
                recorder.timed("fill_start", recorder.grammar.start_fill)(self.rows)
            real_step(self, TimedModel(model), tokens, cache_argument)
        finally:
            recorder.parts["step"] += now() - started
            recorder.batch = self

    real_choose, real_prefill = judge._choose, judge._prefill

    def choose(logits):
        started = now()
        tokens = real_choose(logits)
        recorder.parts["choose"] += now() - started
        if recorder.forced is not None:
            tokens = [recorder.forced[row][recorder.accepted[row]] for row in recorder.rows]
        return tokens

    backend.BatchGrammar = TimedGrammar
    backend.DecodingBatch.keep, backend.DecodingBatch.joined, backend.DecodingBatch.step = keep, joined, step
    judge._choose, judge._prefill = choose, recorder.timed("prefill", real_prefill)
    try:
        yield
    finally:
        recorder.end_step()
        backend.BatchGrammar = real_grammar
        backend.DecodingBatch.keep, backend.DecodingBatch.joined, backend.DecodingBatch.step = (
            real_keep, real_joined, real_step)
        del judge._choose, judge._prefill


def keep_freed_memory() -> bool:
    """glibc gives every buffer over its mmap threshold (at most 32 MiB) back to the system when it is freed, so the
    next one of that size is page-faulted in again: Gemma's logits at 32 rows (33.5 MB) cost milliseconds per step
    that way on the CPU, at unpredictable places (the step's bookkeeping, the forward). CUDA's caching allocator does
    not do that, so for host times like a GPU's this process keeps freed memory (mallopt; this process only)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def make_requests(count: int) -> list:
    from PIL import Image

    from localjudge.judge import JudgeRequest
    from localjudge.judge.prompts import prompt_template, render

    template = prompt_template("masked")
    requests = []
    for row in imagenet_rows(count):
        with Image.open(row["path"]) as image:
            picture = image.convert("RGB").resize((448, 448))
        requests.append(JudgeRequest(image=picture, label=row["class_name"],
                                     prompt=render(template, row["class_name"])))
    return requests


def answer_tokens(judge, requests) -> list[list[int]]:
    """One realistic answer per request (cycling through ANSWERS), tokenized, ending with an end token."""
    end = sorted(judge._eos_ids)[0]
    return [judge.processor.tokenizer.encode(json.dumps({**ANSWERS[i % len(ANSWERS)], "evaluation": ANSWERS[
        i % len(ANSWERS)]["evaluation"].format(label=r.label.replace("_", " "))}), add_special_tokens=False) + [end]
        for i, r in enumerate(requests)]


def measure_compile(judge, repeats: int) -> dict:
    """TokenizerInfo and the schema's compilation, as TransformersJudge.__init__ makes them."""
    import xgrammar

    from localjudge.judge.parsing import JUDGMENT_SCHEMA

    schema = json.dumps(JUDGMENT_SCHEMA)
    info_ns, compile_ns = [], []
    for _ in range(repeats):
        started = now()
        info = xgrammar.TokenizerInfo.from_huggingface(
            judge.processor.tokenizer, vocab_size=judge.model.config.get_text_config().vocab_size,
            stop_token_ids=sorted(judge._eos_ids))
        info_ns.append(now() - started)
        started = now()
        compiler = xgrammar.GrammarCompiler(info)
        compiler.compile_json_schema(schema, any_whitespace=False)
        compile_ns.append(now() - started)
    started = now()
    compiler.compile_json_schema(schema, any_whitespace=False)
    same_compiler = now() - started
    started = now()
    xgrammar.GrammarCompiler(info).compile_json_schema(schema, any_whitespace=False)
    new_compiler = now() - started
    return {"tokenizer_info_ms": quantiles(info_ns)["median"], "compile_ms": quantiles(compile_ns)["median"],
            "tokenizer_info_all_ms": [ms(v) for v in info_ns], "compile_all_ms": [ms(v) for v in compile_ns],
            "recompile_same_compiler_ms": ms(same_compiler), "compile_new_compiler_same_info_ms": ms(new_compiler),
            "vocab_size": info.vocab_size, "tokenizer_len": len(judge.processor.tokenizer)}


def choose_host_part(judge, rows: int, repeats: int = 200) -> float:
    """The real _choose on rows x 1,024 logits, the placeholder ids moved below 1,024: its launch and Python cost
    without the reduction over the whole vocabulary (which a GPU runs as a kernel)."""
    import torch

    placeholders = judge._placeholders
    judge._placeholders = list(range(len(placeholders)))
    try:
        logits = torch.randn(rows, 1024, device=judge.device)
        times = []
        for _ in range(repeats):
            copy = logits.clone()
            started = now()
            judge._choose(copy)
            times.append(now() - started)
    finally:
        judge._placeholders = placeholders
    return quantiles(times)["median"]


def run_decoding(judge, requests, steps: int, source: str, leave_events: int, sync_cuda: bool,
                 prefetch: bool = False) -> dict:
    """The judge's _decode on `requests` with max_rows = len(requests) for `steps` tokens, parts timed; then
    `leave_events` rows dropped from the live batch one at a time with DecodingBatch.keep."""
    import torch

    recorder = Recorder(sync_cuda)
    judge.max_rows, judge.max_new_tokens = len(requests), steps
    if source == "answers":
        recorder.forced = dict(enumerate(answer_tokens(judge, requests)))
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = prefetch and len(cpus) >= 2
    if prefetch:
        # The fill thread and this one on CPUs of their own: on a few busy cores the scheduler otherwise lets the
        # woken fill thread take this thread's core, and this thread waits the fill's length for it (measured: the
        # step's torch.cat 0.13 -> 2.2 ms on 2 loaded cores; pinned, 0.15 ms). xgrammar releases the GIL in the fill.
        recorder.prefetch = ThreadPoolExecutor(1, thread_name_prefix="fill", initializer=(
            (lambda: os.sched_setaffinity(0, {cpus[1]})) if pinned else None))
        if pinned:
            os.sched_setaffinity(0, {cpus[0]})
    started = now()
    try:
        with instrumented(judge, recorder), torch.inference_mode():
            judge._decode(requests)
    finally:
        if recorder.prefetch is not None:
            recorder.prefetch.shutdown()
        if pinned:
            os.sched_setaffinity(0, set(cpus))
    wall = now() - started
    batch = recorder.batch
    with torch.inference_mode():
        while batch is not None and len(batch.rows) > 1 and leave_events > 0:
            before = len(batch.rows)
            started = now()
            batch.keep(list(range(before - 1)))
            recorder.leave_events.append({"rows": before, "ns": now() - started, "during": "after"})
            leave_events -= 1
    full = [s for s in recorder.steps if s["rows"] == len(requests)]
    result = {"rows": len(requests), "source": source, "steps": len(recorder.steps), "full_steps": len(full),
              "prefetch": prefetch, "pinned": pinned,
              "wall_s": wall / 1e9, "prefill_ms": ms(recorder.totals["prefill"]),
              "keep_event_ms": quantiles([e["ns"] for e in recorder.leave_events]),
              "keep_events_during_decoding": sum(e["during"] == "decoding" for e in recorder.leave_events)}
    host_part = choose_host_part(judge, len(requests))
    for step in full:
        step["gpu_equiv"] = step["host"] - step["choose"] + host_part * 1e6
    result["choose_host_part_ms"] = host_part
    for name in ("fill", "fill_wait", "fill_start", "fill_background", "apply", "choose", "accept", "bookkeeping",
                 "other", "host", "gpu_equiv", "forward"):
        result[name] = quantiles([s[name] for s in full])
    result["tokens_per_answer"] = statistics.mean(len(t) for t in answer_tokens(judge, requests))
    return result


def fill_threads(judge, requests, steps: int, settings: list, grammar=None) -> dict:
    """The batch fill along realistic answers (matchers walked with batch_accept_token, no model): median and p90
    per step for each BatchGrammarMatcher thread setting, and one matcher at a time (the cost per row)."""
    import xgrammar

    grammar = grammar or judge._grammar
    answers = answer_tokens(judge, requests)
    steps = min(steps, min(len(a) for a in answers) - 1)
    results = {}
    for setting in settings + ["serial"]:
        matchers = [xgrammar.GrammarMatcher(grammar) for _ in requests]
        bitmask = xgrammar.allocate_token_bitmask(len(requests), judge._vocab_size)
        batch = xgrammar.BatchGrammarMatcher(setting) if setting != "serial" else None
        times = []
        for position in range(steps):
            started = now()
            if batch is None:
                for index, matcher in enumerate(matchers):
                    matcher.fill_next_token_bitmask(bitmask, index)
            else:
                batch.batch_fill_next_token_bitmask(matchers, bitmask)
            times.append(now() - started)
            accepted = xgrammar.BatchGrammarMatcher.batch_accept_token(
                matchers, [answer[position] for answer in answers])
            if not all(accepted):
                raise RuntimeError("a realistic answer was rejected by the grammar")
        results[str(setting)] = quantiles(times)
    results["per_row_us"] = results["serial"]["median"] * 1000 / len(requests)
    return results


def grammar_without_max_length(judge):
    """The judgment schema without its strings' maxLength, compiled as the judge compiles it (an experiment)."""
    import copy

    import xgrammar

    from localjudge.judge.parsing import JUDGMENT_SCHEMA

    schema = copy.deepcopy(JUDGMENT_SCHEMA)
    for field in schema["properties"].values():
        field.pop("maxLength", None)
    info = xgrammar.TokenizerInfo.from_huggingface(
        judge.processor.tokenizer, vocab_size=judge.model.config.get_text_config().vocab_size,
        stop_token_ids=sorted(judge._eos_ids))
    return xgrammar.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)


def fmt(q: dict | None, width: int = 11) -> str:
    if not q or q.get("median") is None:
        return "-".rjust(width)
    return f"{q['median']:.2f}/{q['p90']:.2f}".rjust(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlms", type=Path, help="a folder with tiny-qwen2.5-vl and tiny-gemma3 (built into a "
                        "temporary folder when not given or missing)")
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=64, help="timed steps per batch (default 64)")
    parser.add_argument("--sources", nargs="+", choices=["answers", "model"], default=["answers", "model"])
    parser.add_argument("--compile-repeats", type=int, default=3)
    parser.add_argument("--leave-events", type=int, default=8)
    parser.add_argument("--no-experiments", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch's CPU threads (default 1: on a few "
                        "shared cores, more threads make the CPU-side argmax and forward times erratic)")
    parser.add_argument("--raw-malloc", action="store_true", help="leave glibc's malloc as it is (see "
                        "keep_freed_memory)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the tables")
    args = parser.parse_args(argv)

    import torch

    from localjudge.judge.transformers_backend import TransformersJudge
    from localjudge.testing.tiny_vlms import build_tiny_vlms

    torch.set_num_threads(args.torch_threads)
    malloc_tuned = False if args.raw_malloc else keep_freed_memory()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    begun = time.perf_counter()
    temporary = None
    vlms = args.vlms
    if vlms is None or not all((vlms / name).is_dir() for name in FAMILIES.values()):
        if vlms is None:
            temporary = tempfile.TemporaryDirectory(prefix="bench-judge-steps-")
            vlms = Path(temporary.name)
        log(f"building the tiny real-vocabulary VLMs into {vlms}")
        build_tiny_vlms(vlms, "real")
    requests = make_requests(max(args.batches))
    results = {"target_ms": TARGET_MS, "anchor_ms": ANCHOR_MS, "device": args.device,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_average": os.getloadavg()[0], "malloc_keeps_freed_memory": malloc_tuned,
               "xgrammar_auto_threads": max(1, (os.cpu_count() or 2) // 2), "families": {}}
    sync_cuda = args.device.startswith("cuda")
    for family in args.families:
        log(f"{family}: loading the judge")
        started = now()
        judge = TransformersJudge(vlms / FAMILIES[family], device=args.device, max_new_tokens=args.max_new_tokens,
                                  max_rows=max(args.batches))
        entry = {"judge_load_s": (now() - started) / 1e9}
        log(f"{family}: grammar compilation x{args.compile_repeats}")
        entry["compile"] = measure_compile(judge, args.compile_repeats)
        run_decoding(judge, requests[:2], 3, "model", 0, sync_cuda)  # warm-up, not reported
        entry["decoding"] = []
        for source in args.sources:
            for rows in args.batches:
                log(f"{family}: decoding, {source}, {rows} rows")
                run = run_decoding(judge, requests[:rows], args.max_new_tokens, source, args.leave_events, sync_cuda)
                entry["decoding"].append(run)
        if not args.no_experiments:
            rows = max(args.batches)
            log(f"{family}: experiments at {rows} rows")
            entry["fill_threads"] = fill_threads(judge, requests[:rows], args.max_new_tokens, [1, 2, "auto"])
            entry["fill_without_max_length"] = fill_threads(judge, requests[:rows], args.max_new_tokens, [],
                                                            grammar=grammar_without_max_length(judge))
            entry["prefetch"] = run_decoding(judge, requests[:rows], args.max_new_tokens, "answers", 0, sync_cuda,
                                             prefetch=True)
        results["families"][family] = entry
        del judge
    results["seconds"] = time.perf_counter() - begun
    if temporary is not None:
        temporary.cleanup()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results)
    return 0


def with_keep_events(run: dict) -> float | None:
    """The median host total per step plus the keep events amortized over the answers' length (event x rows / answer
    tokens)."""
    host = run["host"]["median"]
    if host is None:
        return None
    return host + (run["keep_event_ms"]["median"] or 0.0) * run["rows"] / run["tokens_per_answer"]


def print_tables(results: dict) -> None:
    print(f"Structured decoding at real vocabulary size: {results['device']}, {results['cpu_count']} CPUs "
          f"(torch threads {results['torch_threads']}, xgrammar fill threads 'auto' = "
          f"{results['xgrammar_auto_threads']}, load average {results['load_average']:.2f} at the start, freed "
          f"memory kept: {'yes' if results['malloc_keeps_freed_memory'] else 'no'})")
    print(f"Target: host side <= {TARGET_MS} ms per step at 32 rows ({TARGET_MS / ANCHOR_MS:.0%} of a 7B judge's "
          f"~{ANCHOR_MS:.0f} ms step on one H100).\n")
    print("1. Per judge load (ms; TokenizerInfo and compile: median of fresh ones)")
    print(f"{'family':<11}{'vocab':>9}{'tokens':>9}{'TokenizerInfo':>15}{'compile':>9}{'again,same':>12}"
          f"{'new compiler':>14}{'judge load':>12}")
    for family, entry in results["families"].items():
        c = entry["compile"]
        print(f"{family:<11}{c['vocab_size']:>9}{c['tokenizer_len']:>9}{c['tokenizer_info_ms']:>15.0f}"
              f"{c['compile_ms']:>9.0f}{c['recompile_same_compiler_ms']:>12.2f}"
              f"{c['compile_new_compiler_same_info_ms']:>14.0f}{entry['judge_load_s'] * 1000:>12.0f}")
    print("   'again,same': the same schema again on the same GrammarCompiler (its cache); 'new compiler': a new "
          "GrammarCompiler on the same TokenizerInfo (no cache across compilers).\n")
    print("2. Per decoding step, ms median/p90 over the steps with all rows writing (n = such steps)")
    head = (f"{'family':<11}{'tokens':<8}{'rows':>4}{'n':>4}{'a fill':>11}{'b apply*':>11}{'c choose*':>11}"
            f"{'c host':>8}{'d accept':>11}{'e keep+bk':>11}{'other':>11}{'host a+c+d+e':>14}{'+keep/ev':>9}"
            f"{'GPU-equiv':>11}{'forward':>14}{'<=2.5?':>9}")
    print(head)
    for family, entry in results["families"].items():
        for run in entry["decoding"]:
            measured, gpu = with_keep_events(run), run["gpu_equiv"]["median"]
            meets = "" if run["rows"] != 32 or gpu is None else "/".join(
                "yes" if value <= TARGET_MS else "NO" for value in (measured, gpu))
            print(f"{family:<11}{run['source']:<8}{run['rows']:>4}{run['full_steps']:>4}{fmt(run['fill'])}"
                  f"{fmt(run['apply'])}{fmt(run['choose'])}{run['choose_host_part_ms']:>8.3f}{fmt(run['accept'])}"
                  f"{fmt(run['bookkeeping'])}{fmt(run['other'])}{fmt(run['host'], 14)}"
                  f"{_num(measured, 9)}{fmt(run['gpu_equiv'])}{fmt(run['forward'], 14)}{meets:>9}")
    print("   * b apply and the argmax inside c choose run on the CPU here; on a GPU they are kernels on the device's "
          "logits (device time). 'c host': the real _choose on rows x 1,024 logits (its launch/Python part).\n"
          "   host a+c+d+e: per step, b and the forward excluded. '+keep/ev': its median plus keep events amortized "
          "(event x rows / answer tokens).\n   'GPU-equiv': per step a+c+d+e with c replaced by 'c host', without keep "
          "events\n"
          "   (on the CPU a keep event is mostly copying the cache, device work on a GPU; its host part there is ~2 "
          "launches per layer).\n"
          "   forward: the tiny model's, for context only. '<=2.5?' at 32 rows: +keep/ev / GPU-equiv.")
    for family, entry in results["families"].items():
        for run in entry["decoding"]:
            if run["rows"] != 32 or run["gpu_equiv"]["median"] is None:
                continue
            parts = {name: run[name]["median"] for name in ("fill", "accept", "bookkeeping", "other")}
            parts["choose (host part)"] = run["choose_host_part_ms"]
            largest = max(parts, key=parts.get)
            print(f"   {family}, {run['source']}, 32 rows: GPU-equiv {run['gpu_equiv']['median']:.2f} ms "
                  f"({'meets' if run['gpu_equiv']['median'] <= TARGET_MS else 'misses'} <= {TARGET_MS} ms); largest "
                  f"part {largest} {parts[largest]:.2f} ms ({parts[largest] / sum(parts.values()):.0%} of the parts)")
    print("\n   Leaving rows (DecodingBatch.keep, one row dropped), ms median/p90 per event:")
    for family, entry in results["families"].items():
        line = ", ".join(f"{r['source']} {r['rows']} rows {fmt(r['keep_event_ms'], 0)} (n={r['keep_event_ms']['n']})"
                         for r in entry["decoding"] if r["keep_event_ms"]["n"])
        print(f"   {family}: {line}")
    if any("fill_threads" in e for e in results["families"].values()):
        print("\n3. Experiments at the largest batch (ms median/p90 per step)")
        for family, entry in results["families"].items():
            if "fill_threads" not in entry:
                continue
            f = entry["fill_threads"]
            p = entry["prefetch"]
            rows = p["rows"]
            print(f"   {family}: batch fill on 1 thread {fmt(f['1'], 0)}, 2 threads {fmt(f['2'], 0)}, 'auto' "
                  f"{fmt(f['auto'], 0)}, one matcher at a time {fmt(f['serial'], 0)} = {f['per_row_us']:.0f} us/row "
                  f"-> on 8 threads ~{f['per_row_us'] * rows / 8 / 1000:.2f} ms, on 16 "
                  f"~{f['per_row_us'] * rows / 16 / 1000:.2f} ms")
            print(f"   {family}: fill started before the forward on a background thread"
                  f"{' (pinned to its own CPU)' if p['pinned'] else ''}: submit {fmt(p['fill_start'], 0)}, visible "
                  f"wait {fmt(p['fill_wait'], 0)} (fill itself {fmt(p['fill_background'], 0)}), host total "
                  f"{fmt(p['host'], 0)}, GPU-equiv {fmt(p['gpu_equiv'], 0)}, forward {fmt(p['forward'], 0)}")
            n = entry["fill_without_max_length"]
            print(f"   {family}: the schema without maxLength (not the product's): one matcher at a time "
                  f"{fmt(n['serial'], 0)} = {n['per_row_us']:.0f} us/row (with maxLength {f['per_row_us']:.0f})")
    print(f"\n{results['seconds']:.0f} s in all.")


def _num(value: float | None, width: int) -> str:
    return "-".rjust(width) if value is None else f"{value:.2f}".rjust(width)


if __name__ == "__main__":
    sys.exit(main())
