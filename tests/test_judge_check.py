"""`eval judge-check`: known-answer canaries and the reliability card, on real judges over real stored maps: the
recognizer, a tiny random VLM (its text is noise: it must come out unusable, and the card must say why), and a
loopback server that answers 5 to everything (it must fail the blank and absent-class canaries)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from localjudge.pipeline.judge_check import reliability_card

from .conftest import invoke, invoke_json, no_network, seg_photos_manifest


@pytest.fixture(scope="module")
def audited(tmp_path_factory, data_dir):
    """Six seg-photos predicted and explained by EfficientNet-Lite0, judged by the recognizer."""
    folder = tmp_path_factory.mktemp("judge-check")
    manifest = seg_photos_manifest(data_dir, folder / "six.csv", 6)
    db = folder / "audit.db"
    invoke("run", manifest, "--db", db)
    return db


def copy(db, tmp_path):
    from .conftest import copy_db

    return copy_db(db, tmp_path / "copy.db")


def test_the_recognizer_gets_a_card_that_is_stored_and_shown(audited, tmp_path):
    db = copy(audited, tmp_path)
    result = invoke("run", audited.parent / "six.csv", "--db", db)
    assert "has not been checked" in result.stderr
    card = invoke_json("eval", "judge-check", "--db", db, "--sample", "6")
    assert card["judge_model"] == "recognizer:efficientnet-lite2" and card["sample"] == 6
    assert card["canaries"]["blank"]["rate"] >= 0.9 and card["canaries"]["absent_class"]["rate"] >= 0.9
    assert set(card["canaries"]) == {"blank", "full_view", "absent_class", "paraphrase", "mask_sensitivity",
                                     "batch_invariance"}
    inverse = card["inverse_mask"]
    assert inverse["maps"] == 6 and inverse["masked_minus_inverse"] == pytest.approx(
        inverse["masked_mean"] - inverse["inverse_mean"]) and inverse["ci_low"] <= inverse["ci_high"]
    with sqlite3.connect(db) as conn:
        kinds = dict(conn.execute("select kind, count(*) from canary_judgments group by kind").fetchall())
    assert kinds["blank"] == 12 and kinds["absent_class"] == 6 and kinds["paraphrase"] == 18
    again = invoke_json("eval", "judge-check", "--db", db, "--sample", "6")  # nothing asked again
    assert again["canaries"] == card["canaries"]
    with sqlite3.connect(db) as conn:
        assert sum(dict(conn.execute("select kind, count(*) from canary_judgments group by kind").fetchall())
                   .values()) == sum(kinds.values())
    summary = invoke_json("summary", "--db", db)
    assert summary["judge_cards"][0]["verdict"] == card["verdict"]
    compared = invoke_json("compare", "--db", db)
    assert {s["judge_verdict"] for s in compared["settings"]} == {card["verdict"]}
    report = invoke_json("report", "--db", db, "--out", tmp_path / "report")
    assert report["judge_verdicts"] == [["recognizer:efficientnet-lite2", card["verdict"]]]


def test_a_judge_that_always_says_5_fails_the_blank_and_absent_class_canaries(audited, tmp_path):
    from .model_server import ScriptedServer

    db = copy(audited, tmp_path)
    server = ScriptedServer(lists_models=True, answer=lambda n: json.dumps(
        {"evaluation": "yes", "justification": "it is there", "score": 5}))
    try:
        with no_network(allow=server.address) as attempts:
            card = invoke_json("eval", "judge-check", "--db", db, "--sample", "6", "--judge", "openai",
                               "--base-url", server.url)
        assert attempts == []
    finally:
        server.shutdown()
    assert card["verdict"] == "unusable"
    assert card["canaries"]["blank"]["rate"] == 0.0 and card["canaries"]["absent_class"]["rate"] == 0.0
    assert card["canaries"]["full_view"]["rate"] == 1.0  # it does say 5 where 5 is right
    assert card["canaries"]["mask_sensitivity"]["rate"] == 0.0  # the ignored region gets the same 5
    assert any(r.startswith("blank 0.00") for r in card["reasons"])
    assert any(r.startswith("absent_class 0.00") for r in card["reasons"])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_a_tiny_random_vlm_is_unusable_and_the_card_says_why(family, audited, tiny_vlms_bpe512, tmp_path):
    db = copy(audited, tmp_path)
    card = invoke_json("eval", "judge-check", "--db", db, "--sample", "4", "--vlm", tiny_vlms_bpe512[family],
                       "--max-new-tokens", "256")
    assert card["verdict"] == "unusable"
    # why: it scores blank images or absent classes high, or cannot write an answer at all
    assert any(r.split()[0] in ("blank", "absent_class", "full_view") or "answers failed" in r for r in card["reasons"])
    text = invoke("eval", "judge-check", "--db", db, "--sample", "4", "--vlm", tiny_vlms_bpe512[family],
                  "--max-new-tokens", "256").output  # stored: asked nothing again, printed
    assert "verdict: UNUSABLE" in text


def test_judge_check_through_a_real_transformers_serve(audited, tiny_vlms_bpe512, tmp_path):
    """The OpenAI-compatible path against `transformers serve` (which ignores the response format: answers that
    cannot be read pass no canary)."""
    from .conftest import TransformersServer

    db = copy(audited, tmp_path)
    server = TransformersServer(tiny_vlms_bpe512["qwen2_5_vl"], tmp_path)
    try:
        with no_network(allow=server.address) as attempts:
            card = invoke_json("eval", "judge-check", "--db", db, "--sample", "2", "--judge", "openai",
                               "--base-url", server.url, "--max-new-tokens", "64")
        assert attempts == []
    finally:
        server.stop()
    assert card["verdict"] == "unusable" and card["answers"] == 2 * 9 - (2 - card["canaries"]["full_view"]["maps"])


def test_the_verdict_rules_by_hand():
    def answers(kind, scores, variant=""):
        return [{"saliency_id": f"m{n}", "kind": kind, "variant": variant, "status": "ok", "score": s,
                 "raw_text": str(s)} for n, s in enumerate(scores)]

    good = (answers("blank", [0, 0, 1, 0]) + answers("full_view", [5, 4, 5, 5]) + answers("absent_class", [0, 1, 0, 0])
            + answers("paraphrase", [2, 3, 2, 4], "original") + answers("paraphrase", [2, 3, 3, 4], "concise")
            + answers("alone", [2, 3, 2, 4], "original") + answers("inverse_mask", [0, 1, 0, 0]))
    card = reliability_card(good, 3, 0.0)
    assert card["verdict"] == "usable" and card["canaries"]["mask_sensitivity"]["rate"] == 1.0
    assert card["inverse_mask"]["masked_minus_inverse"] == pytest.approx((2 + 2 + 2 + 4) / 4)
    blind = [dict(a, score=[2, 3, 2, 4][int(a["saliency_id"][1])]) if a["kind"] == "inverse_mask" else a for a in good]
    found = reliability_card(blind, 3, 0.0)  # the ignored region answered as the attended one: the mask is not read
    assert found["verdict"] == "doubtful" and found["reasons"] == ["mask_sensitivity 0.00 < 0.5"]
    concise = reliability_card(good, 3, 0.0, prompt_style="concise")  # compared with the run's own prompt style
    assert concise["inverse_mask"]["masked_mean"] == pytest.approx((2 + 3 + 3 + 4) / 4)
    coin = [dict(a, score=5) if a["kind"] == "blank" and a["saliency_id"] in ("m0", "m1", "m2") else a for a in good]
    assert reliability_card(coin, 3, 0.0)["verdict"] == "unusable"  # blank 0.25 < 0.5
    shaky = [dict(a, score=4) if a["kind"] == "absent_class" and a["saliency_id"] == "m0" else a for a in good]
    found = reliability_card(shaky, 3, 0.0)
    assert found["verdict"] == "doubtful" and found["reasons"] == ["absent_class 0.75 < 0.8"]
