"""Prompt styles and the alpha x beta x style sweep: each setting judged once, then read from the store."""

from __future__ import annotations

import sqlite3

import pytest

from localjudge.judge.prompts import PROMPT_STYLES, prompt_hash, prompt_template, render

from .conftest import invoke, invoke_json, seg_photos_manifest


@pytest.mark.parametrize("mode", ["masked", "heatmap"])
def test_prompt_styles_share_the_rubric_and_the_answer_format(mode):
    texts = {style: render(prompt_template(mode, style), "golden_retriever") for style in PROMPT_STYLES}
    assert len({prompt_hash(prompt_template(mode, s)) for s in PROMPT_STYLES}) == 3
    for text in texts.values():
        assert '"golden retriever"' in text and "5 - " in text and '"score" (an integer 0-5)' in text
    assert len(texts["concise"]) < len(texts["original"]) < len(texts["extended"])
    assert "Work in this order before you score" in texts["extended"]
    with pytest.raises(ValueError, match="unknown prompt style"):
        prompt_template(mode, "poetic")


def test_sweep_judges_each_setting_once(tmp_path, data_dir):
    manifest = seg_photos_manifest(data_dir, tmp_path / "four.csv", 4)
    db = tmp_path / "sweep.db"
    invoke("run", manifest, "--db", db)  # the recognizer judges alpha 15, beta 0.6, original
    args = ("eval", "sweep", "--db", db, "--alpha", "15,25", "--beta", "0.4,0.6", "--prompt-style",
            "original,concise")
    first = invoke_json(*args)["settings"]
    assert len(first) == 8
    judged_now = {(s["prompt_style"], s["alpha"], s["beta"]): s["judged_now"] for s in first}
    # the recognizer reads no prompt: a prompt style is no new input for it, so the concise settings judge nothing
    # (the original ones judged each alpha x beta already); each alpha x beta is judged once
    assert judged_now.pop(("original", 15.0, 0.6)) == 0
    assert {k: v for k, v in judged_now.items() if k[0] == "original"} == {
        ("original", 15.0, 0.4): 4, ("original", 25.0, 0.4): 4, ("original", 25.0, 0.6): 4}
    assert {v for k, v in judged_now.items() if k[0] == "concise"} == {0}
    assert all(s["judgments"] == 4 and s["percent"] is not None for s in first)
    by_setting = {(s["prompt_style"], s["alpha"], s["beta"]): s["average_score"] for s in first}
    assert all(by_setting[("concise", a, b)] == by_setting[("original", a, b)] for _, a, b in by_setting)
    again = invoke_json(*args)["settings"]
    assert [s["judged_now"] for s in again] == [0] * 8
    assert [s["average_score"] for s in again] == [s["average_score"] for s in first]
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from judgments").fetchone()[0] == 16
        assert conn.execute("select count(*) from judgments where prompt_hash is not null").fetchone()[0] == 0
        assert conn.execute("select count(*) from prompts").fetchone()[0] == 0
    assert "CH%" in invoke(*args).output
    bad = invoke("eval", "sweep", "--db", db, "--alpha", "15,x", expect_ok=False)
    assert bad.exit_code == 2 and "expected numbers" in bad.output


def test_a_heatmap_sweep_judges_each_prompt_once_whatever_alpha_and_beta(tmp_path, data_dir, tiny_vlms_bpe512):
    """A heatmap overlay reads neither alpha nor beta: the judgments of one prompt are shared by every alpha and beta
    (held as NULL), while another prompt is another input to a VLM, judged apart."""
    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db = tmp_path / "heatmap.db"
    invoke("predict", manifest, "--db", db)
    invoke("explain", "--db", db)
    settings = invoke_json("eval", "sweep", "--db", db, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--image-mode",
                           "heatmap", "--alpha", "15,25", "--beta", "0.4,0.6", "--prompt-style", "original,concise",
                           "--max-new-tokens", "48")["settings"]
    judged_now = {(s["prompt_style"], s["alpha"], s["beta"]): s["judged_now"] for s in settings}
    assert judged_now == {(style, a, b): 3 if (a, b) == (15.0, 0.4) else 0
                          for style in ("original", "concise") for a in (15.0, 25.0) for b in (0.4, 0.6)}
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*), count(alpha), count(beta), count(distinct prompt_hash) "
                            "from judgments").fetchone() == (6, 0, 0, 2)
