"""The rating page: a small HTTP server on loopback where people score what the judges were shown, with the
judge's own rubric, 0-5, stored in the audit's database (table `ratings`, one score per rater and view).

People rate blind: the page shows the view and the predicted class, never the judge's answer. Views come in a fixed
pseudo-random order, so the first hundred a person rates are a fair sample for `localjudge calibrate`; a rater who
comes back continues with the first view they have not rated.

Loopback is not one person: on a shared workstation any local user can reach the port. So the server answers only
requests that carry its token, a random string made at start and printed in its address (`?token=...`) to the one
who started it: the page is served only with it, and the page's script sends it with each request (a header; the
picture's address). No cookie: a browser would send one to every port of the host. Only the page's script and style
are served without it (they hold nothing of the audit)."""

from __future__ import annotations

import hmac
import http.server
import json
import re
import secrets
import socket
import threading
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from ..data import ChangedImage, jpeg_bytes, load_verified
from ..judge.prompts import PHOTO, prompt_template, render, split_prompt_text
from ..offline import loopback_address
from ..queries import by_disagreement, views
from ..saliency.masking import judge_view
from ..store import Store, unpack_array

ASSETS = {"/": ("rate.html", "text/html; charset=utf-8"), "/rate.js": ("rate.js", "text/javascript; charset=utf-8"),
          "/rate.css": ("rate.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
RATER_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,80}$")
MAX_BODY = 4096


class RatingError(Exception):
    pass


def rater_name(raw) -> str:
    name = raw.strip() if isinstance(raw, str) else ""
    if not RATER_NAME.match(name):
        raise RatingError("a rater name is 1 to 80 printable characters")
    return name


class RatingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, db_path, host: str = "127.0.0.1", port: int = 0, rater: str | None = None,
                 disagreement: tuple[str, str] | None = None, **filters):
        address = loopback_address(host)
        if address is None:
            raise RatingError(f"{host}: the rating page serves this machine only (a loopback address such as "
                              "127.0.0.1); the images must not leave it")
        store = Store(db_path, create=False)
        self.db_path = store.path
        try:
            found = views(store, **filters)
            self.prompts = {r["hash"]: r["text"] for r in store.query("select hash, text from prompts")}
            if not found:
                raise RatingError(f"{self.db_path}: no judged samples to rate (run `localjudge run` or `judge` "
                                  "first)")
            self.views = {v["view_id"]: v for v in found}
            self.order = [v["view_id"] for v in found]
            if disagreement:  # people look first where the two judges differ most
                self.order = by_disagreement(store, self.order, disagreement)
        finally:
            store.close()
        self.position = {view_id: n for n, view_id in enumerate(self.order)}
        self.default_rater = rater
        self.lock = threading.Lock()  # one writer at a time from this server's threads
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.host_name = f"[{address}]" if ":" in address else address
        super().__init__((address, port), RatingHandler)
        port = self.server_address[1]
        self.allowed_hosts = {f"{name}:{port}" for name in ("localhost", self.host_name)}
        self.token = secrets.token_urlsafe(24)

    @property
    def url(self) -> str:
        """The page's address, with its token: printed to the one who started the server, and to nobody else."""
        return f"http://{self.host_name}:{self.server_address[1]}/?token={self.token}"

    def rated_by(self, store: Store, rater: str) -> dict[str, int]:
        return {r["view_id"]: r["score"] for r in store.query(
            "select view_id, score from ratings where rater = ?", [rater]) if r["view_id"] in self.views}

    def next_view(self, rated: dict[str, int], after: str | None = None) -> str | None:
        """The first view after `after` (in the fixed order, wrapping) that the rater has not rated."""
        start = self.position[after] + 1 if after in self.position else 0
        for offset in range(len(self.order)):
            view_id = self.order[(start + offset) % len(self.order)]
            if view_id not in rated:
                return view_id
        return None

    def describe(self, view_id: str | None, rated: dict[str, int]) -> dict | None:
        if view_id is None:
            return None
        view = self.views[view_id]
        # the prompt its judge was given: the stored template with the image's kind and the class's description
        # a judge that reads no prompt (the recognizer) stored none: people get the image mode's rubric
        stored = self.prompts.get(view["prompt_hash"]) if view["prompt_hash"] else prompt_template(view["image_mode"])
        template, descriptions = split_prompt_text(stored or "")
        label = view["predicted_label"]
        rubric = render(template, label, view["image_kind"] or PHOTO, descriptions.get(label, ""))
        return {"view_id": view_id, "position": self.position[view_id] + 1, "label": label,
                "image_mode": view["image_mode"], "alpha": view["alpha"], "beta": view["beta"],
                "rubric": rubric, "image": f"/image/{view_id}.jpg",
                "score": rated.get(view_id)}

    def picture(self, view_id: str) -> bytes:
        """The view as its judge saw it, at the judge's image size."""
        view = self.views[view_id]
        picture = load_verified(view["path"], view["image_sha256"], json.loads(view["preprocessing"]).get("dicom_window"))
        store = Store(self.db_path, create=False)
        try:
            (stored,) = store.saliency_maps([view["saliency_id"]])
        finally:
            store.close()
        saliency = unpack_array(stored["map"], (stored["height"], stored["width"]))
        return jpeg_bytes(judge_view(picture, json.loads(view["preprocessing"]), saliency, view["image_mode"],
                                     view["alpha"], view["beta"], view["judge_image_size"]), quality=90)


