"""The OpenAI-compatible judge against a real `transformers serve` on loopback, for each tiny model: the same
judgment rows as the in-process transformers judge, a server stopped mid-run, and hosts that must never be
contacted.

`transformers serve` ignores the response format (it lists it among the fields it does not support), so the tiny
models answer it unconstrained and their gibberish is stored as parse failures: the rows, keys and prompt token
counts are what must agree with the transformers backend, not the text."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from localjudge.judge import JudgeError, JudgeRequest, JudgeUnavailable
from localjudge.judge.openai_backend import OpenAIClient, OpenAIJudge, chat_body, check_endpoint

from .conftest import TransformersServer, invoke, invoke_json, no_network, write_manifest
from .model_server import ScriptedServer

FAMILIES = ("qwen2_5_vl", "gemma3")
READABLE = 70
SERVED = 20  # the real-vocabulary models through the server: 262,208 logits a step for Gemma, so fewer photos
TOKENS = ["--max-new-tokens", "48"]  # unconstrained gibberish runs to the cap: keep it short


@pytest.fixture(scope="module", params=FAMILIES)
def server(request, tiny_vlms, tmp_path_factory):
    served = TransformersServer(tiny_vlms[request.param], tmp_path_factory.mktemp("serve"))
    yield served
    served.stop()


def judgment_rows(db, backend):
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["saliency_id"]: dict(r) for r in conn.execute(
            "select * from judgments where judge_backend = ?", [backend])}


@pytest.fixture(scope="module")
def served_manifest(data_dir, bad_files, tmp_path_factory) -> Path:
    """The first SERVED seg-photos and the 3 bad files."""
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        rows = [{"path": str(data_dir / "seg-photos" / r["file"]), "label": r["imagenet_indices"]}
                for r in list(csv.DictReader(handle))[:SERVED]]
    return write_manifest(tmp_path_factory.mktemp("served") / "photos.csv",
                          rows + [{"path": str(p), "label": "339"} for p in bad_files.values()])


def test_run_through_the_server_gives_the_rows_of_the_transformers_backend(server, served_manifest, tmp_path):
    seg_manifest = served_manifest
    db = tmp_path / "openai.db"
    with no_network(allow=server.address) as attempts:
        through_server = invoke_json("run", seg_manifest, "--db", db, "--judge", "openai", "--base-url", server.url,
                                     *TOKENS)
    assert attempts == []  # no connection but to the loopback server it was pointed at
    assert through_server["ingest"]["failed"] == 3  # the bad files are reported, and the run went on
    assert through_server["judge"]["rows"] == through_server["judge"]["computed"] == SERVED
    in_process = invoke_json("run", seg_manifest, "--db", db, "--vlm", server.model_dir, *TOKENS)
    assert in_process["judge"]["computed"] == SERVED

    served, local = judgment_rows(db, "openai"), judgment_rows(db, "transformers")
    assert set(served) == set(local) and len(served) == SERVED  # one judgment per readable image, same maps
    same = ("prediction_id", "image_sha256", "alpha", "beta", "image_mode", "judge_image_size", "prompt_hash",
            "judge_model", "input_tokens")
    for saliency_id, row in served.items():
        # The same prompt token count on both sides: the server got the same picture and the same prompt.
        assert {k: row[k] for k in same} == {k: local[saliency_id][k] for k in same}
        assert row["status"] in {"ok", "failed"} and row["failure_kind"] in {None, "parse"}
        assert row["output_tokens"] is not None and row["batch_seconds"] > 0
        assert json.loads(row["decoding"])["structured_output"] == "response-format-json-schema"
        if row["status"] == "failed":
            assert row["raw_text"] is not None and row["error"]
    # decoding is part of a judgment's key: the two backends' judgments are different rows
    assert {r["id"] for r in served.values()}.isdisjoint({r["id"] for r in local.values()})

    again = invoke_json("run", seg_manifest, "--db", db, "--judge", "openai", "--base-url", server.url, *TOKENS)
    assert again["judge"]["computed"] == 0  # nothing missing, nothing asked


def test_a_server_that_refuses_the_request_is_a_clear_error(server, seg_manifest, tmp_path):
    db = tmp_path / "refused.db"
    result = invoke("run", seg_manifest, "--db", db, "--judge", "openai", "--base-url", server.url,
                    "--api-model", "no-such-model", *TOKENS, expect_ok=False)
    assert result.exit_code == 1
    assert "refused every request" in result.output and "HTTP 4" in result.output
    with sqlite3.connect(db) as conn:  # the batch is stored as refused (retried next time), the run as failed
        statuses = conn.execute("select distinct status, failure_kind from judgments").fetchall()
        run_status = conn.execute("select status from runs where command = 'run'").fetchone()[0]
    assert statuses == [("failed", "rejected")] and run_status == "failed"


def test_stopping_the_server_mid_run_stores_failures_and_a_rerun_completes_them(tiny_vlms_bpe512, seg_manifest,
                                                                                 tmp_path):
    model = tiny_vlms_bpe512["qwen2_5_vl"]  # what a stopped server does to a run: the small vocabulary, for speed
    db = tmp_path / "interrupted.db"
    args = ["run", seg_manifest, "--db", db, "--judge", "openai", "--judge-batch-size", "2",
            "--api-concurrency", "2", "--api-retries", "1", *TOKENS]
    server = TransformersServer(model, tmp_path)
    run_ended = threading.Event()

    def stop_after_some_judgments():
        while not run_ended.is_set():
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    if conn.execute("select count(*) from judgments").fetchone()[0] >= 10:
                        server.stop()
                        return
            except sqlite3.OperationalError:
                pass  # the store is not created yet
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_after_some_judgments)
    watcher.start()
    try:
        first = invoke(*args, "--base-url", server.url, expect_ok=False)
    finally:
        run_ended.set()
        watcher.join()
        server.stop()
    assert first.exit_code == 1
    assert "stopped answering" in first.output and "stored as failures" in first.output
    before = judgment_rows(db, "openai")
    backend_failures = {s for s, r in before.items() if r["failure_kind"] == "backend"}
    assert backend_failures  # the requests in flight when it stopped
    for saliency_id in backend_failures:
        assert before[saliency_id]["raw_text"] == "" and "127.0.0.1" in before[saliency_id]["error"]
        assert before[saliency_id]["score"] is None
    answered = {s: r for s, r in before.items() if r["failure_kind"] != "backend"}
    assert len(answered) >= 10 and len(before) < READABLE
    with sqlite3.connect(db) as conn:
        assert conn.execute("select status from runs").fetchone()[0] == "failed"
        # every map handed to the judge belongs to a stored prediction; no half-written rows
        assert conn.execute("select count(*) from saliency_maps m left join predictions p on p.id = m.prediction_id "
                            "where p.id is null").fetchone()[0] == 0

    restarted = TransformersServer(model, tmp_path)  # a new port: the same judge (the model name is its identity)
    try:
        second = invoke_json(*args, "--base-url", restarted.url)
    finally:
        restarted.stop()
    assert second["judge"]["computed"] == READABLE - len(answered)  # exactly the missing and the failed ones
    after = judgment_rows(db, "openai")
    assert len(after) == READABLE and not any(r["failure_kind"] == "backend" for r in after.values())
    for saliency_id, row in answered.items():
        assert after[saliency_id] == row  # what was answered before is untouched


@pytest.mark.parametrize("url", ["http://10.20.30.40:8000/v1", "http://judge.example.org/v1",
                                 "http://[2001:db8::1]:8000/v1", "https://0.0.0.0:8000/v1"])
def test_a_host_other_than_loopback_is_refused_before_anything_is_sent(url, seg_manifest, tmp_path):
    db = tmp_path / "refused.db"
    with no_network() as attempts:
        result = invoke("run", seg_manifest, "--db", db, "--judge", "openai", "--base-url", url, expect_ok=False)
    assert result.exit_code == 1 and "--allow-host" in result.output and "not this machine" in result.output
    assert attempts == []  # not even a name lookup
    assert not db.exists()  # refused before the store was opened or any image read


@pytest.mark.parametrize("url, address", [("http://localhost:8000/v1", "127.0.0.1"),
                                          ("http://LOCALHOST.:8000/v1", "127.0.0.1"),
                                          ("http://127.0.0.2:8000/v1", "127.0.0.2"),
                                          ("http://[::1]:8000/v1", "::1")])
def test_loopback_is_reached_by_number_so_no_name_is_ever_resolved(url, address):
    assert check_endpoint(url).host == address


@pytest.mark.parametrize("url", ["http://[::1%25eth0]:8000/v1", "http://127.0.0.1.example.org/v1",
                                 "http://0x7f.1/v1", "http://[::ffff:10.0.0.1]/v1"])
def test_lookalikes_of_loopback_are_refused(url):
    with pytest.raises(JudgeError, match="--allow-host"):
        check_endpoint(url)


@pytest.mark.parametrize("url, extra", [("https://10.20.30.40:8000/v1", ()),
                                        ("http://10.20.30.40:8000/v1", ("--insecure-http",))])
def test_an_allowed_host_is_contacted_and_nothing_else(url, extra, seg_manifest, tmp_path):
    db = tmp_path / "allowed.db"
    with no_network() as attempts:
        result = invoke("run", seg_manifest, "--db", db, "--judge", "openai", "--base-url", url,
                        "--allow-host", "10.20.30.40", *extra, expect_ok=False)
    assert result.exit_code == 1 and "cannot list the server's models" in result.output
    assert {a[1][0] if a[0] != "getaddrinfo" else a[1] for a in attempts} == {"10.20.30.40"}


def test_plain_http_to_another_host_is_refused_before_anything_is_sent(seg_manifest, tmp_path):
    """Images (and $LOCALJUDGE_API_KEY) would cross the network in the clear: https, or --insecure-http by name."""
    db = tmp_path / "plain.db"
    with no_network() as attempts:
        result = invoke("run", seg_manifest, "--db", db, "--judge", "openai", "--base-url",
                        "http://10.20.30.40:8000/v1", "--allow-host", "10.20.30.40", expect_ok=False)
    assert result.exit_code == 1 and "unencrypted" in result.output and "--insecure-http" in result.output
    assert attempts == [] and not db.exists()
    assert check_endpoint("http://localhost:8000/v1").scheme == "http"  # loopback never leaves the machine


def test_https_to_localhost_checks_the_certificate_against_that_name(tmp_path, monkeypatch):
    """A certificate made for "localhost" (as a local TLS proxy has): the client connects to 127.0.0.1 (no name
    resolved) and checks the certificate against "localhost", the name given. A certificate for another name is
    refused."""
    import shutil
    import ssl
    import subprocess
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")

    def certificate(name: str) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True)
        return cert, key

    hosts: list[str] = []  # the Host header of each request, and the name each TLS handshake asked for (SNI)
    names: list[str] = []

    class Models(BaseHTTPRequestHandler):
        def do_GET(self):
            hosts.append(self.headers["Host"])
            body = json.dumps({"object": "list", "data": [{"id": "served-model", "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    for name, works in (("localhost", True), ("judge.other.example", False)):
        cert, key = certificate(name)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as the one certificate authority
        server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda connection, asked, _: names.append(asked)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            endpoint = check_endpoint(f"https://localhost:{server.server_address[1]}/v1")
            assert endpoint.host == "127.0.0.1" and endpoint.server_name == "localhost"
            with no_network(allow={("127.0.0.1", server.server_address[1])}) as attempts:
                if works:
                    assert OpenAIClient(endpoint, 10.0).models() == ["served-model"]
                    # the name given travels as the TLS server name and the Host header, not the address
                    assert names[-1] == "localhost" and hosts[-1] == f"localhost:{server.server_address[1]}"
                else:
                    with pytest.raises(JudgeError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
                        OpenAIClient(endpoint, 10.0).models()
            assert attempts == []
        finally:
            server.shutdown()
            server.server_close()


def test_the_request_body_is_a_valid_openai_chat_completion_request(tiny_image):
    from openai.types.chat import completion_create_params
    from pydantic import TypeAdapter

    body = chat_body("judge", JudgeRequest(image=tiny_image, label="dog", prompt="Is it a dog?"), 64, 0.0)
    TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming).validate_python(body)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["evaluation", "justification", "score"]
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.fixture
def tiny_image():
    from PIL import Image

    return Image.new("RGB", (32, 32), (200, 10, 10))


@pytest.fixture
def request_(tiny_image):
    return JudgeRequest(image=tiny_image, label="dog", prompt="Is it a dog?")


def judge_for(server: ScriptedServer, **options) -> OpenAIJudge:
    return OpenAIJudge(server.url, api_model="m", backoff=0.01, concurrency=1, **options)


def test_5xx_answers_are_retried_with_backoff(request_):
    server = ScriptedServer(failures=2)
    try:
        (output,) = judge_for(server, retries=2).judge([request_])
        assert output.error is None and output.input_tokens == 30 and '"score": 4' in output.raw_text
        assert server.posts == 3
    finally:
        server.shutdown()


def test_a_server_that_stays_down_stops_the_stage(request_):
    server = ScriptedServer(failures=10)
    try:
        with pytest.raises(JudgeUnavailable, match="scripted 503") as stopped:
            judge_for(server, retries=2).judge([request_, request_])
        assert [o.error for o in stopped.value.outputs] == [stopped.value.outputs[0].error] * 2
        assert server.posts == 6  # three tries each, then no more
    finally:
        server.shutdown()


def test_one_request_the_server_cannot_serve_is_a_failure_not_a_stop(request_):
    # The server answers its model list, so it is up: the lone failure is stored and the run goes on.
    server = ScriptedServer(failures=10, lists_models=True)
    try:
        (output,) = judge_for(server, retries=1).judge([request_])
        assert "scripted 503" in output.error and not output.rejected
    finally:
        server.shutdown()


def test_4xx_is_not_retried_and_a_whole_refused_batch_stops(request_):
    server = ScriptedServer(failures=10, status=400)
    try:
        judge = judge_for(server, retries=3)
        (output,) = judge.judge([request_])  # one refused request: stored as refused, the run goes on
        assert output.rejected and "HTTP 400: scripted 400" in output.error and server.posts == 1
        with pytest.raises(JudgeError, match="refused every request: .*HTTP 400"):
            judge.judge([request_, request_])
        assert server.posts == 3
    finally:
        server.shutdown()
