"""Shared fixtures: the real images in ../shared/data (read in place, never copied), tiny VLMs built offline, and
a no-network guard around whole runs."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# Before anything imports huggingface_hub (it reads this once): no test may reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from localjudge.cli import cli  # noqa: E402
from localjudge.testing.tiny_vlms import build_tiny_vlms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALJUDGE_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def offline_environment(tmp_path_factory):
    # The tiny-VLM and ONNX caches go to a temporary home.
    os.environ["LOCALJUDGE_HOME"] = str(tmp_path_factory.mktemp("localjudge-home"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "imagenet-sample" / "labels.csv").is_file():
        pytest.fail(f"real test images not found at {DATA} (set LOCALJUDGE_TEST_DATA to shared/data)")
    return DATA


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory) -> dict[str, Path]:
    """Tiny random Qwen2.5-VL and Gemma-3 with the released tokenizers, vocabulary sizes, image-token counts and chat
    templates: the judge paths' tests."""
    return build_tiny_vlms(tmp_path_factory.mktemp("tiny-vlms"), "real")


@pytest.fixture(scope="session")
def tiny_vlms_bpe512(tmp_path_factory) -> dict[str, Path]:
    """The same tiny models with a 512-token BPE and 4-16 image tokens, for speed only: tests of the pipeline's
    mechanics (stores, resumes, clusters, bundles) whose judge could be any, where a 262,208-token vocabulary would
    multiply their time."""
    return build_tiny_vlms(tmp_path_factory.mktemp("tiny-vlms-bpe512"), "bpe512")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, data_dir) -> dict[str, Path]:
    """A zero-byte file, a truncated JPEG and a text file named x.jpg."""
    folder = tmp_path_factory.mktemp("bad-files")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    real = (data_dir / "seg-photos" / "images" / "coco_000000000009.jpg").read_bytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(real[: len(real) // 3])
    text = folder / "x.jpg"
    text.write_text("this is a text file, not a picture\n")
    return {"empty": empty, "truncated": truncated, "text": text}


def seg_photos_manifest(data_dir: Path, path: Path, count: int) -> Path:
    """The first `count` seg-photos (absolute paths, labels = their ImageNet indices)."""
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return write_manifest(path, [{"path": str(data_dir / "seg-photos" / r["file"]), "label": r["imagenet_indices"]}
                                 for r in rows])


@pytest.fixture(scope="session")
def seg_manifest(tmp_path_factory, data_dir, bad_files) -> Path:
    """The 70 seg-photos (absolute paths into shared/data, labels = their ImageNet indices) plus the 3 bad files
    (paths relative to the manifest)."""
    folder = bad_files["empty"].parent
    rows = []
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append({"path": str(data_dir / "seg-photos" / row["file"]), "label": row["imagenet_indices"]})
    rows += [{"path": p.name, "label": "339"} for p in bad_files.values()]
    return write_manifest(folder / "seg-photos.csv", rows)


@pytest.fixture(scope="session")
def imagenet_manifest(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("imagenet")
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = [{"path": str(data_dir / "imagenet-sample" / r["file"]), "label": r["imagenet_index"]}
                for r in csv.DictReader(handle)]
    return write_manifest(folder / "imagenet-sample.csv", rows)


def invoke(*args: str | Path, expect_ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


def invoke_json(*args):
    return json.loads(invoke(*args, "--json").stdout)


@contextmanager
def no_network(allow: set[tuple[str, int]] = frozenset()):
    """Record every attempt to open a network connection (or resolve a name) while the block runs, except to the
    (host, port) addresses in `allow` (the loopback server a test pointed the run at)."""
    attempts: list[tuple] = []
    allowed_hosts = {host for host, _ in allow}
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def allowed(address) -> bool:
        return isinstance(address, tuple) and (address[0], address[1]) in allow

    def guarded_connect(self, address):
        if self.family != socket.AF_UNIX and not allowed(address):
            attempts.append(("connect", address))
            raise OSError("network access attempted during an offline run")
        return original_connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family != socket.AF_UNIX and not allowed(address):
            attempts.append(("connect_ex", address))
            return 111
        return original_connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in allowed_hosts:
            attempts.append(("getaddrinfo", host))
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect = original_connect
        socket.socket.connect_ex = original_connect_ex
        socket.getaddrinfo = original_getaddrinfo


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TransformersServer:
    """A real `transformers serve` (OpenAI-compatible, CPU) for one model directory, on a loopback port."""

    def __init__(self, model_dir: Path, log_dir: Path, port: int | None = None):
        self.model_dir = model_dir
        self.port = port or free_port()
        self.log = log_dir / f"serve-{model_dir.name}-{self.port}.log"
        executable = Path(sys.executable).parent / "transformers"
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(executable), "serve", str(model_dir), "--device", "cpu", "--host", "127.0.0.1",
                 "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"transformers serve did not answer within 120 s: {self.log.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def address(self) -> set[tuple[str, int]]:
        return {("127.0.0.1", self.port)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- people in the loop: a real headless Chromium, and an audit whose judge said hostile things ---------------
CHROMIUM = Path(os.environ.get("LOCALJUDGE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
# Text that runs script wherever a page treats it as HTML; the judge "says" it, a file is named with it.
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
HOSTILE_FILE_NAME = "<img src=x onerror=alert(3)> 'q\" & b.jpg"
FORMULA = '=HYPERLINK("http://example.invalid","x") </script>'


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM}: Chromium is needed for the page tests (Debian: apt-get install chromium; or set "
                    "LOCALJUDGE_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def copy_db(source: Path, target: Path) -> Path:
    """A copy of a store that another connection may still hold open: through SQLite's backup, so what sits in its
    write-ahead log is copied too (a file copy would miss it)."""
    import sqlite3

    with sqlite3.connect(source) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)
    return target


def hostile_answer(n: int) -> str:
    """The n-th answer of a judge that says hostile things: every seventh cannot be parsed, the others cycle the
    scores 0-5 and carry markup and a spreadsheet formula."""
    if n % 7 == 6:
        return "<b>not an answer</b>"
    return json.dumps({"evaluation": XSS, "justification": FORMULA, "score": n % 6})


@pytest.fixture(scope="session")
def hostile_audit(tmp_path_factory, data_dir) -> dict:
    """A real audit (EfficientNet-Lite0, Grad-CAM) of 22 seg-photos, judged in masked and heatmap mode by a loopback
    model server whose answers carry markup (heatmaps shown at 256 px); one photo is a copy named with markup, one
    has no label."""
    from .model_server import ScriptedServer

    folder = tmp_path_factory.mktemp("hostile")
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        photos = list(csv.DictReader(handle))[:22]
    rows = [{"path": str(data_dir / "seg-photos" / p["file"]), "label": p["imagenet_indices"]} for p in photos[:20]]
    hostile = folder / HOSTILE_FILE_NAME
    hostile.write_bytes((data_dir / "seg-photos" / photos[20]["file"]).read_bytes())
    rows.append({"path": hostile.name, "label": photos[20]["imagenet_indices"]})
    rows.append({"path": str(data_dir / "seg-photos" / photos[21]["file"]), "label": ""})
    manifest = write_manifest(folder / "hostile.csv", rows)
    db = folder / "hostile.db"
    server = ScriptedServer(lists_models=True, answer=hostile_answer)
    try:
        with no_network(allow=server.address) as attempts:
            for mode, size in (("masked", "448"), ("heatmap", "256")):
                invoke("run", manifest, "--db", db, "--judge", "openai", "--base-url", server.url,
                       "--api-concurrency", "1", "--image-mode", mode, "--judge-image-size", size)
        assert attempts == []
    finally:
        server.shutdown()
    return {"db": db, "manifest": manifest, "folder": folder, "images": len(rows)}
