"""Offline by construction: a whole audit (vision model, CAM, a transformers VLM judge, the report) in a fresh
process whose every non-loopback connection raises, with the environment asking for the opposite of offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from localjudge.offline import OFFLINE_ENVIRONMENT

from .conftest import REPO, seg_photos_manifest

# Loaded by the child interpreter at start-up (sitecustomize), before localjudge or any library: every connection
# or name lookup that leaves this machine raises and is written to the log.
GUARD = '''
import ipaddress, os, socket

_log = os.environ["LOCALJUDGE_GUARD_LOG"]

def _refuse(what):
    with open(_log, "a") as handle:
        handle.write(repr(what) + "\\n")
    raise OSError("network access refused by the test guard: %r" % (what,))

def _loopback(host):
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False

_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse(("connect", address))
    return _connect(self, address)

def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse(("connect_ex", address))
    return _connect_ex(self, address)

def getaddrinfo(host, *args, **kwargs):
    if not _loopback(host):
        _refuse(("getaddrinfo", host))
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


def guarded_environment(tmp_path: Path) -> tuple[dict, Path]:
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "attempts.log"
    log.write_text("")
    environment = {**os.environ, "PYTHONPATH": f"{guard_dir}{os.pathsep}{REPO}", "LOCALJUDGE_GUARD_LOG": str(log)}
    for name in OFFLINE_ENVIRONMENT:
        environment[name] = "1" if OFFLINE_ENVIRONMENT[name] == "0" else "0"  # "online"; localjudge must not listen
    environment.pop("HF_HUB_OFFLINE", None)
    return environment, log


def localjudge(environment: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localjudge", *map(str, args)], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=900)


def test_the_guard_refuses_what_leaves_the_machine(tmp_path):
    environment, log = guarded_environment(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
                           capture_output=True, text=True, env=environment)
    assert probe.returncode != 0 and "refused by the test guard" in probe.stderr
    assert "192.0.2.1" in log.read_text()


def test_a_whole_audit_opens_no_connection(tmp_path, data_dir, tiny_vlms):
    environment, log = guarded_environment(tmp_path)
    manifest = seg_photos_manifest(data_dir, tmp_path / "photos.csv", 8)
    db = tmp_path / "offline.db"
    run = localjudge(environment, "run", manifest, "--db", db, "--vlm", tiny_vlms["qwen2_5_vl"],
                     "--max-new-tokens", "48", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    report = localjudge(environment, "report", "--db", db, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert log.read_text() == ""  # not one attempt
    assert json.loads(run.stdout)["judge"]["rows"] == 8
    shown = subprocess.run([sys.executable, "-c", "import json, os, localjudge; "
                            "print(json.dumps({k: os.environ.get(k) for k in localjudge.offline.OFFLINE_ENVIRONMENT}))"],
                           capture_output=True, text=True, env=environment)
    assert json.loads(shown.stdout) == OFFLINE_ENVIRONMENT  # forced, whatever the machine said