class RatingHandler(http.server.BaseHTTPRequestHandler):
    server: RatingServer

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if not self._trusted():
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path in ASSETS:
            name, kind = ASSETS[url.path]
            return self._send(200, (resources.files(__package__) / "assets" / name).read_bytes(), kind)
        if url.path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon")
        if url.path == "/api/config":
            return self._json(200, {"rater": self.server.default_rater, "total": len(self.server.order)})
        if url.path.startswith("/image/") and url.path.endswith(".jpg"):
            view_id = url.path[len("/image/"):-len(".jpg")]
            if view_id not in self.server.views:
                return self._json(404, {"error": "no such view"})
            try:
                return self._send(200, self.server.picture(view_id), "image/jpeg")
            except ChangedImage as error:
                return self._json(410, {"error": str(error)})
        if url.path in ("/api/next", "/api/view"):
            try:
                rater = rater_name(query.get("rater"))
            except RatingError as error:
                return self._json(400, {"error": str(error)})
            store = Store(self.server.db_path, create=False)
            try:
                rated = self.server.rated_by(store, rater)
            finally:
                store.close()
            if url.path == "/api/view":
                view_id = query.get("id")
                if view_id not in self.server.views:
                    return self._json(404, {"error": "no such view"})
            else:
                view_id = self.server.next_view(rated, query.get("after"))
            return self._json(200, {"rater": rater, "rated": len(rated), "total": len(self.server.order),
                                    "view": self.server.describe(view_id, rated)})
        return self._json(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        if not self._trusted():
            return
        if urlsplit(self.path).path != "/api/rate":
            return self._json(404, {"error": "not found"})
        # Only the page's own script can send JSON here: a form on another site cannot set this content type
        # without the browser asking first, and this server never says yes.
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._json(415, {"error": "send JSON"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise RatingError("empty or too large")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict) or not isinstance(body.get("view_id"), str):
                raise RatingError("send {view_id, rater, score}")
            rater = rater_name(body.get("rater"))
            score = body.get("score")
            if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 5:
                raise RatingError("a score is an integer from 0 to 5")
            view = self.server.views.get(body.get("view_id"))
            if view is None:
                raise RatingError("no such view")
        except (ValueError, RatingError) as error:
            return self._json(400, {"error": str(error)})
        with self.server.lock:
            store = Store(self.server.db_path, create=False)
            try:
                store.rate(view, rater, score)
                rated = self.server.rated_by(store, rater)
            finally:
                store.close()
        next_id = self.server.next_view(rated, view["view_id"])
        return self._json(200, {"stored": True, "rater": rater, "rated": len(rated), "total": len(self.server.order),
                                "view": self.server.describe(next_id, rated)})

    def _trusted(self) -> bool:
        """Refuse requests addressed to another name (DNS rebinding), sent from another site's page, or without the
        server's token (another user of this machine)."""
        origin = self.headers.get("Origin")
        if self.headers.get("Host") not in self.server.allowed_hosts or (
                origin is not None and urlsplit(origin).netloc not in self.server.allowed_hosts):
            self._json(403, {"error": "this page answers only on its own loopback address"})
            return False
        url = urlsplit(self.path)
        if url.path in ASSETS and url.path != "/" or url.path == "/favicon.ico":
            return True  # the page's code and style: nothing of the audit
        given = parse_qs(url.query).get("token", [None])[-1] or self.headers.get("X-Localjudge-Token")
        if not (given and self._is_token(given)):
            self._json(403, {"error": "open the address `localjudge rate` printed: it carries this page's token"})
            return False
        return True

    def _is_token(self, value: str) -> bool:
        return hmac.compare_digest(value.encode(), self.server.token.encode())

    def _json(self, status: int, body: dict) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)

        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # requests name views, not people or files; nothing to log
        pass
