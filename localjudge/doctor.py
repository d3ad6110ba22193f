"""`localjudge doctor`: what this machine has and whether an audit can run on it. Each check is ok, warn (works,
but worth knowing) or fail (an audit would fail or be wrong); any fail makes the command exit non-zero."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sqlite3
import sys
from pathlib import Path

from .config import home
from .offline import OFFLINE_ENVIRONMENT

REQUIRED = ("torch", "torchvision", "transformers", "numpy", "pillow", "click", "sqlite-utils", "grad-cam",
            "xgrammar", "cleanlab", "pydicom", "efficientnet-lite-pytorch")
OPTIONAL = ("onnxruntime", "onnxruntime-gpu", "onnx", "vllm", "playwright", "pylibjpeg", "python-gdcm")
LOW_DISK_BYTES = 2 * 1024**3
NO_DISK_BYTES = 256 * 1024**2


def _check(name: str, status: str, detail: str, **extra) -> dict:
    return {"check": name, "status": status, "detail": detail, **extra}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def packages() -> list[dict]:
    checks = [_check("python", "ok" if sys.version_info >= (3, 11) else "fail",
                     f"{platform.python_version()} ({sys.executable})")]
    for package in REQUIRED:
        version = _version(package)
        checks.append(_check(f"package {package}", "ok" if version else "fail", version or "not installed"))
    for package in OPTIONAL:
        version = _version(package)
        checks.append(_check(f"package {package}", "ok", version or "not installed (optional)"))
    if _version("onnxruntime") and _version("onnxruntime-gpu"):
        checks.append(_check("onnxruntime", "fail", "onnxruntime and onnxruntime-gpu are both installed; they write "
                                                    "the same folder: uninstall both, then install one"))
    return checks


def accelerators() -> list[dict]:
    checks = []
    import torch

    if torch.cuda.is_available():
        names = [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 1024**3:.0f} "
                 "GiB)" for i in range(torch.cuda.device_count())]
        checks.append(_check("gpus", "ok", "; ".join(names), count=len(names)))
    else:
        checks.append(_check("gpus", "warn", "no CUDA GPU visible to torch: vision and judge run on the CPU "
                                             "(vLLM cannot run)", count=0))
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        checks.append(_check("onnxruntime providers", "ok", ", ".join(providers), providers=providers))
    except ImportError:
        checks.append(_check("onnxruntime providers", "ok", "ONNX Runtime not installed (--backend onnx needs the "
                                                            "onnx or onnx-gpu extra)", providers=[]))
    return checks


def offline() -> list[dict]:
    unset = {k: os.environ.get(k) for k, v in OFFLINE_ENVIRONMENT.items() if os.environ.get(k) != v}
    return [_check("offline switches", "ok" if not unset else "fail",
                   "set: " + ", ".join(OFFLINE_ENVIRONMENT) if not unset else f"not set: {unset}")]


def models() -> list[dict]:
    from .store import sha256_file
    from .vision import list_cards
    from .vision.cards import WeightsError, embedded_weights_path

    checks = []
    for card in list_cards():
        if not card.weights.startswith("package:"):
            checks.append(_check(f"model {card.name}", "ok", "weights given with --weights (none embedded)"))
            continue
        try:
            path = embedded_weights_path(card)
        except (ImportError, WeightsError) as error:
            checks.append(_check(f"model {card.name}", "fail", f"embedded weights missing: {error}"))
            continue
        if not path.is_file():
            checks.append(_check(f"model {card.name}", "fail", f"{path}: weights file missing"))
            continue
        digest = sha256_file(path)
        if card.weights_sha256 and digest != card.weights_sha256:
            checks.append(_check(f"model {card.name}", "fail", f"{path}: sha256 {digest} is not the card's "
                                                               f"{card.weights_sha256}; reinstall the package"))
        else:
            checks.append(_check(f"model {card.name}", "ok", f"embedded weights, sha256 {digest[:16]}… "
                                                             f"{'matches its card' if card.weights_sha256 else ''}"))
    return checks


def bundle(folder: Path) -> list[dict]:
    from .bundle import BundleError, verify_bundle

    try:
        result = verify_bundle(folder)
    except BundleError as error:
        return [_check("bundle", "fail", str(error))]
    if result["ok"]:
        return [_check("bundle", "ok", f"{result['files']} files verified, manifest {result['manifest_hash']}")]
    problems = "; ".join(f"{p['file']}: {p['problem']}" for p in result["problems"][:10])
    return [_check("bundle", "fail", f"{len(result['problems'])} problems: {problems}")]


def database(path: Path) -> list[dict]:
    """Read-only: the file is opened with mode=ro, so the doctor never changes it (not even by migrating)."""
    from .store.schema import MIGRATIONS, TABLES

    if not path.is_file():
        return [_check("database", "fail", f"{path}: no such file")]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            integrity = [r[0] for r in conn.execute("pragma integrity_check")]
            foreign = conn.execute("pragma foreign_key_check").fetchall()
            tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
            applied = ({r[0] for r in conn.execute("select name from _migrations")} if "_migrations" in tables
                       else set())
            counts = {t: conn.execute(f"select count(*) from [{t}]").fetchone()[0]
                      for t, _ in TABLES if t in tables}
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        return [_check("database", "fail", f"{path}: not a readable SQLite database ({error})")]
    checks = [_check("database integrity", "ok" if integrity == ["ok"] else "fail",
                     "PRAGMA integrity_check: " + "; ".join(integrity[:5])),
              _check("database foreign keys", "ok" if not foreign else "fail",
                     f"{len(foreign)} rows point at rows that do not exist" if foreign else "every reference holds")]
    pending = [fn.__name__ for fn in MIGRATIONS if fn.__name__ not in applied]
    if not applied:
        checks.append(_check("database schema", "fail", f"{path}: not a localjudge database (no _migrations)"))
    else:
        checks.append(_check("database schema", "ok" if not pending else "warn",
                             "up to date" if not pending else f"{len(pending)} migrations to apply on next write: "
                                                              + ", ".join(pending), counts=counts))
        missing = [t for t, _ in TABLES if t not in tables]
        if missing and not pending:  # every migration recorded, yet a table is gone: the file was changed by hand
            checks.append(_check("database tables", "fail", f"missing: {', '.join(missing)}"))
    return checks


def disk(paths: list[Path]) -> list[dict]:
    checks = []
    for path in paths:
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        status = "fail" if free < NO_DISK_BYTES else "warn" if free < LOW_DISK_BYTES else "ok"
        checks.append(_check(f"disk at {existing}", status, f"{free / 1024**3:.1f} GiB free", free_bytes=free))
    return checks


def diagnose(db: Path | None = None, bundle_dir: Path | None = None) -> dict:
    cache = home()
    checks = packages() + accelerators() + offline() + models()
    if bundle_dir is not None:
        checks += bundle(Path(bundle_dir))
    if db is not None:
        checks += database(Path(db))
    checks += disk([Path(db).absolute().parent if db else Path.cwd(), cache])
    return {"ok": all(c["status"] != "fail" for c in checks), "checks": checks}
