"""The rating page (`localjudge rate`, a real server on loopback) driven in headless Chromium, then calibration from
the ratings it stored, and `matrix --threshold calibrated`."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit
from pathlib import Path

import numpy as np
import pytest

from localjudge.analysis.agreement import calibrate_threshold, cohen_kappa

from .conftest import copy_db, free_port, invoke, invoke_json

HOSTILE_RATER = "<img src=x onerror=alert(7)> Dr. O'Neil"


class RatingPage:
    """`localjudge rate` as a user starts it, in its own process; its address, token included, read from what it
    prints, as a user would."""

    def __init__(self, db: Path, *args: str):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localjudge", "rate", "--db", str(db), "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
        printed = []
        for line in self.process.stdout:  # "rating N views from DB at URL (Ctrl-C to stop)"
            printed.append(line)
            found = re.search(r" at (http://\S+)", line)
            if found:
                self.url = found.group(1)  # http://127.0.0.1:PORT/?token=...
                break
        else:
            raise RuntimeError("".join(printed))
        self.token = parse_qs(urlsplit(self.url).query)["token"][0]
        self.base = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.api("api/config"), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("localjudge rate did not answer within 60 s")

    def api(self, path: str) -> str:
        """The address of PATH on this server, with its token."""
        return self.base + path + ("&" if "?" in path else "?") + "token=" + self.token

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture
def rated_db(hostile_audit, tmp_path) -> Path:
    db = tmp_path / "rated.db"
    copy_db(hostile_audit["db"], db)
    return db


@pytest.fixture
def rating_page(rated_db):
    page = RatingPage(rated_db, "--image-mode", "masked")
    yield page
    page.stop()


def ratings(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("select * from ratings order by updated_at, id").fetchall()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    seen = {"dialogs": [], "errors": []}
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return page, seen


def current_view(page) -> str:
    page.wait_for_selector("body[data-view]:not([data-view=''])")
    return page.get_attribute("body", "data-view")


def picture_width(page, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        width = page.locator("#picture").evaluate("img => img.complete ? img.naturalWidth : 0")
        if width:
            return width
        time.sleep(0.1)
    return 0


def next_view(page, before: str) -> str:
    page.wait_for_selector(f"body:not([data-view='{before}'])")
    return current_view(page)


def test_a_rating_given_in_the_page_is_in_the_database_and_the_rater_resumes(rating_page, rated_db, browser,
                                                                          hostile_audit):
    page, seen = open_page(browser, rating_page.url)
    try:
        page.fill("#rater", HOSTILE_RATER)
        page.press("#rater", "Enter")
        first = current_view(page)
        assert picture_width(page) == 448  # what the judge was shown, at the judge's size
        page.keyboard.press("4")  # a key
        second = next_view(page, first)
        page.click("#scores button[data-score='1']")  # a button
        third = next_view(page, second)
        page.keyboard.press("ArrowLeft")  # back to the second, and change its score
        assert next_view(page, third) == second
        page.keyboard.press("2")
        assert next_view(page, second) == third
        stored = {r["view_id"]: r for r in ratings(rated_db)}
        assert {k: r["score"] for k, r in stored.items()} == {first: 4, second: 2}
        assert {r["rater"] for r in stored.values()} == {HOSTILE_RATER}
        # the name shows as text, the judge's rubric is shown, nothing ran
        assert page.text_content("#progress").startswith(HOSTILE_RATER + ": 2 of ")
        assert page.locator("img[src='x']").count() == 0
        assert "Score the attention from 0 to 5" in page.text_content("#rubric")
        assert seen["dialogs"] == [] and seen["errors"] == []
    finally:
        page.close()
    # a new visit (same browser profile) goes on with the first view this rater has not rated
    page, _ = open_page(browser, rating_page.url + "&rater=" + urllib.request.quote(HOSTILE_RATER))
    try:
        assert current_view(page) == third
    finally:
        page.close()
    # every stored rating names a view of the audit: its map, alpha, beta and image mode
    with sqlite3.connect(rated_db) as conn:
        joined = conn.execute("select count(*) from ratings r join judgments j on j.saliency_id = r.saliency_id "
                              "and j.alpha = r.alpha and j.beta = r.beta and j.image_mode = r.image_mode").fetchone()
    assert joined[0] == 2


def test_the_rating_server_refuses_what_is_not_its_own_page(rating_page):
    def post(body: bytes, content_type: str, host: str | None = None, **headers):
        request = urllib.request.Request(rating_page.api("api/rate"), data=body, method="POST",
                                         headers={"Content-Type": content_type, **headers})
        if host:
            request.add_unredirected_header("Host", host)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with urllib.request.urlopen(rating_page.api("api/next?rater=a"), timeout=5) as answer:
        view = json.loads(answer.read())["view"]["view_id"]
    good = json.dumps({"view_id": view, "rater": "a", "score": 3}).encode()
    assert post(good, "text/plain")[0] == 415  # a form on another site cannot send JSON
    assert post(good, "application/json", host="attacker.example:80")[0] == 403  # DNS rebinding
    assert post(good, "application/json", Origin="http://attacker.example")[0] == 403  # another site's page
    assert post(json.dumps({"view_id": [view], "rater": "a", "score": 3}).encode(), "application/json")[0] == 400
    assert post(json.dumps({"view_id": view, "rater": {"a": 1}, "score": 3}).encode(), "application/json")[0] == 400
    assert post(b"[1, 2]", "application/json")[0] == 400
    assert post(json.dumps({"view_id": view, "rater": "a", "score": 9}).encode(), "application/json")[0] == 400
    assert post(json.dumps({"view_id": "nope", "rater": "a", "score": 3}).encode(), "application/json")[0] == 400
    assert post(json.dumps({"view_id": view, "rater": "", "score": 3}).encode(), "application/json")[0] == 400
    assert post(good, "application/json", Origin=rating_page.base.rstrip("/"))[0] == 200
    with urllib.request.urlopen(rating_page.api("api/next?rater=a"), timeout=5) as answer:
        assert json.loads(answer.read())["rated"] == 1  # the one good request, and none of the others


def test_the_rating_server_answers_only_with_its_token(rating_page, browser):
    """Another user of this machine reaches the port but not the printed address: the page, the API, the pictures
    and rating are refused without the token, or with another; only the page's script and style are served without
    it. The page opened at the printed address sends it with its own requests (a header; the picture's address)."""
    def status(url: str, data: bytes | None = None, **headers) -> int:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    assert len(rating_page.token) >= 32
    with urllib.request.urlopen(rating_page.api("api/next?rater=a"), timeout=5) as answer:
        view = json.loads(answer.read())["view"]
    picture = view["image"].lstrip("/")
    for path in ("", "api/config", "api/next?rater=a", picture):
        assert status(rating_page.base + path) == 403, path
        assert status(rating_page.base + path + ("&" if "?" in path else "?") + "token=" + "x" * 32) == 403, path
        assert status(rating_page.base + path, **{"X-Localjudge-Token": "x" * 32}) == 403, path
        assert status(rating_page.api(path)) == 200, path
        assert status(rating_page.base + path, **{"X-Localjudge-Token": rating_page.token}) == 200, path
    assert status(rating_page.base + "rate.js") == status(rating_page.base + "rate.css") == 200
    body = json.dumps({"view_id": view["view_id"], "rater": "a", "score": 3}).encode()
    assert status(rating_page.base + "api/rate", body, **{"Content-Type": "application/json"}) == 403
    assert ratings(rating_page_db(rating_page)) == []  # nothing stored without the token
    page, seen = open_page(browser, rating_page.url + "&rater=a")
    try:
        current_view(page)  # the page's own requests (the view, its picture) went through with the token
        assert picture_width(page) > 0 and not seen["errors"]
        assert page.context.cookies() == []  # no cookie: a browser would send it to every port of this host
    finally:
        page.close()


def rating_page_db(page) -> Path:
    return Path(page.process.args[page.process.args.index("--db") + 1])


def test_the_page_shows_each_view_at_its_judges_size(rated_db):
    page = RatingPage(rated_db, "--image-mode", "heatmap")
    try:
        with urllib.request.urlopen(page.api("api/next?rater=a"), timeout=5) as answer:
            view = json.loads(answer.read())["view"]
        assert view["image_mode"] == "heatmap"
        with urllib.request.urlopen(page.api(view["image"].lstrip("/")), timeout=30) as answer:
            from PIL import Image

            assert Image.open(io.BytesIO(answer.read())).size == (256, 256)
            assert answer.headers["Cross-Origin-Resource-Policy"] == "same-origin"
    finally:
        page.stop()


def test_the_rating_page_serves_loopback_only(hostile_audit):
    result = invoke("rate", "--db", hostile_audit["db"], "--host", "0.0.0.0", expect_ok=False)
    assert result.exit_code == 1 and "serves this machine only" in result.output


def test_calibration_from_ratings_feeds_the_matrix(rated_db, rating_page):
    """People rate every masked view; the calibrated threshold, kappa and correlations equal the pure functions on
    the same pairs, and `matrix --threshold calibrated` uses the threshold."""
    with sqlite3.connect(rated_db) as conn:
        judged = conn.execute(
            "select saliency_id, score from judgments where image_mode = 'masked' and status = 'ok'").fetchall()
    # A person who sees more than this judge: their rating is the judge's score moved up by one, capped at 5, so the
    # best judge threshold for people's "high" (>= 3) is 2.
    judge_score = dict(judged)
    posted = 0
    for _ in range(len(judge_score) + 5):
        with urllib.request.urlopen(rating_page.api("api/next?rater=ann"), timeout=5) as answer:
            view = json.loads(answer.read())["view"]
        if view is None:
            break
        sid = _saliency_of(rated_db, view["view_id"])
        score = min(5, judge_score[sid] + 1) if sid in judge_score else 0
        body = json.dumps({"view_id": view["view_id"], "rater": "ann", "score": score}).encode()
        request = urllib.request.Request(rating_page.api("api/rate"), data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5):
            posted += 1
    assert posted == len(_masked_views(rated_db))

    result = invoke_json("calibrate", "--db", rated_db)
    (calibration,) = [c for c in result["settings"] if c["setting"]["image_mode"] == "masked"]
    judge = [s for _, s in sorted(judged)]
    human = [min(5, s + 1) for s in judge]
    expected = calibrate_threshold(judge, human, 3, 3)
    assert calibration["threshold"] == expected["threshold"] == 2
    assert calibration["n"] == len(judge) and calibration["raters"] == ["ann"]
    assert calibration["kappa"] == pytest.approx(cohen_kappa(np.array(judge) >= 2, np.array(human) >= 3))
    assert calibration["weighted_kappa"] == pytest.approx(expected["weighted_kappa"])
    assert calibration["pearson"]["r"] == pytest.approx(np.corrcoef(judge, human)[0, 1])
    kappa = calibration["agreement"]["weighted_kappa"]  # the same kappa, with its bootstrap interval
    assert kappa["value"] == pytest.approx(expected["weighted_kappa"]) and kappa["ci_low"] <= kappa["value"] <= kappa[
        "ci_high"]
    with sqlite3.connect(rated_db) as conn:
        assert conn.execute("select threshold, n from calibrations").fetchall() == [(2, len(judge))]

    calibrated = invoke_json("matrix", "--db", rated_db, "--threshold", "calibrated")["matrices"]
    by_mode = {m["image_mode"]: m for m in calibrated}
    assert by_mode["masked"]["threshold"] == 2 and by_mode["masked"]["threshold_source"] == "calibrated"
    assert by_mode["heatmap"]["threshold"] == 3 and by_mode["heatmap"]["threshold_source"] == "given"
    assert by_mode["masked"]["counts"] == invoke_json("matrix", "--db", rated_db, "--threshold", "2",
                                                      "--image-mode", "masked")["matrices"][0]["counts"]
    text = invoke("matrix", "--db", rated_db, "--threshold", "calibrated").output
    assert "score >= 2 is high" in text


def test_calibrated_threshold_needs_a_calibration(hostile_audit):
    result = invoke("matrix", "--db", hostile_audit["db"], "--threshold", "calibrated", expect_ok=False)
    assert result.exit_code == 1 and "no calibration yet" in result.output
    result = invoke("matrix", "--db", hostile_audit["db"], "--threshold", "high", expect_ok=False)
    assert result.exit_code == 2 and "neither a score 0-5 nor 'calibrated'" in result.output


def _masked_views(db: Path) -> set[tuple]:
    with sqlite3.connect(db) as conn:
        return set(conn.execute("select distinct saliency_id, alpha, beta from judgments where image_mode = 'masked'"))


def _saliency_of(db: Path, view_id: str) -> str:
    from localjudge.queries import view_id as make_view_id

    for saliency_id, alpha, beta in _masked_views(db):
        if make_view_id(saliency_id, alpha, beta, "masked") == view_id:
            return saliency_id
    raise AssertionError(f"no view {view_id}")


def test_two_raters_agreement_and_the_disagreement_order_through_the_page(data_dir, tmp_path, browser):
    """Two judges score the same views (the recognizer and a loopback server); the page orders the views by how
    much they disagree; two people rate through it; calibrate reports how the people agree."""
    from localjudge.queries import view_id

    from .conftest import no_network, seg_photos_manifest
    from .model_server import ScriptedServer

    manifest = seg_photos_manifest(data_dir, tmp_path / "six.csv", 6)
    db = tmp_path / "two-judges.db"
    invoke("run", manifest, "--db", db)
    server = ScriptedServer(lists_models=True, answer=lambda n: json.dumps(
        {"evaluation": "e", "justification": "j", "score": (5 * n) % 6}))
    try:
        with no_network(allow=server.address):
            invoke("judge", "--db", db, "--judge", "openai", "--base-url", server.url, "--api-concurrency", "1")
    finally:
        server.shutdown()
    with sqlite3.connect(db) as conn:
        scores = {}
        for saliency, alpha, beta, mode, judge, score in conn.execute(
                "select saliency_id, alpha, beta, image_mode, judge_model, score from judgments"):
            scores.setdefault(view_id(saliency, alpha, beta, mode), {})[judge] = score
    gaps = {v: abs(s["recognizer:efficientnet-lite2"] - s["m"]) for v, s in scores.items()}
    page_server = RatingPage(db, "--order", "disagreement", "--judges", "recognizer:efficientnet-lite2,m")
    given = {"A": [5, 4, 1, 0], "B": [4, 4, 2, 1]}
    rated = {}
    try:
        for rater, marks in given.items():
            page, seen = open_page(browser, page_server.url)
            try:
                page.fill("#rater", rater)
                page.press("#rater", "Enter")
                view = current_view(page)
                if rater == "A":  # the first view is where the judges differ most
                    assert gaps[view] == max(gaps.values())
                for mark in marks:
                    rated.setdefault(rater, []).append(view)
                    page.keyboard.press(str(mark))
                    view = next_view(page, view)  # six views: there is always a next one
                assert seen["errors"] == []
            finally:
                page.close()
    finally:
        page_server.stop()
    assert rated["A"] == rated["B"]  # both saw the same views, in the same order
    assert [gaps[v] for v in rated["A"]] == sorted((gaps[v] for v in rated["A"]), reverse=True)
    people = invoke_json("calibrate", "--db", db)["people"]
    (pair,) = people
    assert pair["raters"] == ["A", "B"] and pair["views"] == 4
    # by hand: squared gaps 1, 0, 1, 1 (mean 0.75) against 6 over all pairs of A's and B's marks: 1 - 0.75/6;
    # ICC(2,1) from the two-way ANOVA: MSR 22.375/3, MSC 0.125, MSE 1.375/3 -> 7 / 7.75
    assert pair["weighted_kappa"]["value"] == pytest.approx(0.875)
    assert pair["icc"]["value"] == pytest.approx(28 / 31)
    agreement = invoke_json("compare", "--db", db)["judge_agreement"]
    assert len(agreement) == 1 and agreement[0]["views"] == len(scores)
    assert set(agreement[0]["judges"]) == {"recognizer:efficientnet-lite2", "m"}
