"""The only module that writes SQL. The database is localjudge's memory: every stage reads its inputs from it and
writes its outputs to it, keyed by content, so running a stage again does only the work that is missing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []
BUSY_TIMEOUT_MS = 60_000


def migration(fn: Callable[[sqlite_utils.Database], None]):
    """Register a schema change; migrations run once each, in the order they are defined (simonw/llm pattern)."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str, "command": str, "config": str, "model_hashes": str, "package_versions": str,
            "inputs": str, "started_at": str, "finished_at": str, "status": str,
        },
        pk="id",
    )
    db["images"].create(
        {
            "sha256": str, "path": str, "size_bytes": int, "width": int, "height": int, "mode": str,
            "format": str, "label": str, "run_id": str, "created_at": str,
        },
        pk="sha256",
    )
    db["read_errors"].create(
        {"id": str, "path": str, "size_bytes": int, "sha256": str, "reason": str, "run_id": str, "created_at": str},
        pk="id",
    )
    db["predictions"].create(
        {
            "id": str, "image_sha256": str, "model": str, "model_hash": str, "preprocessing": str,
            "predicted_index": int, "predicted_label": str, "confidence": float, "top5": str,
            "probs": bytes, "label_indices": str, "correct": int, "run_id": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("image_sha256", "images", "sha256")],
    )
    db["saliency_maps"].create(
        {
            "id": str, "prediction_id": str, "image_sha256": str, "method": str, "target_layer": str,
            "target_index": int, "height": int, "width": int, "map": bytes, "run_id": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("prediction_id", "predictions", "id")],
    )
    db["prompts"].create({"hash": str, "image_mode": str, "text": str, "created_at": str}, pk="hash")
    db["judgments"].create(
        {
            "id": str, "saliency_id": str, "prediction_id": str, "image_sha256": str, "alpha": float,
            "beta": float, "image_mode": str, "judge_backend": str, "judge_model": str, "judge_model_hash": str,
            "prompt_hash": str, "decoding": str, "status": str, "failure_kind": str, "score": int, "evaluation": str,
            "justification": str, "raw_text": str, "error": str, "input_tokens": int, "output_tokens": int,
            "batch_size": int, "batch_seconds": float, "run_id": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id"), ("prompt_hash", "prompts", "hash")],
    )
    db["file_hashes"].create(
        {"path": str, "size_bytes": int, "mtime_ns": int, "sha256": str}, pk=("path", "size_bytes", "mtime_ns")
    )
    db["predictions"].create_index(["image_sha256"])
    db["saliency_maps"].create_index(["prediction_id"])
    db["judgments"].create_index(["saliency_id"])


@migration
def m002_execution_provider_and_backend(db: sqlite_utils.Database) -> None:
    # Which engine produced a row: the run's execution provider (e.g. CUDAExecutionProvider) and each
    # prediction's backend (torch or onnx).
    db["runs"].add_column("execution_provider", str)
    db["predictions"].add_column("backend", str)


@migration
def m003_judge_image_size(db: sqlite_utils.Database) -> None:
    # The judge's image size decides what it sees, so it is part of a judgment's key and recorded with it.
    db["judgments"].add_column("judge_image_size", int)


@migration
def m004_ground_truth_and_region_scores(db: sqlite_utils.Database) -> None:
    # An image's object region (one per image; a new source replaces it) and, per saliency map, how the binarised
    # attention mask agrees with it. A score is keyed by the map, the region's hash and beta.
    db["ground_truth"].create(
        {"image_sha256": str, "source": str, "reference": str, "height": int, "width": int, "mask": bytes,
         "mask_sha256": str, "area_fraction": float, "run_id": str, "created_at": str},
        pk="image_sha256",
        foreign_keys=[("image_sha256", "images", "sha256")],
    )
    db["region_scores"].create(
        {"id": str, "saliency_id": str, "image_sha256": str, "mask_sha256": str, "beta": float, "iou": float,
         "dice": float, "pixel_accuracy": float, "f1": float, "precision": float, "recall": float,
         "attended_fraction": float, "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["region_scores"].create_index(["saliency_id"])


@migration
def m005_faithfulness(db: sqlite_utils.Database) -> None:
    # Perturbation metrics of a saliency map, keyed by the map, the step count and the baseline fill; the curves are
    # kept (JSON lists) so other summaries can be computed later without the model.
    db["faithfulness"].create(
        {"id": str, "saliency_id": str, "image_sha256": str, "target_index": int, "steps": int, "baseline": str,
         "backend": str, "original_score": float, "explanation_score": float, "deletion_auc": float,
         "insertion_auc": float, "aopc": float, "average_drop": float, "increase_in_confidence": float,
         "deletion_curve": str, "insertion_curve": str, "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["faithfulness"].create_index(["saliency_id"])


@migration
def m006_ratings_and_calibrations(db: sqlite_utils.Database) -> None:
    # A person's 0-5 rating of a view (what a judge was shown: a map, alpha, beta, image mode), one per rater and
    # view (rating again replaces it); every judge that saw the same view is compared with it. A calibration is the
    # judge threshold fitted to people's ratings for one judge setting (reports.GROUP_COLUMNS).
    db["ratings"].create(
        {"id": str, "view_id": str, "saliency_id": str, "image_sha256": str, "alpha": float, "beta": float,
         "image_mode": str, "rater": str, "score": int, "created_at": str, "updated_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["ratings"].create_index(["saliency_id"])
    db["ratings"].create_index(["rater"])
    db["calibrations"].create(
        {"id": str, "setting_key": str, "setting": str, "raters": str, "human_threshold": int, "threshold": int,
         "n": int, "kappa": float, "weighted_kappa": float, "accuracy": float, "pearson": float, "spearman": float,
         "details": str, "created_at": str},
        pk="id",
    )
    db["calibrations"].create_index(["setting_key"])


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def content_key(*parts) -> str:
    """A stable key for a row from the things it depends on (architecture note: content-addressed keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def pack_array(array: np.ndarray, dtype=np.float16) -> bytes:
    return zlib.compress(np.ascontiguousarray(array, dtype=dtype).tobytes(), level=6)


def unpack_array(blob: bytes, shape: tuple[int, ...], dtype=np.float16) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=dtype).reshape(shape).astype(np.float32)


class StoreError(Exception):
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
    def migrate(self) -> list[str]:
        if "_migrations" not in self.db.table_names():
            self.db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
        done = {row["name"] for row in self.db["_migrations"].rows}
        applied = []
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            with self.transaction():
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

    def add_images(self, images: list[dict], errors: list[dict], changed: list[dict] = ()) -> None:
        with self.transaction():
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

    def upsert_judgments(self, rows: list[dict]) -> None:
        # Upsert, so a retried backend failure replaces its row instead of adding one.
        with self.transaction():
            self.db["judgments"].upsert_all(rows, pk="id")

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

    def update_predictions(self, updates: list[dict]) -> None:
        with self.transaction():
            for row in updates:
                self.db["predictions"].update(row["id"], {k: v for k, v in row.items() if k != "id"})

    def set_ground_truth(self, rows: list[dict]) -> None:
        with self.transaction():
            self.db["ground_truth"].upsert_all(rows, pk="image_sha256")

    def ground_truth(self, sha256s: Iterable[str]) -> list[dict]:
        return self._rows_where_in("ground_truth", "image_sha256", sha256s, "image_sha256")

    def saliency_maps(self, ids: Iterable[str]) -> list[dict]:
        return self._rows_by_id("saliency_maps", ids)

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
                self.db["judgments"].upsert_all(judgments, pk="id")

    def clear_computed(self) -> None:
        """Empty the tables of images and what was computed from them (a worker's scratch store, between batches)."""
        with self.transaction():
            for table in ("judgments", "saliency_maps", "predictions", "images"):
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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["Store", "StoreError", "content_key", "pack_array", "unpack_array", "sha256_file", "now"]
