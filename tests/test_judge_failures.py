"""The judge's circuit breaker: an in-process judge whose calls raise (a stand-in for CUDA running out of memory: a
forward hook on the judge's torch module raises) --judge-failure-limit batches in a row stops the run, with what it
judged stored, instead of walking the whole dataset writing failures."""

from __future__ import annotations

import sqlite3

import pytest

from localjudge.judge import JudgeError
from localjudge.pipeline import open_audit
from localjudge.pipeline.local import run_local

from .conftest import seg_photos_manifest

STAGES = ("ingest", "predict", "explain", "judge")


def statuses(db) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select status, error from judgments order by created_at").fetchall()


def run_with_hook(db, manifest, module_of, hook, **options):
    audit = open_audit(db, manifest, STAGES, show_progress=False, **options)
    handle = module_of(audit.judge_model()).register_forward_pre_hook(hook)
    try:
        with audit.recorded("run", str(manifest)):
            return run_local(audit, manifest)
    finally:
        handle.remove()
        audit.store.close()


def failing_calls(which):
    calls = []

    def hook(module, args):
        calls.append(1)
        if which(len(calls)):
            raise RuntimeError("CUDA out of memory (stand-in)")
    return hook


@pytest.fixture(scope="module")
def photos(data_dir, tmp_path_factory):
    return seg_photos_manifest(data_dir, tmp_path_factory.mktemp("breaker") / "photos.csv", 12)


RECOGNIZER = dict(judge="recognizer", backend="torch", device="cpu", judge_batch_size=4, batch_size=4)


def test_a_judge_failing_batch_after_batch_stops_the_run(photos, tmp_path):
    db = tmp_path / "stopped.db"
    with pytest.raises(JudgeError, match="raised 2 times in a row.*out of memory"):
        run_with_hook(db, photos, lambda judge: judge.model.module, failing_calls(lambda n: True), **RECOGNIZER)
    rows = statuses(db)
    assert len(rows) == 8 and all(s == "failed" and "out of memory" in e for s, e in rows)  # 2 of 3 batches


def test_failures_apart_do_not_stop_the_run(photos, tmp_path):
    db = tmp_path / "apart.db"
    run_with_hook(db, photos, lambda judge: judge.model.module, failing_calls(lambda n: n in (1, 3)), **RECOGNIZER)
    rows = statuses(db)
    assert len(rows) == 12 and sum(s == "failed" for s, _ in rows) == 8  # calls 1 and 3 failed, call 2 answered
    limit_one = tmp_path / "limit1.db"
    with pytest.raises(JudgeError, match="raised 1 time in a row"):
        run_with_hook(limit_one, photos, lambda judge: judge.model.module, failing_calls(lambda n: n == 1),
                      judge_failure_limit=1, **RECOGNIZER)
    assert len(statuses(limit_one)) == 4


def test_a_continuous_decoder_crashing_twice_in_a_row_stops_the_run(photos, tiny_vlms_bpe512, tmp_path):
    """The transformers judge's continuous decoder: a crash stores the open batches' answers as failures and a new
    decoder takes the next batch; when that one crashes too, with no batch answered in between, the run stops."""
    db = tmp_path / "continuous.db"

    def every_decoding_step(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            raise RuntimeError("CUDA out of memory (stand-in)")

    audit = open_audit(db, photos, STAGES, show_progress=False, vlm=str(tiny_vlms_bpe512["qwen2_5_vl"]),
                       judge="transformers", device="cpu", judge_batch_size=4, batch_size=4, max_new_tokens=16)
    handle = audit.judge_model().model.register_forward_pre_hook(every_decoding_step, with_kwargs=True)
    try:
        with pytest.raises(JudgeError, match="raised 2 times in a row"):
            with audit.recorded("run", str(photos)):
                run_local(audit, photos)
    finally:
        handle.remove()
        audit.store.close()
    rows = statuses(db)
    assert 8 <= len(rows) < 12 and all(s == "failed" for s, _ in rows)
