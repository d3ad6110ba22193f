"""`localjudge doctor` and model bundles: a healthy machine and database pass; a damaged database, a changed
embedded model and a changed bundle are found and named; a run on a bundle records its manifest hash."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from localjudge.vision import WeightsError, load_card, model_hash
from localjudge.store import sha256_file

from .conftest import copy_db, invoke, invoke_json, seg_photos_manifest


@pytest.fixture(scope="module")
def audit_db(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("doctor")
    db = folder / "audit.db"
    invoke("run", seg_photos_manifest(data_dir, folder / "photos.csv", 4), "--db", db)
    return db


def doctor(*args, expect_ok=True):
    result = invoke("doctor", *args, "--json", expect_ok=expect_ok)
    return result.exit_code, json.loads(result.stdout)


def failed(report: dict) -> dict[str, str]:
    return {c["check"]: c["detail"] for c in report["checks"] if c["status"] == "fail"}


def test_a_healthy_machine_and_database_pass(audit_db):
    code, report = doctor("--db", audit_db)
    assert code == 0 and report["ok"] and failed(report) == {}
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["package torch"]["detail"].startswith("2.14")
    assert checks["model efficientnet-lite0"]["detail"].endswith("matches its card")
    assert checks["database integrity"]["status"] == "ok" and checks["database schema"]["counts"]["judgments"] == 4
    assert "onnxruntime providers" in checks and checks["offline switches"]["status"] == "ok"


def test_a_damaged_database_is_found(audit_db, tmp_path):
    dangling = copy_db(audit_db, tmp_path / "dangling.db")
    with sqlite3.connect(dangling) as conn:  # a map whose prediction is gone (foreign keys off, as a bad tool would)
        conn.execute("pragma foreign_keys = off")
        conn.execute("update saliency_maps set prediction_id = 'gone' where rowid = (select min(rowid) from "
                     "saliency_maps)")
    code, report = doctor("--db", dangling, expect_ok=False)
    assert code == 1 and "database foreign keys" in failed(report)

    broken = copy_db(audit_db, tmp_path / "broken.db")
    data = bytearray(broken.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # a page overwritten
    broken.write_bytes(bytes(data))
    code, report = doctor("--db", broken, expect_ok=False)
    assert code == 1 and ({"database integrity", "database"} & set(failed(report)))

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table t (x)")
    code, report = doctor("--db", other, expect_ok=False)
    assert code == 1 and "not a localjudge database" in failed(report)["database schema"]


def test_embedded_weights_that_are_not_the_cards_are_refused():
    card = load_card("efficientnet-lite0")
    changed = dataclasses.replace(card, weights_sha256="0" * 64)
    with pytest.raises(WeightsError, match="not the ones its card names"):
        model_hash(changed, None, sha256_file)
    assert model_hash(card, None, sha256_file) == "sha256:" + card.weights_sha256


def test_a_bundle_is_verified_and_named_in_the_run(tmp_path, data_dir, tiny_vlms_bpe512):
    out = tmp_path / "bundle"
    made = invoke_json("bundle", "create", out, "--model", "efficientnet-lite0",
                       "--vlm", tiny_vlms_bpe512["qwen2_5_vl"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert made["files"] == len(manifest["files"]) and manifest["vlm"] == f"vlm/{tiny_vlms_bpe512['qwen2_5_vl'].name}"
    assert invoke_json("bundle", "verify", out)["ok"]
    assert doctor("--bundle", out)[0] == 0

    db = tmp_path / "bundled.db"
    manifest_csv = seg_photos_manifest(data_dir, tmp_path / "photos.csv", 3)
    stages = invoke_json("run", manifest_csv, "--db", db, "--bundle", out, "--max-new-tokens", "32")
    assert stages["judge"]["rows"] == 3
    invoke("run", manifest_csv, "--db", db)  # the same weights without the bundle
    with sqlite3.connect(db) as conn:
        runs = conn.execute("select model_hashes, config from runs where command = 'run'").fetchall()
        models = {r[0] for r in conn.execute("select distinct model_hash from predictions")}
        judges = {r[0] for r in conn.execute("select distinct judge_model from judgments")}
    bundled = [json.loads(h) for h, _ in runs if "bundle_manifest" in json.loads(h)]
    assert len(bundled) == 1 and bundled[0]["bundle_manifest"] == made["manifest_hash"]
    assert len(models) == 1  # the bundle's weights are the embedded ones: the same model, the same predictions
    assert tiny_vlms_bpe512["qwen2_5_vl"].name in judges


def test_a_changed_bundle_is_refused(tmp_path, tiny_vlms_bpe512):
    out = tmp_path / "bundle"
    invoke("bundle", "create", out, "--vlm", tiny_vlms_bpe512["gemma3"])
    config = out / "vlm" / tiny_vlms_bpe512["gemma3"].name / "config.json"
    changed = bytearray(config.read_bytes())
    changed[1] ^= 0x20  # one byte changed, the size the same
    config.write_bytes(bytes(changed))
    (out / "vision" / "notes.txt").write_text("added later\n")
    weights = next((out / "vision").glob("*.pth"))
    weights.unlink()
    result = invoke("bundle", "verify", out, "--json", expect_ok=False)
    assert result.exit_code == 1
    problems = {p["file"]: p["problem"] for p in json.loads(result.stdout)["problems"]}
    assert problems[config.relative_to(out).as_posix()] == "sha256 differs: the file has changed"
    assert problems["vision/notes.txt"] == "not in the manifest"
    assert problems[weights.relative_to(out).as_posix()] == "missing"
    assert "bundle" in failed(doctor("--bundle", out, expect_ok=False)[1])
    folder = tmp_path / "images"
    folder.mkdir()
    refused = invoke("predict", folder, "--db", tmp_path / "x.db", "--bundle", out, expect_ok=False)
    assert refused.exit_code == 1 and "the bundle does not verify" in refused.output


def test_the_embedded_weights_check_reads_the_bytes_not_a_cached_hash():
    """A cache keyed by path, size and mtime would answer with the card's own hash for a same-size change whose
    mtime was restored: the check reads the file itself (once per process while its inode, size, mtime and ctime
    stay: store.sha256_remembered), never the hash function it is given."""
    card = load_card("efficientnet-lite0")
    changed = dataclasses.replace(card, weights_sha256="0" * 64)
    with pytest.raises(WeightsError, match="not the ones its card names"):
        model_hash(changed, None, lambda path: changed.weights_sha256)  # a stale cache entry saying all is well


def test_a_same_size_change_with_its_mtime_restored_is_found_in_a_bundle(tmp_path, data_dir, tiny_vlms_bpe512):
    import os

    out = tmp_path / "bundle"
    invoke("bundle", "create", out, "--model", "efficientnet-lite0", "--vlm", tiny_vlms_bpe512["qwen2_5_vl"])
    folder = seg_photos_manifest(data_dir, tmp_path / "photos.csv", 1)
    db = tmp_path / "cached.db"
    invoke("predict", folder, "--db", db, "--bundle", out, "--trust-hash-cache")  # the hashes are cached now
    config = out / "vlm" / tiny_vlms_bpe512["qwen2_5_vl"].name / "config.json"
    stat = config.stat()
    changed = bytearray(config.read_bytes())
    changed[1] ^= 0x20  # one byte changed, the size the same
    config.write_bytes(bytes(changed))
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and its modification time put back
    refused = invoke("predict", folder, "--db", db, "--bundle", out, expect_ok=False)
    assert refused.exit_code == 1 and "the bundle does not verify" in refused.output
    assert "config.json" in refused.output
    # trusting the cache is the user's choice, by name: then the change goes unseen (why it is not the default)
    invoke("predict", folder, "--db", db, "--bundle", out, "--trust-hash-cache")


def test_a_weights_file_changed_with_its_mtime_restored_is_another_model(tmp_path):
    """The vision model's --weights are named by their bytes in every run (read once per process), not by the
    store's cache of path, size and mtime, which a same-size change with its mtime put back passes: that cache
    answers only with --trust-hash-cache, the user's choice by name."""
    import hashlib
    import os

    from localjudge.pipeline import open_audit

    weights = tmp_path / "lite0.pth"
    weights.write_bytes(b"first weights " * 100)
    db = tmp_path / "a.db"

    def vision_hash(**given) -> str:
        audit = open_audit(db, None, (), show_progress=False, model="efficientnet-lite0", weights=str(weights),
                           backend="torch", **given)
        try:
            return audit.vision_hash()
        finally:
            audit.store.close()

    first = vision_hash()
    assert vision_hash(trust_hash_cache=True) == first == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    stat = weights.stat()
    weights.write_bytes(b"other weights " * 100)  # the same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert vision_hash() == "sha256:" + hashlib.sha256(b"other weights " * 100).hexdigest() != first
    assert vision_hash(trust_hash_cache=True) == first  # the cache, trusted by name, cannot see it
