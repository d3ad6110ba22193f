"""The offline HTML report, built from a real audit and driven in headless Chromium: the WH filter shows exactly the
WH samples of the database, hostile text from the judge and from a file name shows as text and runs nothing, and
the page fetches nothing outside its folder."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from .conftest import copy_db, FORMULA, HOSTILE_FILE_NAME, XSS, invoke_json, no_network


@pytest.fixture(scope="module")
def report(hostile_audit, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report")
    with no_network() as attempts:
        written = invoke_json("report", "--db", hostile_audit["db"], "--out", out)
    assert attempts == []
    return {**written, "dir": out}


def open_report(browser, folder: Path):
    """The report in a fresh page, with every dialog and every request it makes recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seen = {"dialogs": [], "requests": [], "errors": []}
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.goto((folder / "index.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page, seen


def shown_ids(page) -> list[str]:
    """The ids of the cards on every page of the current selection (going through the pager)."""
    ids = []
    while True:
        ids += page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")
        button = page.locator(".pager .next").first
        if button.is_disabled():
            return ids
        before = page.get_attribute("body", "data-page")
        button.click()
        page.wait_for_selector(f"body:not([data-page='{before}'])")


def db_rows(db: Path, sql: str, params=()) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()


def test_the_wh_filter_shows_exactly_the_wh_samples_of_the_database(report, hostile_audit, browser):
    wh = {r["id"] for r in db_rows(hostile_audit["db"], (
        "select j.id from judgments j join predictions p on p.id = j.prediction_id "
        "where j.status = 'ok' and p.correct = 0 and j.score >= 3"))}
    everything = db_rows(hostile_audit["db"], "select id from judgments")
    assert len(wh) >= 3 and len(everything) == 2 * hostile_audit["images"]
    page, seen = open_report(browser, report["dir"])
    try:
        assert set(shown_ids(page)) == {r["id"] for r in everything}  # unfiltered: every judgment, once
        page.select_option("#quadrant", "WH")
        assert page.get_attribute("body", "data-selected") == str(len(wh))
        ids = shown_ids(page)
        assert sorted(ids) == sorted(wh)
        badges = page.eval_on_selector_all(".card .badge", "nodes => nodes.map(n => n.textContent)")
        assert set(badges) == {"WH"}
        # the matrix counts the same WH
        assert page.text_content("#matrix td.WH").startswith(f"WH {len(wh)} ")
        assert seen["errors"] == []
    finally:
        page.close()


def test_other_filters_agree_with_the_database(report, hostile_audit, browser):
    page, _ = open_report(browser, report["dir"])
    try:
        failed = db_rows(hostile_audit["db"], "select id from judgments where status = 'failed'")
        page.select_option("#quadrant", "failed")
        assert sorted(shown_ids(page)) == sorted(r["id"] for r in failed) and failed
        page.select_option("#quadrant", "")
        page.select_option("#judge", "m")
        page.fill("#score-min", "4")
        page.dispatch_event("#score-min", "change")
        high = db_rows(hostile_audit["db"], "select id from judgments where status = 'ok' and score >= 4")
        assert sorted(shown_ids(page)) == sorted(r["id"] for r in high)
        page.click("#reset")
        heatmap = db_rows(hostile_audit["db"], "select id from judgments where image_mode = 'heatmap'")
        (setting,) = [o for o in page.eval_on_selector_all("#setting option", "nodes => nodes.map(n => n.value)")
                      if o.startswith("heatmap")]
        # a heatmap overlay reads neither alpha nor beta: the setting names none
        assert setting == "heatmap, prompt " + _prompt(hostile_audit["db"], "heatmap") + ", 256 px"
        page.select_option("#setting", setting)
        assert sorted(shown_ids(page)) == sorted(r["id"] for r in heatmap)
        page.select_option("#quadrant", "unlabelled")  # the photo without a label, in both modes, where judged
        unlabelled = db_rows(hostile_audit["db"], (
            "select j.id from judgments j join predictions p on p.id = j.prediction_id "
            "where j.status = 'ok' and p.correct is null and j.image_mode = 'heatmap'"))
        assert sorted(shown_ids(page)) == sorted(r["id"] for r in unlabelled)
        page.click("#reset")
        page.select_option("#sort", "score-desc")
        scores = page.eval_on_selector_all(".card .score", "nodes => nodes.map(n => n.textContent)")
        numbers = [int(s.split()[1]) for s in scores if s.startswith("score ")]
        assert numbers == sorted(numbers, reverse=True) and numbers[0] == 5
    finally:
        page.close()


def _prompt(db: Path, mode: str) -> str:
    (row,) = db_rows(db, "select distinct prompt_hash from judgments where image_mode = ?", [mode])
    return row["prompt_hash"][:8]


def test_hostile_text_shows_as_text_and_runs_nothing(report, hostile_audit, browser):
    page, seen = open_report(browser, report["dir"])
    try:
        evaluations = page.eval_on_selector_all(".card .evaluation", "nodes => nodes.map(n => n.textContent)")
        assert evaluations and set(evaluations) == {XSS}
        justifications = page.eval_on_selector_all(".card .justification", "nodes => nodes.map(n => n.textContent)")
        assert set(justifications) == {FORMULA}
        paths = page.eval_on_selector_all(".card .path", "nodes => nodes.map(n => n.textContent)")
        assert any(p.endswith(HOSTILE_FILE_NAME) for p in paths)
        # nothing of it became markup: no element the payloads would create, no dialog
        assert page.locator("img[src='x']").count() == 0
        assert page.locator("#cards script").count() == 0
        page.select_option("#quadrant", "WH")
        page.select_option("#quadrant", "")
        page.wait_for_timeout(300)
        assert seen["dialogs"] == [] and seen["errors"] == []
    finally:
        page.close()


def test_the_page_fetches_nothing_outside_its_folder(report, browser):
    folder = report["dir"].resolve()
    page, seen = open_report(browser, folder)
    try:
        page.mouse.wheel(0, 20000)  # lazy thumbnails further down load too
        page.wait_for_timeout(500)
        images = page.eval_on_selector_all("img", "nodes => nodes.map(n => n.getAttribute('src'))")
    finally:
        page.close()
    assert images and all(re.fullmatch(r"thumbs/[0-9a-f]{24}\.jpg", src) for src in images)
    assert seen["requests"]
    for url in seen["requests"]:
        assert url.startswith("file://"), url
        assert Path(url[len("file://"):]).resolve().is_relative_to(folder), url
    # every thumbnail the data names is in the folder; no picture is embedded in the page's text
    data = (folder / "data.js").read_text()
    named = set(re.findall(r"thumbs/[0-9a-f]{24}\.jpg", data))
    assert named and all((folder / name).is_file() for name in named)
    for name in ("index.html", "report.js", "report.css", "data.js"):
        text = (folder / name).read_text()
        assert "data:" not in text and "base64" not in text and "../" not in text
        assert not re.search(r"(src|href)=[\"']?(https?:|//)", text), name


def test_the_report_is_built_from_thumbnails_shared_between_samples(report, hostile_audit, tmp_path):
    images = hostile_audit["images"]
    # masked and heatmap judgments of one map share its original and heatmap thumbnails; only the masked image is
    # per (map, alpha, beta)
    assert report["samples"] == 2 * images and report["images"] == images
    assert report["thumbnails"] == 3 * images
    # the page's code is the same whatever the audit: the report grows with its data and thumbnails only
    smaller = invoke_json("report", "--db", hostile_audit["db"], "--out", tmp_path / "masked-only",
                          "--image-mode", "masked")
    assert smaller["samples"] == images and smaller["thumbnails"] == 3 * images
    for name in ("index.html", "report.js", "report.css"):
        assert (tmp_path / "masked-only" / name).read_bytes() == (report["dir"] / name).read_bytes()
    # building again into the same folder renders nothing new
    before = {p.name: p.stat().st_mtime_ns for p in (report["dir"] / "thumbs").iterdir()}
    again = invoke_json("report", "--db", hostile_audit["db"], "--out", report["dir"])
    assert again["thumbnails"] == report["thumbnails"]
    assert {p.name: p.stat().st_mtime_ns for p in (report["dir"] / "thumbs").iterdir()} == before
    # a narrower report into the same folder keeps only what it shows
    narrower = tmp_path / "narrower"
    shutil.copytree(report["dir"], narrower)
    masked = invoke_json("report", "--db", hostile_audit["db"], "--out", narrower, "--image-mode", "masked")
    assert masked["thumbnails"] == 3 * images == len(list((narrower / "thumbs").iterdir()))
    assert json.loads((report["dir"] / "data.js").read_text()[len("window.LOCALJUDGE_REPORT = "):-2])["meta"][
        "samples"] == 2 * images


def test_a_missing_image_is_reported_on_its_card_and_the_rest_is_built(hostile_audit, tmp_path, browser):
    db = tmp_path / "moved.db"
    copy_db(hostile_audit["db"], db)
    moved = hostile_audit["folder"] / HOSTILE_FILE_NAME
    kept = moved.read_bytes()
    moved.unlink()
    try:
        written = invoke_json("report", "--db", db, "--out", tmp_path / "report")
    finally:
        moved.write_bytes(kept)
    assert written["images_unavailable"] == 1 and "cannot read the stored image" in written["unavailable"][0]
    assert written["thumbnails"] == 3 * (hostile_audit["images"] - 1)
    page, seen = open_report(browser, tmp_path / "report")
    try:
        errors = page.eval_on_selector_all(".card .error", "nodes => nodes.map(n => n.textContent)")
        assert any(e.startswith("image unavailable:") and HOSTILE_FILE_NAME in e for e in errors)
        assert seen["dialogs"] == []
    finally:
        page.close()


def test_report_out_writes_only_into_a_folder_of_its_own_and_deletes_only_its_own_files(report, hostile_audit,
                                                                                       tmp_path):
    from .conftest import invoke

    db = hostile_audit["db"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a report")
    refused = invoke("report", "--db", db, "--out", mine, expect_ok=False)
    assert refused.exit_code == 1 and "not empty" in refused.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # nothing written, nothing deleted
    # a folder an earlier build wrote: a file it wrote and this build does not show goes; a file of the user's stays
    folder = tmp_path / "rebuilt"
    shutil.copytree(report["dir"], folder)
    manifest = json.loads((folder / ".localjudge-report.json").read_text())
    assert set(manifest["files"]) == {"data.js", "index.html", "report.js", "report.css"} | {
        f"thumbs/{p.name}" for p in (report["dir"] / "thumbs").iterdir()}
    stale = "thumbs/" + "ab" * 12 + ".jpg"  # named as a build names its thumbnails
    (folder / stale).write_bytes(b"an earlier build's")
    (folder / "thumbs" / "mine.jpg").write_bytes(b"the user's")
    (tmp_path / "outside.txt").write_text("not the report's")
    listed = manifest["files"] + [stale, "../outside.txt", "thumbs/../../outside.txt", "notes.txt"]
    (folder / "notes.txt").write_text("the user's, though the manifest names it")
    (folder / ".localjudge-report.json").write_text(json.dumps({"files": listed}))
    invoke_json("report", "--db", db, "--out", folder)
    assert not (folder / stale).exists()
    assert (folder / "thumbs" / "mine.jpg").read_bytes() == b"the user's"
    assert (tmp_path / "outside.txt").exists() and (folder / "notes.txt").exists()  # no name a build never writes
    assert "thumbs/mine.jpg" not in json.loads((folder / ".localjudge-report.json").read_text())["files"]
    # a build stopped half-way has listed what it was writing: the next build into the folder is not refused
    half = tmp_path / "half"
    half.mkdir()
    (half / ".localjudge-report.json").write_text(json.dumps({"files": [stale]}))
    (half / "thumbs").mkdir()
    (half / stale).write_bytes(b"a stopped build's")
    invoke_json("report", "--db", db, "--out", half)
    assert not (half / stale).exists() and (half / "index.html").is_file()
