"""The report's Findings section, built from a real audit (EfficientNet-Lite0, Grad-CAM, the recognizer judge) of the
seg-photos with their masks and driven in headless Chromium: before any shortcut check it names each check as not
run; after them every part shows, its figures equal to those of the command it prints (run again here from the
page's own text), the exemplars are thumbnails in the folder, nothing is requested outside the folder, and printing
keeps the findings and drops the controls and cards."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from .conftest import invoke, invoke_json, no_network
from .test_report import open_report

PARTS = ("classes", "clusters", "artifacts", "background", "canary")


@pytest.fixture(scope="module")
def audit(tmp_path_factory, data_dir) -> Path:
    db = tmp_path_factory.mktemp("findings") / "findings.db"
    invoke("run", data_dir / "seg-photos" / "labels.csv", "--path-column", "file", "--label-column",
           "imagenet_indices", "--db", db, "--mask-column", "mask", "--shard", "1/2")
    return db


def part_texts(page) -> dict[str, dict]:
    return {p["name"]: p for p in page.eval_on_selector_all(
        ".finding", "nodes => nodes.map(n => ({name: n.dataset.finding, ran: n.dataset.ran, text: n.innerText, "
                    "command: n.querySelector('.command code').textContent}))")}


def rerun(command: str, db: Path) -> dict:
    """The command the page prints, run here against the same store (its --db is the store's file name)."""
    words = shlex.split(command)
    assert words[0] == "localjudge" and words[-1] == "--json"
    words[words.index("--db") + 1] = str(db)
    return invoke_json(*words[1:-1])


def test_findings_name_what_was_not_run_then_show_every_check_with_its_command(audit, tmp_path, browser):
    out = tmp_path / "before"
    invoke_json("report", "--db", audit, "--out", out)
    page, _ = open_report(browser, out)
    try:
        before = part_texts(page)
    finally:
        page.close()
    assert list(before) == list(PARTS)
    assert before["classes"]["ran"] == "1"  # judgments exist: classes to inspect need nothing more
    assert all(before[name]["ran"] == "0" and "Not run" in before[name]["text"] for name in PARTS[1:]), before

    clusters = invoke_json("eval", "clusters", "--db", audit, "--min-maps", "3")["classes"]
    invoke_json("eval", "regions", "--db", audit, "--artifact-regions", "border:16")
    background = invoke_json("eval", "background", "--db", audit)
    canary = invoke_json("eval", "canary", "--db", audit, "--size", "0.3", "--images", "12", "--judge-quadrants")
    with sqlite3.connect(audit) as conn:  # the tags' places: spread over the view, not drawn with the sample
        tops = [json.loads(box)[1] for (box,) in conn.execute("select box from canary_tests")]
    assert len(tops) == 12 and np.mean(tops) > 224 * 0.7 / 4, tops  # uniform over 0..157: mean 78
    folder = (tmp_path / "after").resolve()
    with no_network() as attempts:
        written = invoke_json("report", "--db", audit, "--out", folder)
    assert attempts == [] and written["findings"] == dict.fromkeys(PARTS, True)
    page, seen = open_report(browser, folder)
    try:
        after = part_texts(page)
        exemplars = page.eval_on_selector_all(".exemplar img", "nodes => nodes.map(n => [n.getAttribute('src'), "
                                                               "n.complete && n.naturalWidth > 0])")
        page.emulate_media(media="print")
        printed = page.evaluate("() => ['findings', 'controls', 'cards'].map(id => "
                                "getComputedStyle(document.getElementById(id)).display)")
    finally:
        page.close()
    assert all(after[name]["ran"] == "1" for name in PARTS), after
    for url in seen["requests"]:  # the page, its script, style, data and thumbnails: nothing else
        assert url.startswith("file://") and Path(url[len("file://"):]).resolve().is_relative_to(folder), url
    assert printed[0] != "none" and printed[1:] == ["none", "none"]

    # classes to inspect: the command's own ranking, in the page's order
    ranked = rerun(after["classes"]["command"], audit)["settings"][0]["inspect"][:5]
    shown = [line.split("\t")[0] for line in after["classes"]["text"].splitlines() if "\t" in line][1:]
    assert shown == [row["group"] for row in ranked], (shown, ranked)

    # clusters: this audit's natural photos form no candidate (test_shortcuts' planted tag does, with exemplars
    # shown in the report); the printed command (the clustering's stored parameters) makes the same clusters again
    assert not [c for entry in clusters for c in entry["clusters"] if c["shortcut_candidate"]], clusters
    assert "No cluster looks elsewhere" in after["clusters"]["text"] and exemplars == []
    assert f"({len(clusters)} classes clustered)" in after["clusters"]["text"]
    again = rerun(after["clusters"]["command"], audit)["classes"]
    assert [[c["members"] for c in e["clusters"]] for e in again] == [[c["members"] for c in e["clusters"]]
                                                                       for e in clusters]

    # artifact regions: the page's figures are the command's
    (border,) = rerun(after["artifacts"]["command"], audit)["artifacts"]
    share = border["mass_share"]
    assert f"{share['mean']:.3f} [{share['ci_low']:.3f}, {share['ci_high']:.3f}]" in after["artifacts"]["text"]

    # background: the gap as eval background reports it, and the printed command gives it again
    gap = background["overall"]["bg_gap"]
    assert rerun(after["background"]["command"], audit)["overall"]["bg_gap"] == gap
    assert f"{gap['difference']:+.2f} [{gap['ci_low']:+.2f}, {gap['ci_high']:+.2f}]" in after["background"]["text"]

    # canary: the pull and the verdict as eval canary reports them; its printed command computes nothing new
    pull = canary["summary"]["pull"]
    assert rerun(after["canary"]["command"], audit)["summary"] == canary["summary"], after["canary"]["command"]
    assert f"toward {pull['class']} by {pull['mean']:.2f} [{pull['ci_low']:.2f}, {pull['ci_high']:.2f}]" in \
        after["canary"]["text"]
    assert ("not flagged" in after["canary"]["text"]) == (not canary["summary"]["flagged"])
    # the quadrants: the judge on the view before the artifact reads as the run's own judgment of the image did
    quadrants = canary["quadrants"]
    assert rerun(after["canary"]["command"], audit)["quadrants"] == quadrants
    assert f"{quadrants['images']} labelled images judged" in after["canary"]["text"]
    assert sum(quadrants["before"].values()) == quadrants["images"] >= 10
    with sqlite3.connect(audit) as conn:
        stored = dict(conn.execute(
            "select c.id, case when p.correct = 1 then 'C' else 'W' end || case when j.score >= 3 then 'H' else 'L' "
            "end from canary_tests c join saliency_maps s on s.prediction_id = c.prediction_id join judgments j on "
            "j.saliency_id = s.id join predictions p on p.id = c.prediction_id where j.status = 'ok' and "
            "p.correct is not null").fetchall())
        again = dict(conn.execute(
            "select q.canary_id, case when p.correct = 1 then 'C' else 'W' end || case when q.original_score >= 3 "
            "then 'H' else 'L' end from canary_quadrants q join canary_tests c on c.id = q.canary_id join "
            "predictions p on p.id = c.prediction_id where q.original_status = 'ok' and p.correct is not null"
        ).fetchall())
    assert again and np.mean([again[k] == stored[k] for k in again]) >= 0.9, (again, stored)

    # a report scoped to one run's images says on each shortcut check that it is the whole store's, not the run's
    (run,) = [r for r in invoke_json("db", "runs", "--db", audit)["runs"] if r["command"] == "run"]
    scoped_folder = (tmp_path / "scoped").resolve()
    invoke_json("report", "--db", audit, "--out", scoped_folder, "--run", run["id"])
    page, _ = open_report(browser, scoped_folder)
    try:
        scoped = part_texts(page)
    finally:
        page.close()
    assert "Of the whole store" not in scoped["classes"]["text"]
    assert all("Of the whole store" in scoped[name]["text"] for name in PARTS[1:]), scoped
    assert not any("Of the whole store" in after[name]["text"] for name in PARTS)  # the unscoped report's
