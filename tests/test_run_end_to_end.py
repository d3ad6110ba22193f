"""Acceptance: `localjudge run` on the 70 real seg-photos plus three unreadable files, judged once by a tiny
Qwen2.5-VL and once by a tiny Gemma3, then run again."""

from __future__ import annotations

import sqlite3

import pytest

from localjudge.store import Store

from .conftest import invoke_json, no_network

FAMILIES = ("qwen2_5_vl", "gemma3")
READABLE = 70


@pytest.fixture(scope="module")
def audit(tmp_path_factory, seg_manifest, tiny_vlms_bpe512):
    db = tmp_path_factory.mktemp("e2e") / "audit.db"

    def command(family):
        # 1024 new tokens leave room for the schema's longest answer, so most tiny-model answers complete.
        return ["run", seg_manifest, "--db", db, "--vlm", tiny_vlms_bpe512[family], "--max-new-tokens", "1024"]

    first, network = {}, {}
    for family in FAMILIES:
        with no_network() as attempts:
            first[family] = invoke_json(*command(family))
        network[family] = list(attempts)
    counts_before = Store(db).row_counts()
    second = {family: invoke_json(*command(family)) for family in FAMILIES}
    counts_after = Store(db).row_counts()
    return {"db": db, "first": first, "second": second, "network": network,
            "counts_before": counts_before, "counts_after": counts_after, "command": command}


def test_three_read_errors_name_the_files(audit, bad_files):
    summary = invoke_json("summary", "--db", audit["db"])
    assert summary["images"] == READABLE
    assert summary["read_errors"] == 3
    reasons = {error["path"].rsplit("/", 1)[-1]: error["reason"] for error in summary["read_error_files"]}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "x.jpg"}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["x.jpg"]
    for family in FAMILIES:  # each run reports the files it could not read, and went on
        reported = audit["first"][family]["ingest"]["errors"]
        assert sorted(e["path"].rsplit("/", 1)[-1] for e in reported) == ["empty.jpg", "truncated.jpg", "x.jpg"]


def test_one_judgment_per_readable_image_per_judge(audit):
    with sqlite3.connect(audit["db"]) as conn:
        rows = conn.execute("select judge_model, count(*), count(distinct image_sha256) from judgments "
                            "group by judge_model").fetchall()
    assert sorted(rows) == [("tiny-gemma3-bpe512", READABLE, READABLE), ("tiny-qwen2.5-vl-bpe512", READABLE, READABLE)]
    for family in FAMILIES:
        assert audit["first"][family]["judge"]["rows"] == READABLE


def test_every_success_has_an_integer_score_and_failures_keep_their_text(audit):
    with sqlite3.connect(audit["db"]) as conn:
        successes = conn.execute("select score, typeof(score), evaluation from judgments where status = 'ok'").fetchall()
        failures = conn.execute("select score, raw_text, error, failure_kind from judgments "
                                "where status = 'failed'").fetchall()
    assert successes, "structured decoding should let some tiny-model answers complete"
    assert all(kind == "integer" and 0 <= score <= 5 and evaluation is not None for score, kind, evaluation in successes)
    # Failures are unreadable answers (kept verbatim), never a crashed backend and never a score.
    assert all(kind == "parse" and score is None and raw is not None and error for score, raw, error, kind in failures)


def test_matrix_counts_sum_to_the_successes(audit):
    matrices = invoke_json("matrix", "--db", audit["db"])["matrices"]
    assert {m["judge_model"] for m in matrices} == {"tiny-qwen2.5-vl-bpe512", "tiny-gemma3-bpe512"}
    with sqlite3.connect(audit["db"]) as conn:
        successes = dict(conn.execute(
            "select judge_model, count(*) from judgments where status = 'ok' group by judge_model").fetchall())
    for m in matrices:
        counts = m["counts"]
        # Every seg-photo carries ImageNet labels, so every success lands in one of the four quadrants.
        assert m["unlabelled"] == {"high": 0, "low": 0}
        assert sum(counts.values()) == m["judgments"] == successes[m["judge_model"]]
        assert abs(sum(m["percent"].values()) - 100.0) < 1e-6


def test_second_run_adds_no_rows_and_loads_no_model(audit):
    assert audit["counts_after"] == audit["counts_before"]
    for family in FAMILIES:
        stages = audit["second"][family]
        assert [name for name, s in stages.items() if s["model_loaded"]] == []
        assert all(s["computed"] == 0 for s in stages.values())


def test_first_run_loaded_the_models_it_needed(audit):
    qwen, gemma = audit["first"]["qwen2_5_vl"], audit["first"]["gemma3"]
    assert qwen["predict"]["model_loaded"] and qwen["explain"]["model_loaded"] and qwen["judge"]["model_loaded"]
    # The second judge reuses the stored predictions and maps: only the judge is loaded.
    assert not gemma["predict"]["model_loaded"] and not gemma["explain"]["model_loaded"]
    assert gemma["judge"]["model_loaded"]


def test_full_run_opens_no_socket(audit):
    assert audit["network"] == {"qwen2_5_vl": [], "gemma3": []}


def test_run_records_every_parameter(audit):
    with sqlite3.connect(audit["db"]) as conn:
        conn.row_factory = sqlite3.Row
        runs = conn.execute("select * from runs where command = 'run'").fetchall()
    assert len(runs) == 2  # one per judge; the repeated commands reused their rows
    import json

    for run in runs:
        config = json.loads(run["config"])
        assert config["alpha"] == 15.0 and config["beta"] == 0.6 and config["model"] == "efficientnet-lite0"
        assert config["max_new_tokens"] == 1024 and config["image_mode"] == "masked"
        # --backend auto, settled on ONNX Runtime where it is installed (the test extra), and recorded as such
        assert config["backend"] == "onnx"
        hashes = json.loads(run["model_hashes"])
        assert hashes["vision"].startswith("localjudge-onnx-v1:sha256:") and hashes["judge"].startswith("sha256:")
        versions = json.loads(run["package_versions"])
        assert versions["torch"] and versions["transformers"] and versions["xgrammar"]
        assert run["status"] == "finished"
