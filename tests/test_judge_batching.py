"""Batched judging on the transformers backend: rows still writing when most of the batch has finished are stopped
and continued from what they wrote (recompute preemption). Answers must be those of judging one at a time."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from localjudge.judge import JudgeRequest
from localjudge.judge.prompts import prompt_template, render
from localjudge.judge.transformers_backend import StopForStragglers, TransformersJudge


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


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_batched_answers_equal_one_at_a_time_answers(family, tiny_vlms, requests_):
    judge = TransformersJudge(tiny_vlms[family], device="cpu", max_new_tokens=256)
    rounds = []
    generate = judge._generate

    def recorded(inputs, written, budget):  # observe the rounds; the generation itself is untouched
        rounds.append((len(written), len(written[0])))
        return generate(inputs, written, budget)

    judge._generate = recorded
    batched = judge.judge(requests_)
    assert rounds[0] == (16, 0)
    if family == "qwen2_5_vl":  # its answers end at different lengths (most of tiny Gemma's run to the cap)
        assert len(rounds) > 1 and rounds[1][1] > 0  # the stragglers were continued from what they wrote
    one_by_one = [judge.judge([r])[0] for r in requests_]
    assert [o.raw_text for o in batched] == [o.raw_text for o in one_by_one]
    assert [o.output_tokens for o in batched] == [o.output_tokens for o in one_by_one]
    assert [o.finished for o in batched] == [o.finished for o in one_by_one]
    assert [o.input_tokens for o in batched] == [o.input_tokens for o in one_by_one]  # the prompt, not the prefix


def test_stop_for_stragglers_stops_the_batch_only_when_few_rows_still_write():
    eos = {7}
    stop = StopForStragglers(prompt_length=2, eos_ids=eos, keep=1)
    prompt = [[1, 1]] * 4
    two_writing = torch.tensor([p + w for p, w in zip(prompt, [[3, 7], [3, 4], [7, 0], [3, 4]])])
    one_writing = torch.tensor([p + w for p, w in zip(prompt, [[3, 7], [3, 7], [7, 0], [3, 4]])])
    none_writing = torch.tensor([p + w for p, w in zip(prompt, [[3, 7], [3, 7], [7, 0], [7, 0]])])
    assert not stop(two_writing, None).any()
    assert stop(one_writing, None).all()
    assert not stop(none_writing, None).any()  # all finished: generate's own end-of-sequence check stops it
