"""A real HTTP server on loopback standing for an OpenAI-compatible model server (a stand-in for a third-party
server, not for our code): its chat completions answer `status` for the first `failures` requests, then the text
`answer(n)` gives for the n-th request (counting from 0); its model list answers when `lists_models`."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Callable

VALID_ANSWER = '{"evaluation": "a dog", "justification": "ears", "score": 4}'


class ScriptedServer(http.server.ThreadingHTTPServer):
    def __init__(self, failures: int = 0, status: int = 503, lists_models: bool = False,
                 answer: Callable[[int], str] = lambda n: VALID_ANSWER):
        self.failures, self.status, self.lists_models, self.answer = failures, status, lists_models, answer
        self.posts = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def address(self) -> set[tuple[str, int]]:
        return {("127.0.0.1", self.server_address[1])}


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.server.lists_models:
            self.reply(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})
        else:
            self.reply(503, {"error": {"message": "down"}})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.posts += 1
            number = self.server.posts
        if number <= self.server.failures:
            self.reply(self.server.status, {"error": {"message": f"scripted {self.server.status}"}})
        else:
            self.reply(200, {"choices": [{"finish_reason": "stop", "message": {
                "content": self.server.answer(number - self.server.failures - 1)}}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 12}})

    def reply(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass
