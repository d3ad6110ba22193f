"""Batched judging on the transformers backend: our own decoding loop, in which a row whose answer has ended leaves
the batch. Its answers must be those of judging one at a time, and those of transformers' own generate()."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from localjudge.judge import JudgeRequest
from localjudge.judge.prompts import prompt_template, render
from localjudge.judge.transformers_backend import TransformersJudge


@pytest.fixture(scope="module")
def requests_(data_dir):
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:16]
    requests = []
    for row in rows:
        image = Image.open(data_dir / "imagenet-sample" / row["file"]).convert("RGB").resize((448, 448))
        label = row["class_name"]
        requests.append(JudgeRequest(image=image, label=label, prompt=render(prompt_template("masked"), label)))
    return requests


def batch_sizes_seen(judge: TransformersJudge) -> tuple[list[int], object]:
    """The batch size of every forward pass of the model (observed through a forward hook, nothing replaced)."""
    sizes: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        sizes.append(ids.shape[0])

    return sizes, judge.model.register_forward_pre_hook(hook, with_kwargs=True)


# Answer caps: tiny Qwen's answers end at different lengths below 256 tokens; most of tiny Gemma's run to any cap, and
# each of its steps scores 262,208 tokens per row, so a short cap keeps the suite's time (the lengths still differ
# where rows are dropped: the cap is what ends them).
CAP = {"qwen2_5_vl": 256, "gemma3": 64}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_batched_answers_equal_one_at_a_time_answers(family, tiny_vlms, requests_):
    judge = TransformersJudge(tiny_vlms[family], device="cpu", max_new_tokens=CAP[family], max_rows=16)
    sizes, handle = batch_sizes_seen(judge)
    batched = judge.judge(requests_)
    handle.remove()
    assert sizes[0] == 16 and sizes == sorted(sizes, reverse=True)
    if family == "qwen2_5_vl":  # its answers end at different lengths (most of tiny Gemma's run to the cap)
        assert sizes[-1] < 16 and any(o.finished for o in batched)  # rows whose answer ended left the batch
    assert len(sizes) == max(o.output_tokens for o in batched)  # one prefill, then one pass per further token
    judge.max_rows = 1
    one_by_one = [judge.judge([r])[0] for r in requests_]
    assert [o.raw_text for o in batched] == [o.raw_text for o in one_by_one]
    assert [o.output_tokens for o in batched] == [o.output_tokens for o in one_by_one]
    assert [o.finished for o in batched] == [o.finished for o in one_by_one]
    assert [o.input_tokens for o in batched] == [o.input_tokens for o in one_by_one]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_waiting_requests_join_as_answers_end(family, tiny_vlms, requests_):
    """16 requests, at most 5 written at once. Qwen2.5-VL's cache holds whole sequences, so new requests are
    prefilled and join the running batch once a quarter of its places are free; Gemma-3's sliding-window layers keep
    per-row windows, so its requests start in groups once the batch has emptied. Either way the answers are those
    of one at a time."""
    judge = TransformersJudge(tiny_vlms[family], device="cpu", max_new_tokens=min(192, CAP[family]), max_rows=5)
    calls: list[tuple[int, int]] = []  # (batch size, tokens per row) of every forward pass

    def hook(module, args, kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))

    handle = judge.model.register_forward_pre_hook(hook, with_kwargs=True)
    together = judge.judge(requests_)
    handle.remove()
    assert max(size for size, _ in calls) <= 5
    prefills = [size for size, length in calls if length > 1]
    assert sum(prefills) == 16
    if family == "qwen2_5_vl":
        assert len(prefills) > 16 // 5 + 1  # requests joined a running batch, in small groups
    else:
        assert prefills == [5, 5, 5, 1]
    judge.max_rows = 1
    alone = [judge.judge([r])[0] for r in requests_]
    assert [o.raw_text for o in together] == [o.raw_text for o in alone]
    assert [(o.output_tokens, o.finished, o.input_tokens) for o in together] == [
        (o.output_tokens, o.finished, o.input_tokens) for o in alone]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_decoding_loop_writes_what_generate_writes(family, tiny_vlms, requests_):
    """The reference: transformers' generate() with xgrammar's own logits processor, on the same prompts."""
    from xgrammar.contrib.hf import LogitsProcessor

    judge = TransformersJudge(tiny_vlms[family], device="cpu", max_new_tokens=128)
    ours = judge.judge(requests_[:3])
    for request, output in zip(requests_[:3], ours):
        # transformers' documented multimodal path: the template rendered and tokenized with the image in one call
        conversation = [{"role": "user", "content": [{"type": "image", "image": request.image},
                                                     {"type": "text", "text": request.prompt}]}]
        inputs = judge.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True, return_tensors="pt")
        generated = judge.model.generate(**inputs, max_new_tokens=128, do_sample=False,
                                         logits_processor=[LogitsProcessor(judge._grammar)],
                                         suppress_tokens=judge._placeholders or None)
        tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()
        assert len(tokens) == output.output_tokens
        assert judge.processor.tokenizer.decode(tokens, skip_special_tokens=True) == output.raw_text


def test_a_batch_handed_over_while_answers_are_written_joins_them(tiny_vlms, requests_):
    """One continuous decoder across calls: a second batch handed over while the first is being written takes the
    free places at once (a per-call judge would run the first batch's rows alone until the last ended), and every
    answer is the one of judging one at a time."""
    judge = TransformersJudge(tiny_vlms["qwen2_5_vl"], device="cpu", max_new_tokens=64, max_rows=8)
    steps: list[int] = []  # the rows of every decoding step (one token each)

    def hook(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            steps.append(kwargs["input_ids"].shape[0])

    handle = judge.model.register_forward_pre_hook(hook, with_kwargs=True)
    decoder = judge.continuous()
    first = decoder.submit(requests_[:6])
    for _ in range(5):
        decoder.step()
    assert set(steps) == {6}  # the first call's rows, alone so far
    second = decoder.submit(requests_[6:12])
    outputs = {}
    while decoder.busy:
        for index in decoder.step():
            outputs[index] = decoder.take(index)
    handle.remove()
    assert steps[5] == 8  # two of the second call's requests joined the first's rows at once
    assert sorted(outputs) == first + second
    assert sum(seconds for _, seconds in outputs.values()) > 0
    judge.max_rows = 1
    alone = [judge.judge([r])[0] for r in requests_[:12]]
    assert [outputs[i][0] for i in first + second] == alone


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_masks_filled_during_the_forward_give_the_same_answers(family, tiny_vlms, requests_):
    """On a GPU the next step's grammar masks are filled on a thread while the forward runs (forced here on the
    CPU): the answers are those of filling them in line, rows joining and leaving included."""
    judge = TransformersJudge(tiny_vlms[family], device="cpu", max_new_tokens=48, max_rows=4)
    assert not judge.overlap_grammar  # on a CPU the fill stays in line by default
    in_line = judge.judge(requests_[:8])
    overlapped = TransformersJudge(tiny_vlms[family], device="cpu", max_new_tokens=48, max_rows=4,
                                   overlap_grammar=True)
    decoder = overlapped.continuous()
    indices = decoder.submit(requests_[:8])
    steps = 0
    while decoder.busy:
        decoder.step()
        steps += 1
    assert decoder.grammar.prefetched > steps // 2  # most steps' masks were filled during the forward
    assert [overlapped.output(*decoder.answer(i)) for i in indices] == in_line
    overlapped.close()


def test_a_decoder_crash_keeps_the_answers_that_had_ended(tiny_vlms_bpe512, data_dir, tmp_path):
    """A crash in the middle of decoding (a stand-in for CUDA running out of memory: a forward hook on the VLM, a
    torch module, raises at one decoding step) fails only the answers that had not ended: those that had are stored
    as written, and the next run judges only the failed ones."""
    import sqlite3

    from localjudge.pipeline import open_audit
    from localjudge.pipeline.local import run_local

    from .conftest import seg_photos_manifest

    manifest = seg_photos_manifest(data_dir, tmp_path / "photos.csv", 12)
    db = tmp_path / "crash.db"
    options = dict(vlm=str(tiny_vlms_bpe512["qwen2_5_vl"]), judge="transformers", device="cpu", max_num_seqs=4,
                   judge_batch_size=12, max_new_tokens=40)
    audit = open_audit(db, manifest, ("ingest", "predict", "explain", "judge"), show_progress=False, **options)
    steps = []

    def out_of_memory(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:  # a decoding step (one token a row), not a prefill
            steps.append(1)
            if len(steps) == 50:  # the first four rows ended by step 40; the next four are being written
                raise RuntimeError("CUDA out of memory (stand-in)")

    handle = audit.judge_model().model.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        with audit.recorded("run", str(manifest)):
            run_local(audit, manifest)
    finally:
        handle.remove()
        audit.store.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select failure_kind, error, raw_text from judgments").fetchall()
        written = dict(conn.execute("select saliency_id, raw_text from judgments where error is null or error "
                                    "not like '%out of memory%'").fetchall())
    crashed = [r for r in rows if r[1] and "out of memory" in r[1]]
    kept = [r for r in rows if not (r[1] and "out of memory" in r[1])]
    assert len(rows) == 12 and len(kept) >= 4 and crashed  # one batch of 12: before, all 12 were failures
    assert all(r[2] for r in kept) and all(r[0] == "backend" for r in crashed)
    # the answers kept are the ones a run without the crash writes, token for token
    clean = tmp_path / "clean.db"
    audit = open_audit(clean, manifest, ("ingest", "predict", "explain", "judge"), show_progress=False, **options)
    with audit.recorded("run", str(manifest)):
        run_local(audit, manifest)
    audit.store.close()
    with sqlite3.connect(clean) as conn:
        uncrashed = dict(conn.execute("select saliency_id, raw_text from judgments").fetchall())
    assert {sid: uncrashed[sid] for sid in written} == written

    again = open_audit(db, manifest, ("ingest", "predict", "explain", "judge"), show_progress=False, **options)
    with again.recorded("run", str(manifest)):
        stages = run_local(again, manifest)
    again.store.close()
    assert stages["judge"].computed == len(crashed)  # only the failed ones are judged again
    with sqlite3.connect(db) as conn:
        left = conn.execute("select count(*) from judgments where error like '%out of memory%'").fetchone()[0]
    assert left == 0
