"""A Ray run's judge-only work is read from the store a batch at a time (issue 20): one Ray Data read task per batch,
run on the driver's node a few at a time, so neither the driver nor Ray's object store holds every map of a large
judge-only run."""

from __future__ import annotations

import pickle
import sqlite3
import time

import pytest

from localjudge.store import Store

from .conftest import invoke_json, seg_photos_manifest
from .test_ray import stop_ray


def payload_read_by(task) -> dict:
    (block,) = task()
    assert block.num_rows == 1
    return pickle.loads(block.column("payload")[0].as_py())


def test_judge_only_read_tasks_read_their_batch_from_the_store_when_run(data_dir, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from localjudge.pipeline.distributed import judge_only_datasource, judge_payload

    manifest = seg_photos_manifest(data_dir, tmp_path / "five.csv", 5)
    db = tmp_path / "maps.db"
    invoke_json("predict", manifest, "--db", db)
    invoke_json("explain", "--db", db)
    store = Store(db)
    ids = [r["id"] for r in store.query("select id from saliency_maps order by id")]
    image_of = {m["id"]: m["image_sha256"] for m in store.saliency_maps(ids)}
    images = {r["sha256"]: r for r in store.images()}
    files = {sha: row["path"] for sha, row in images.items()}
    chunks = [ids[:2], ids[2:4], ids[4:]]
    batches = [(chunk, {image_of[i]: images[image_of[i]] for i in chunk}, {image_of[i]: files[image_of[i]]
                                                                            for i in chunk}) for chunk in chunks]
    tasks = judge_only_datasource(db, batches).get_read_tasks(1)
    assert len(tasks) == len(chunks)  # a task per batch, whatever the parallelism Ray Data asks

    # a read task's payload is the one the driver's own store makes for its batch
    first = payload_read_by(tasks[0])
    assert first == pickle.loads(judge_payload(store, chunks[0], images, files))
    assert first["to_judge"] == ids[:2] and [m["id"] for m in first["saliency_maps"]] == ids[:2]
    assert len(first["predictions"]) == 2 and {i["sha256"] for i in first["images"]} == {
        m["image_sha256"] for m in first["saliency_maps"]}
    # what the store says of a later batch's map after the first was read is what its payload carries: read when
    # that batch's task runs, not with the first
    store.db.execute("update saliency_maps set target_label = 'read later' where id = ?", [ids[3]])
    store.db.conn.commit()
    second, third = payload_read_by(tasks[1]), payload_read_by(tasks[2])
    assert [m["id"] for m in second["saliency_maps"]] == ids[2:4] and second["saliency_maps"][1]["target_label"] \
        == "read later"
    assert third == pickle.loads(judge_payload(store, chunks[2], images, files)) and third["to_judge"] == ids[4:]
    store.close()
    # the tasks read the file read-only: the driver stays the store's only writer
    reader = Store.read_only(db)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.db.execute("delete from judgments")
    reader.close()


def test_a_judge_only_ray_run_reads_its_batches_a_few_at_a_time(tiny_vlms_bpe512, data_dir, tmp_path, monkeypatch):
    """The driver puts no batch into Ray's object store itself (it put every one before the judge started), and
    no more batches are read at once than the window."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import ray.data

    from localjudge.pipeline.distributed import JUDGE_ONLY_READS_AT_ONCE

    count = 6
    manifest = seg_photos_manifest(data_dir, tmp_path / "six.csv", count)
    db = tmp_path / "maps.db"
    invoke_json("predict", manifest, "--db", db)
    invoke_json("explain", "--db", db)

    put, payloads_put = ray.put, []

    def spy_put(value, *args, **kwargs):
        if isinstance(value, bytes):  # a pickled payload (Ray Data puts its read tasks, not bytes)
            payloads_put.append(len(value))
        return put(value, *args, **kwargs)

    log = tmp_path / "reads.log"
    read_datasource = ray.data.read_datasource

    def timed_read_datasource(datasource, **options):
        """Each read task's span, written to `log` by the task itself (wherever Ray runs it)."""
        read_tasks = datasource.get_read_tasks

        def timed(read_fn):
            def read():
                began = time.time()
                blocks = list(read_fn())
                time.sleep(0.5)  # long enough for reads started beyond the window to overlap
                with open(log, "a") as handle:
                    handle.write(f"{began} {time.time()}\n")
                return blocks
            return read

        datasource.get_read_tasks = lambda *args, **kwargs: [
            ray.data.ReadTask(timed(task.read_fn), task.metadata) for task in read_tasks(*args, **kwargs)]
        return read_datasource(datasource, **options)

    monkeypatch.setattr(ray, "put", spy_put)
    monkeypatch.setattr(ray.data, "read_datasource", timed_read_datasource)
    try:
        stages = invoke_json("run", manifest, "--db", db, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"],
                             "--max-new-tokens", "16", "--batch-size", "1", "--judge-batch-size", "1",
                             "--ray", "--ray-workers", "1")
    finally:
        stop_ray()
    assert stages["explain"]["computed"] == 0 and stages["judge"]["computed"] == count  # judge-only
    assert payloads_put == []
    spans = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    assert len(spans) == count  # a read per batch of one map
    at_once = max(sum(began <= start < ended for began, ended in spans) for start, _ in spans)
    assert at_once <= JUDGE_ONLY_READS_AT_ONCE


def test_a_ray_client_address_is_refused_with_the_reason(monkeypatch):
    """A Ray Client driver (ray://) runs off the cluster, where the read tasks pinned to its node could not reach the
    store: refused before any work (run_on_ray asks first), saying why."""
    from localjudge.errors import UserError
    from localjudge.pipeline.distributed import refuse_client_address

    with pytest.raises(UserError, match="Ray Client address is not supported"):
        refuse_client_address("ray://head.example:10001")
    with monkeypatch.context() as patched:  # "auto" as Ray reads it: the address $RAY_ADDRESS names
        patched.setenv("RAY_ADDRESS", "ray://head.example:10001")
        with pytest.raises(UserError, match=r"RAY_ADDRESS=ray://head\.example"):
            refuse_client_address("auto")
    refuse_client_address("local")  # a cluster this driver is part of: no error
