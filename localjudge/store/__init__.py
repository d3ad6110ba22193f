"""The store: the only package that writes SQL (this writer, its schema and merge). The database is localjudge's
memory: every stage reads its inputs from it and writes its outputs to it, keyed by content, so running a stage
again does only the work that is missing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import sqlite_utils

from ..errors import UserError
from .schema import MIGRATIONS, SCRATCH_KEPT, TABLES

BUSY_TIMEOUT_MS = 60_000


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def content_key(*parts) -> str:
    """A stable key for a row from the things it depends on (architecture note: content-addressed keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def pack_array(array: np.ndarray, dtype=np.float16) -> bytes:
    # level 1: a 224 x 224 map in a third of level 6's time, 1.4 % larger (scripts/bench_run.py's profile)
    return zlib.compress(np.ascontiguousarray(array, dtype=dtype).tobytes(), level=1)


def unpack_array(blob: bytes, shape: tuple[int, ...], dtype=np.float16) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=dtype).reshape(shape).astype(np.float32)


class StoreError(UserError):
    pass


class Store:
    def __init__(self, path: str | os.PathLike, create: bool = True, any_thread: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path}: no such database (run `localjudge run` or `predict` first)")
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # any_thread: one user at a time, but not always on the thread that opened it (a Ray actor's calls)
        self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), check_same_thread=not any_thread))
        # Another connection may be writing (the vision thread of an overlapped run, a second run on the same
        # file): wait for its transaction to end rather than fail.
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            self.db.enable_wal()
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: not a localjudge database ({error})") from error
        self.db.execute("PRAGMA foreign_keys = ON")
        self.migrate()

    @contextmanager
    def transaction(self):
        """One write transaction. It takes the write lock up front (BEGIN IMMEDIATE): a deferred transaction that
        reads before it writes, as sqlite-utils' inserts do, cannot wait for another writer when it upgrades, and
        fails with 'database is locked' at once; an immediate one waits up to the busy timeout."""
        connection = self.db.conn
        if connection.in_transaction:
            with self.db.atomic():  # nested: a savepoint
                yield
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # --- schema -----------------------------------------------------------------------------------------
    @classmethod
    def read_only(cls, path: str | os.PathLike) -> "Store":
        """The store file opened read-only (a Ray read task on the driver's node): none of the opening steps that
        could write is taken (no migration, no journal mode set), and a write raises; the driver stays its writer."""
        store = cls.__new__(cls)
        store.path = Path(path)
        store.db = sqlite_utils.Database(sqlite3.connect(f"{store.path.absolute().as_uri()}?mode=ro", uri=True))
        store.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return store

    def migrate(self) -> list[str]:
        # Two processes may open a new store at once (two runs started together): the list of migrations is made and
        # each migration applied under the write lock taken up front (a statement that reads the schema and then
        # writes could not wait for the other's lock: SQLite answers "database is locked" at once), and a migration
        # only if the other has not recorded it meanwhile.
        if "_migrations" not in self.db.table_names():  # (a store that has it is opened without a write lock)
            with self.transaction():
                self.db["_migrations"].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
        done = {row["name"] for row in self.db["_migrations"].rows}
        applied = []
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            with self.transaction():
                if self.db.execute("select 1 from _migrations where name = ?", [fn.__name__]).fetchone():
                    continue  # applied by another connection since this one read the list
                fn(self.db)
                self.db["_migrations"].insert({"name": fn.__name__, "applied_at": now()})
            applied.append(fn.__name__)
        return applied

    def row_counts(self) -> dict[str, int]:
        return {name: self.db[name].count for name in self.db.table_names()}

    # --- runs -------------------------------------------------------------------------------------------
    def record_run(self, run: dict) -> None:
        """A run is keyed by everything it was asked to do, so the same command run twice is one row."""
        with self.transaction():
            if self.has("runs", run["id"]):
                self.db["runs"].update(run["id"], {"status": "running"})
            else:
                self.db["runs"].insert({**run, "started_at": now(), "status": "running"})

    def set_run_provider(self, run_id: str, provider: str) -> None:
        with self.transaction():
            self.db["runs"].update(run_id, {"execution_provider": provider})

    def finish_run(self, run_id: str, status: str = "finished") -> None:
        with self.transaction():
            self.db["runs"].update(run_id, {"finished_at": now(), "status": status})

    def has(self, table: str, pk) -> bool:
        try:
            self.db[table].get(pk)
            return True
        except sqlite_utils.db.NotFoundError:
            return False

    # --- file hash cache --------------------------------------------------------------------------------
    def cached_file_hash(self, path: Path, compute: Callable[[Path], str]) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        rows = list(self.db.query(
            "select sha256 from file_hashes where path = ? and size_bytes = ? and mtime_ns = ?", key))
        if rows:
            return rows[0]["sha256"]
        digest = compute(path)
        with self.transaction():
            self.db["file_hashes"].insert(
                {"path": key[0], "size_bytes": key[1], "mtime_ns": key[2], "sha256": digest}, replace=True)
        return digest

    # --- ingest -----------------------------------------------------------------------------------------
    def known_error_ids(self) -> set[str]:
        return {r["id"] for r in self.db.query("select id from read_errors")}

    def add_images(self, images: list[dict], errors: list[dict], changed: list[dict] = (),
                   run_id: str | None = None, read: list[str] = ()) -> None:
        """New images and read errors, changes to stored images, and that run `run_id` read the images `read`."""
        with self.transaction():
            if run_id and read:
                self.db["run_images"].insert_all(({"run_id": run_id, "image_sha256": sha} for sha in read),
                                                 pk=("run_id", "image_sha256"), ignore=True)
            if images:
                self.db["images"].insert_all(images, pk="sha256", ignore=True)
            if errors:
                self.db["read_errors"].insert_all(errors, pk="id", ignore=True)
            for row in changed:
                self.db["images"].update(row["sha256"], {k: v for k, v in row.items() if k != "sha256"})
            # A file that reads now is no longer an error, whatever it was before.
            readable = [row["path"] for row in [*images, *changed] if "path" in row]
            if readable:
                self.db.execute("delete from read_errors where path in (select value from json_each(?))",
                                [json.dumps(readable)])

    def image_kinds_of_maps(self, saliency_ids: Iterable[str]) -> dict[str, str | None]:
        """The stored kind of each map's image (None where the file said none), by map id."""
        return {r["id"]: r["kind"] for r in self.db.query(
            "select s.id, i.kind from saliency_maps s join images i on i.sha256 = s.image_sha256 "
            "where s.id in (select value from json_each(?))", [json.dumps(list(saliency_ids))])}

    def images(self, sha256s: Iterable[str] | None = None) -> list[dict]:
        if sha256s is None:
            return list(self.db.query("select * from images order by path"))
        return self._rows_where_in("images", "sha256", sha256s, order="path")

    def read_errors(self) -> list[dict]:
        return list(self.db.query("select * from read_errors order by path"))

    # --- predictions ------------------------------------------------------------------------------------
    def existing_ids(self, table: str, ids: Iterable[str], column: str = "id", where: str = "") -> set[str]:
        sql = f"select [{column}] as key from [{table}] where [{column}] in (select value from json_each(?)) {where}"
        return {r["key"] for r in self.db.query(sql, [json.dumps(list(ids))])}

    def _rows_where_in(self, table: str, column: str, values: Iterable[str], order: str) -> list[dict]:
        # One JSON parameter instead of one placeholder per value: no limit on how many are asked for.
        sql = f"select * from [{table}] where [{column}] in (select value from json_each(?)) order by [{order}]"
        return list(self.db.query(sql, [json.dumps(list(values))]))

    def retryable_judgments(self, ids: Iterable[str]) -> set[str]:
        """Judgments whose backend crashed or whose server refused the request (its settings may have changed
        since), not those whose answer could not be parsed: worth another try."""
        return self.existing_ids("judgments", ids, where="and failure_kind in ('backend', 'rejected')")

    def upsert_judgments(self, rows: list[dict], lease_owner: str | None = None) -> None:
        """A batch's judgments, and the end of `lease_owner`'s claims on them. Upserted, so a retried backend failure
        replaces its row instead of adding one; a stored successful judgment is never replaced (another run may
        have judged the same map meanwhile: a failure here must not overwrite its answer)."""
        with self.transaction():
            self._upsert_judgments(rows)
            if lease_owner is not None:
                self.db.execute("delete from judge_leases where owner = ? and judgment_id in "
                                "(select value from json_each(?))", [lease_owner, json.dumps([r["id"] for r in rows])])

    def _upsert_judgments(self, rows: list[dict]) -> None:
        answered = self.existing_ids("judgments", [r["id"] for r in rows], where="and status = 'ok'")
        kept = [r for r in rows if r["id"] not in answered]
        if kept:
            self.db["judgments"].upsert_all(kept, pk="id")

    def claim_judgments(self, keys: list[str], lease: dict, holder_alive: Callable[[dict], bool]) -> set[str]:
        """The judgment keys a run may judge now, claimed for it in one write transaction (`lease`: owner, host,
        pid, seconds): all but those a judgment is stored for that needs no retry (another run finished them) and
        those another owner holds, unexpired, while `holder_alive(lease row)` says it lives."""
        if not keys:
            return set()
        moment = time.time()
        with self.transaction():
            held = {r["judgment_id"]: r for r in self.db.query(
                "select * from judge_leases where owner != ? and expires_at > ? and judgment_id in "
                "(select value from json_each(?))", [lease["owner"], moment, json.dumps(keys)])}
            done = self.existing_ids("judgments", keys, where="and not (status = 'failed' and failure_kind in "
                                                             "('backend', 'rejected'))")
            free = [k for k in keys if k not in done and not (k in held and holder_alive(held[k]))]
            if free:
                self.db["judge_leases"].upsert_all(
                    ({"judgment_id": k, "owner": lease["owner"], "host": lease["host"], "pid": lease["pid"],
                      "claimed_at": now(), "expires_at": moment + lease["seconds"]} for k in free),
                    pk="judgment_id")
        return set(free)

    def renew_leases(self, owner: str, seconds: float) -> None:
        """Every claim of `owner` lasts `seconds` from now (a run that claimed its work up front, still at it)."""
        with self.transaction():
            self.db.execute("update judge_leases set expires_at = ? where owner = ?", [time.time() + seconds, owner])

    def release_leases(self, owner: str) -> None:
        """Every claim of `owner` ended (its run is over: what it did not judge is free for another)."""
        with self.transaction():
            self.db.execute("delete from judge_leases where owner = ?", [owner])

    def upsert_rows(self, table: str, rows: list[dict]) -> None:
        # Rows computed again because a stored one lacked a column added since (see the caller): replaced.
        if rows:
            with self.transaction():
                self.db[table].upsert_all(rows, pk="id")

    def insert_rows(self, table: str, rows: list[dict]) -> None:
        if not rows:
            return
        with self.transaction():
            self.db[table].insert_all(rows, pk="id", ignore=True)

    def predictions(self, ids: Iterable[str] | None = None) -> list[dict]:
        if ids is None:
            return list(self.db.query("select * from predictions"))
        return self._rows_by_id("predictions", ids)

    def predictions_with_labels(self, ids: Iterable[str]) -> list[dict]:
        return list(self.db.query(
            "select p.id, p.predicted_index, p.label_indices, i.label from predictions p "
            "join images i on i.sha256 = p.image_sha256 where p.id in (select value from json_each(?))",
            [json.dumps(list(ids))]))

    def predictions_of_images(self, sha256s: Iterable[str]) -> list[dict]:
        """Every model's predictions of these images, with the image's current label and the predicting run."""
        return list(self.db.query(
            "select p.id, p.model_hash, p.run_id, p.predicted_index, p.label_indices, i.label from predictions p "
            "join images i on i.sha256 = p.image_sha256 where p.image_sha256 in (select value from json_each(?))",
            [json.dumps(list(sha256s))]))

    def update_predictions(self, updates: list[dict]) -> None:
        with self.transaction():
            for row in updates:
                self.db["predictions"].update(row["id"], {k: v for k, v in row.items() if k != "id"})

    def set_ground_truth(self, rows: list[dict]) -> None:
        """Each image's regions, replacing all it had (a new source is the image's whole ground truth), and the
        region scores against regions the image no longer has (derived from a region gone, they would be read as
        current)."""
        images = json.dumps(sorted({row["image_sha256"] for row in rows}))
        with self.transaction():
            self.db.execute("delete from ground_truth where image_sha256 in (select value from json_each(?))", [images])
            self.db["ground_truth"].insert_all(rows, pk=("image_sha256", "label"))
            self.db.execute("delete from region_scores where image_sha256 in (select value from json_each(?)) and "
                            "mask_sha256 not in (select g.mask_sha256 from ground_truth g where g.image_sha256 = "
                            "region_scores.image_sha256)", [images])

    def ground_truth(self, sha256s: Iterable[str]) -> list[dict]:
        return self._rows_where_in("ground_truth", "image_sha256", sha256s, "image_sha256")

    def prediction_ids(self, model_hash: str, preprocessing: str) -> list[str]:
        """Every prediction of one model file and preprocessing, by image path."""
        return [r["id"] for r in self.db.query(
            "select p.id from predictions p join images i on i.sha256 = p.image_sha256 "
            "where p.model_hash = ? and p.preprocessing = ? order by i.path", [model_hash, preprocessing])]

    def map_findings(self, prediction_ids: Iterable[str]) -> list[dict]:
        """The maps of these predictions with their targets and whether each is a finding (not the maps)."""
        return list(self.db.query(
            "select id, prediction_id, target_index, finding, current_target from saliency_maps where prediction_id in "
            "(select value from json_each(?))", [json.dumps(list(prediction_ids))]))

    def set_map_findings(self, marks: dict[str, tuple[int, int]]) -> None:
        """Each map's (finding, current_target), by map id."""
        if marks:
            with self.transaction():
                self.db.conn.executemany("update saliency_maps set finding = ?, current_target = ? where id = ?",
                                         [(finding, current, key) for key, (finding, current) in marks.items()])

    def saliency_maps(self, ids: Iterable[str]) -> list[dict]:
        return self._rows_by_id("saliency_maps", ids)

    def saliency_ids(self, method: str, target_layer: str, prediction_ids: Iterable[str]) -> list[str]:
        """The maps of one CAM method and layer made for these predictions."""
        return [r["id"] for r in self.db.query(
            "select id from saliency_maps where method = ? and target_layer = ? and prediction_id in "
            "(select value from json_each(?))", [method, target_layer, json.dumps(list(prediction_ids))])]

    def prediction_backends(self, model: str) -> set[str]:
        """The vision backends this model's stored predictions were made on."""
        return {r["backend"] for r in self.db.query("select distinct backend from predictions where model = ?",
                                                    [model])}

    def failed_maps(self, ids: Iterable[str]) -> set[str]:
        """Those of these maps that are stored as map failures (degenerate)."""
        return self.existing_ids("saliency_maps", ids, where="and failure is not null")

    def judgments(self, ids: Iterable[str]) -> list[dict]:
        return self._rows_by_id("judgments", ids)

    def canary_judgments(self, ids: Iterable[str]) -> list[dict]:
        return self._rows_by_id("canary_judgments", ids)

    def prompts(self) -> list[dict]:
        return list(self.db.query("select * from prompts"))

    def _rows_by_id(self, table: str, ids: Iterable[str]) -> list[dict]:
        ids = list(ids)
        order = {i: n for n, i in enumerate(ids)}
        return sorted(self._rows_where_in(table, "id", ids, order="id"), key=lambda r: order[r["id"]])

    def add_prompt(self, prompt_hash: str, image_mode: str, text: str) -> None:
        with self.transaction():
            self.db["prompts"].insert(
                {"hash": prompt_hash, "image_mode": image_mode, "text": text, "created_at": now()},
                pk="hash", ignore=True)

    # --- rows computed elsewhere (Ray actors) ---------------------------------------------------------
    def add_computed(self, predictions: list[dict], maps: list[dict], prompts: list[dict],
                     judgments: list[dict]) -> None:
        """One batch's rows made by another process, in one transaction, as the local stages write them."""
        with self.transaction():
            if predictions:
                self.db["predictions"].insert_all(predictions, pk="id", ignore=True)
            if maps:
                self.db["saliency_maps"].insert_all(maps, pk="id", ignore=True)
            for prompt in prompts:
                self.db["prompts"].insert(prompt, pk="hash", ignore=True)
            if judgments:
                self._upsert_judgments(judgments)

    def clear_computed(self) -> None:
        """Empty the tables of images and what was computed from them (a worker's scratch store, between batches),
        children before parents."""
        with self.transaction():
            for table, _ in reversed(TABLES):
                if table not in SCRATCH_KEPT:
                    self.db.execute(f"delete from [{table}]")

    # --- people ----------------------------------------------------------------------------------------
    def rate(self, view: dict, rater: str, score: int) -> dict:
        """Store (or replace) one rater's score of one view."""
        row = {"id": content_key("rating", view["view_id"], rater), "view_id": view["view_id"],
               "saliency_id": view["saliency_id"], "image_sha256": view["image_sha256"], "alpha": view["alpha"],
               "beta": view["beta"], "image_mode": view["image_mode"], "rater": rater, "score": score,
               "updated_at": now()}
        with self.transaction():
            if self.has("ratings", row["id"]):
                self.db["ratings"].update(row["id"], {"score": score, "updated_at": row["updated_at"]})
            else:
                self.db["ratings"].insert({**row, "created_at": row["updated_at"]})
        return row

    def add_calibration(self, row: dict) -> None:
        with self.transaction():
            self.db["calibrations"].insert(row, pk="id", replace=True)

    def query(self, sql: str, params: Iterable = ()) -> Iterator[dict]:
        return self.db.query(sql, list(params))

    def close(self) -> None:
        self.db.close()


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read whole every time (what verifies a bundle, a doctor's check, an export's
    card)."""
    with open(path, "rb") as handle:
        return _sha256_of(handle)


def _sha256_of(handle) -> str:
    digest = hashlib.sha256()
    while block := handle.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


# A file's hash is remembered only once the file has been left alone this long when it is read: a change made after
# that gets a later ctime than the one remembered, whatever the filesystem's or the kernel's timestamp granularity
# (before Linux 6.13 timestamps move once per tick; git's "racily clean" rule is the same)
SETTLED_NS = 3_000_000_000
_REMEMBERED: dict[tuple[int, ...], str] = {}
_REMEMBERED_LOCK = threading.Lock()
_REMEMBERED_MOST = 256
remembered_reads = {"hits": 0, "reads": 0}  # how often sha256_remembered answered from memory, and read a file


def sha256_remembered(path: Path) -> str:
    """sha256_file, read once per process while the file stays as it was: a run names its models by their weights'
    hash from several places (the run row, each judgment key's judge, the recognizer's choice), twelve reads of
    20-30 MB before. The file is opened first (on NFS the open revalidates its attributes), and its hash is keyed by
    the open file's device, inode, size, mtime and ctime: a change that keeps the size and puts the mtime back
    (os.utime) still moves the ctime, which only the kernel sets. Remembered only where the file had not changed for
    SETTLED_NS when it was opened. Limits: a filesystem that keeps no change time (FAT) shows a changed ctime only
    where the mtime changed; an NFS server whose clock runs SETTLED_NS behind this machine's, or a mount without
    close-to-open consistency (nocto), can make a fresh change look settled. Verification commands do not use it
    (sha256_file reads every time)."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        checked = time.time_ns()  # settled is judged when the file was looked at, not after a long read
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with _REMEMBERED_LOCK:
            found = _REMEMBERED.get(key)
            remembered_reads["hits" if found else "reads"] += 1
        if found:
            return found
        found = _sha256_of(handle)
    if checked - max(stat.st_mtime_ns, stat.st_ctime_ns) >= SETTLED_NS:
        with _REMEMBERED_LOCK:
            if len(_REMEMBERED) >= _REMEMBERED_MOST:
                _REMEMBERED.clear()
            _REMEMBERED[key] = found
    return found


def forget_remembered_hashes() -> None:
    """Every remembered hash forgotten (a benchmark's run pays for its hashing as a new process does)."""
    with _REMEMBERED_LOCK:
        _REMEMBERED.clear()


__all__ = ["Store", "StoreError", "content_key", "pack_array", "unpack_array", "sha256_file", "sha256_remembered",
           "forget_remembered_hashes", "now", "MIGRATIONS",
           "TABLES"]
