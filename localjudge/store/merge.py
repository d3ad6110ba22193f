"""Merge stores made on separate machines (say, `--shard 1/2` and `--shard 2/2`) into one.

Every row is keyed by its content, so merging is a union: a row whose key the target lacks is copied with its
run id (provenance kept, the runs themselves copied too); a row the target has with the same values is skipped;
a row the target has with other values is a conflict: reported, and the target's row kept. Merging again
changes nothing. Sources are opened read-only and never migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import UserError
from . import Store
from .schema import TABLES, flag_zero_maps

# When and by which run a row was made, how long its batch took and where its file lay on that machine say nothing
# of its content: two stores that computed the same row at different times, or on machines that mount the images
# elsewhere, agree.
# Columns a store made before they existed holds as NULL (images.kind: m013): another store's value fills them.
# (m015: a map's target probability, a prediction's task.)
FILLABLE = {"images": ("kind",), "saliency_maps": ("target_probability",), "predictions": ("task",)}
# Marks a run sets from its own settings (a multilabel map's finding at its threshold, whether it is a target of its
# --targets): two stores run with other thresholds differ there without disagreeing; the next run marks them again.
RUN_MARKS = frozenset({"finding", "current_target"})
PROVENANCE = frozenset({"run_id", "created_at", "updated_at", "started_at", "finished_at", "batch_seconds",
                        "batch_size", "execution_provider", "path", "reference"})
# A model's float outputs depend in their last bits on the batch they were computed in (another batch size, another
# kernel): a probability vector, a map or a curve computed twice is never byte-equal. They are not compared; floats
# are compared to a relative 1e-4; what decides (a class, a score, an answer, a quadrant) must be equal.
NUMERIC_NOISE = frozenset({"probs", "map", "top5", "deletion_curve", "insertion_curve", "details", "cascade"})
FLOAT_TOLERANCE = 1e-4


class MergeError(UserError):
    pass


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"pragma {schema}.table_info([{table}])")]


def merge_stores(sources: list[Path], into: Path) -> dict:
    target = Store(into)  # created and migrated if new
    conn = target.db.conn
    report = {"into": str(into), "sources": [], "conflicts": []}
    for source in sources:
        source = Path(source)
        if not source.is_file():
            raise MergeError(f"{source}: no such database")
        if source.resolve() == Path(into).resolve():
            raise MergeError(f"{source}: is the target itself")
        conn.execute("attach database ? as src", [source.absolute().as_uri() + "?mode=ro"])
        try:
            counts = {}
            with target.transaction():
                for table, key in TABLES:
                    counts[table] = _merge_table(conn, table, key, source, report["conflicts"])
        finally:
            conn.execute("detach database src")
        report["sources"].append({"source": str(source), "added": {t: n for t, n in counts.items() if n}})
    target.close()
    report["added"] = sum(n for s in report["sources"] for n in s["added"].values())
    return report


def _merge_table(conn, table: str, key: tuple[str, ...], source: Path, conflicts: list) -> int:
    source_columns = _columns(conn, "src", table)
    if not source_columns:
        return 0  # an older store without this table
    target_columns = _columns(conn, "main", table)
    unknown = [c for c in source_columns if c not in target_columns]
    if unknown:
        raise MergeError(f"{source}: table {table} has columns this localjudge does not know ({', '.join(unknown)}); "
                         "merge with the newer version")
    columns = source_columns
    listed = ", ".join(f"[{c}]" for c in columns)
    # a key column an older store lacks reads as its default (ground_truth.label: '', the image's object region)
    source_key = {k: f"s.[{k}]" if k in source_columns else "''" for k in key}
    matches = " and ".join(f"t.[{k}] = {source_key[k]}" for k in key)
    if table == "judgments":
        # a judgment that failed here (a crashed batch, a server that refused) gives way to one that succeeded there
        conn.execute("delete from main.judgments where status = 'failed' and id in "
                     "(select id from src.judgments where status = 'ok')")
    # Rows the target lacks: copied in one statement.
    added = conn.execute(
        f"insert into main.[{table}] ({listed}) select {listed} from src.[{table}] s "
        f"where not exists (select 1 from main.[{table}] t where {matches})").rowcount
    if table == "saliency_maps" and "failure" not in source_columns:
        # a store made before degenerate maps were caught: its zero maps are found as m007 finds them
        flag_zero_maps(conn, "select id from src.saliency_maps")
    for column in FILLABLE.get(table, ()):  # a value one store learnt later fills the other's unknown
        if column in columns:
            same = " and ".join(f"{source_key[k]} = main.[{table}].[{k}]" for k in key)
            conn.execute(f"update main.[{table}] set [{column}] = (select s.[{column}] from src.[{table}] s where "
                         f"{same}) where [{column}] is null")
    if table == "runs":
        return added  # a run is provenance itself: the same run merged twice may differ in its status and times
    # Rows both have: compared on what they say (not provenance, not float noise).
    types = {r[1]: (r[2] or "").upper() for r in conn.execute(f"pragma main.table_info([{table}])")}
    compared = [c for c in columns if c not in PROVENANCE and c not in NUMERIC_NOISE and c not in RUN_MARKS
                and c not in key
                and types.get(c) != "BLOB"]
    if compared:
        def different(c: str) -> str:
            if types.get(c) in ("FLOAT", "REAL"):
                return (f"((t.[{c}] is null) != (s.[{c}] is null) or abs(t.[{c}] - s.[{c}]) > "
                        f"{FLOAT_TOLERANCE} * max(1.0, abs(t.[{c}])))")
            if c in FILLABLE.get(table, ()):
                return f"(t.[{c}] is not null and s.[{c}] is not null and t.[{c}] is not s.[{c}])"
            return f"(t.[{c}] is not s.[{c}])"

        differs = " or ".join(different(c) for c in compared)
        rows = conn.execute(
            f"select {', '.join(source_key[k] for k in key)}, "
            + ", ".join(f"coalesce({different(c)}, 0)" for c in compared)
            + f" from src.[{table}] s join main.[{table}] t on {matches} where {differs}").fetchall()
        for row in rows:
            flags = row[len(key):]
            conflicts.append({"table": table, "key": list(row[:len(key)]), "source": str(source),
                              "columns": [c for c, flag in zip(compared, flags) if flag]})
    return added

