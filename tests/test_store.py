from __future__ import annotations

import sqlite3

from localjudge.store import MIGRATIONS, Store, content_key


def test_migrations_run_once_and_are_recorded(tmp_path):
    db = tmp_path / "a.db"
    store = Store(db)
    names = [row["name"] for row in store.db["_migrations"].rows]
    assert names == [fn.__name__ for fn in MIGRATIONS]
    assert store.migrate() == []  # a second open applies nothing
    assert {"runs", "images", "read_errors", "predictions", "saliency_maps", "prompts", "judgments"} <= set(
        store.db.table_names())


def test_wal_mode(tmp_path):
    Store(tmp_path / "a.db")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_content_keys_depend_on_every_part():
    base = content_key("judgment", "map", 15.0, 0.6, "masked")
    assert base == content_key("judgment", "map", 15.0, 0.6, "masked")
    assert base != content_key("judgment", "map", 15.0, 0.7, "masked")
    assert base != content_key("judgment", "map", 15.0, 0.6, "heatmap")


def test_file_hash_cache_reuses_the_hash_until_the_file_changes(tmp_path):
    store = Store(tmp_path / "a.db")
    target = tmp_path / "weights.bin"
    target.write_bytes(b"one")
    calls = []

    def compute(path):
        calls.append(path)
        return f"hash-{path.read_bytes().decode()}"

    assert store.cached_file_hash(target, compute) == "hash-one"
    assert store.cached_file_hash(target, compute) == "hash-one"
    assert len(calls) == 1
    target.write_bytes(b"three")  # new size (and mtime): hashed again
    assert store.cached_file_hash(target, compute) == "hash-three"
    assert len(calls) == 2
