"""`run --ray` on a local Ray cluster with 2 workers per stage, a tiny VLM judging 40 seg-photos: the rows
(keys and values) of the single-process run; a driver killed mid-run, then run again, completes it."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, invoke, invoke_json, seg_photos_manifest

pytest.importorskip("ray", reason="the ray extra is not installed")

# Where the rows of two runs may differ: which run made them and when, how long their batch took, how big it was.
PROVENANCE = {"run_id", "created_at", "batch_seconds", "batch_size"}
READABLE = 40


def rows(db: Path, table: str) -> dict[str, dict]:
    key = {"images": "sha256", "prompts": "hash"}.get(table, "id")
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r[key]: {k: r[k] for k in r.keys() if k not in PROVENANCE}
                for r in conn.execute(f"select * from [{table}]")}


def assert_same_rows(cluster: Path, local: Path) -> None:
    """Every row equal, bit for bit (the actors compute the local run's batches with its threads), but for when,
    by which run and in how big a batch it was made."""
    for table in ("images", "predictions", "saliency_maps", "judgments", "prompts"):
        got, expected = rows(cluster, table), rows(local, table)
        assert len(expected) == (1 if table == "prompts" else READABLE), table
        assert got == expected, table


def localjudge(*args, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "localjudge", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **options)


def stop_ray() -> None:
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)


# One family: the cluster moves the same rows whichever judge makes them; two families here doubled the suite's
# longest test. Qwen2.5-VL, whose rows join a running batch: the local run's continuous decoder (batches handed over
# while answers are written) against the actors' one call per batch.
@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_a_run_on_a_local_ray_cluster_writes_the_single_process_rows(family, tiny_vlms_bpe512, data_dir, tmp_path):
    manifest = seg_photos_manifest(data_dir, tmp_path / "photos.csv", READABLE)
    judge = ["--vlm", tiny_vlms_bpe512[family], "--max-new-tokens", "256", "--batch-size", "8",
             "--judge-batch-size", "8"]
    local, cluster = tmp_path / "local.db", tmp_path / "cluster.db"
    invoke_json("run", manifest, "--db", local, *judge)

    # the driver is killed (with its local cluster) once some judgments are stored, then run again
    driver = localjudge("run", manifest, "--db", cluster, *judge, "--ray", "--ray-workers", "2")
    try:
        deadline = time.monotonic() + 600
        stored = 0
        while time.monotonic() < deadline and driver.poll() is None:
            if cluster.exists():
                with sqlite3.connect(cluster, timeout=30) as conn:
                    tables = {r[0] for r in conn.execute("select name from sqlite_master")}
                    stored = conn.execute("select count(*) from judgments").fetchone()[0] if "judgments" in tables \
                        else 0
                if stored:
                    break
            time.sleep(0.2)
        assert driver.poll() is None, driver.stderr.read()[-3000:]  # still running when killed
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        stop_ray()
    assert 0 < stored < READABLE

    again = localjudge("run", manifest, "--db", cluster, *judge, "--ray", "--ray-workers", "2", "--json")
    try:
        out, err = again.communicate(timeout=900)
    finally:
        stop_ray()
    assert again.returncode == 0, err[-3000:]
    stages = json.loads(out)
    assert stages["judge"]["computed"] < READABLE  # what the killed run stored was kept
    assert_same_rows(cluster, local)
    with sqlite3.connect(cluster) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert conn.execute("select count(*) from runs where status = 'finished'").fetchone()[0] == 1


def test_actor_resources_share_the_cluster():
    from localjudge.judge import JUDGES
    from localjudge.pipeline.distributed import actor_resources

    # a vLLM judge keeps its memory share of each GPU; the vision actor takes the rest
    vllm, transformers, recognizer = (JUDGES[name].reserves_gpu for name in ("vllm", "transformers", "recognizer"))
    assert actor_resources(4, 32, 4, False, vllm) == ({"num_gpus": 0.1, "num_cpus": 0},
                                                      {"num_gpus": 0.9, "num_cpus": 0})
    assert actor_resources(4, 32, 2, False, vllm, 2) == ({"num_cpus": 1}, {"num_gpus": 2, "num_cpus": 0})
    assert actor_resources(2, 16, 2, False, transformers) == ({"num_gpus": 0.5, "num_cpus": 0},) * 2
    assert actor_resources(0, 3, 2, True, recognizer) == ({"num_cpus": 0.5},) * 2  # one CPU kept for Ray Data


def test_data_parallel_runs_copies_of_the_judge_on_a_local_cluster(tiny_vlms_bpe512, data_dir, tmp_path):
    manifest = seg_photos_manifest(data_dir, tmp_path / "four.csv", 4)
    db = tmp_path / "dp.db"
    try:
        stages = invoke_json("run", manifest, "--db", db, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"],
                             "--max-new-tokens", "64",
                             "--data-parallel", "2", "--batch-size", "2", "--judge-batch-size", "2")
    finally:
        stop_ray()
    assert stages["judge"]["rows"] == 4
    with sqlite3.connect(db) as conn:
        config = json.loads(conn.execute("select config from runs").fetchone()[0])
    assert (config["ray"], config["ray_workers"], config["data_parallel_size"]) == ("local", 2, 2)


def test_findings_added_since_are_judged_once_on_a_cluster(tiny_vlms_bpe512, data_dir, tmp_path):
    """A multilabel store whose images gain targets (--targets labelled after a run of findings only): on Ray the
    images are made again whole by the vision actors; only the new maps are judged and counted, the maps judged
    before are not judged again, and every judgeable map ends with one judgment."""
    from .own_models import make_multilabel_model, objects_of, seg_rows

    rows = seg_rows(data_dir)
    weights, labels, classes = make_multilabel_model(data_dir, tmp_path / "model", rows)
    card = tmp_path / "objects.json"
    invoke("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--task", "multilabel",
           "--out", card)
    picked = [r for r in rows if len(objects_of(r)) > 1][:2] + [r for r in rows if len(objects_of(r)) == 1][:2]
    manifest = tmp_path / "four.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"])
        writer.writeheader()
        for r in picked:  # each photo also labelled with a category it does not show: a finding the model misses
            absent = next(c for c in ("cat", "bus", "chair", "bird") if c in classes and c not in objects_of(r))
            writer.writerow({"path": str(data_dir / "seg-photos" / r["file"]), "label": ";".join(objects_of(r)
                                                                                                + [absent])})
    db = tmp_path / "ml.db"
    common = ["--db", db, "--model", card, "--weights", weights, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"],
              "--max-new-tokens", "64", "--batch-size", "2", "--judge-batch-size", "2"]
    invoke_json("run", manifest, *common)
    with sqlite3.connect(db) as conn:
        before = {r[0] for r in conn.execute("select id from saliency_maps")}
        judged_before = dict(conn.execute("select id, created_at from judgments").fetchall())
    try:
        stages = invoke_json("run", manifest, *common, "--targets", "labelled", "--ray", "--ray-workers", "2")
    finally:
        stop_ray()
    with sqlite3.connect(db) as conn:
        maps = dict(conn.execute("select id, failure from saliency_maps").fetchall())
        judged = dict(conn.execute("select saliency_id, created_at from judgments").fetchall())
        ids = dict(conn.execute("select id, created_at from judgments").fetchall())
    new = {m for m in maps if m not in before}
    with sqlite3.connect(db) as conn:
        image_of = dict(conn.execute("select id, image_sha256 from saliency_maps").fetchall())
    # the premise: images with maps judged before gained maps (made again whole on the cluster)
    assert before and judged_before and {image_of[m] for m in new} & {image_of[m] for m in before}
    assert len(new) >= len(picked) and stages["explain"]["computed"] == len(new)
    assert stages["judge"]["computed"] == sum(maps[m] is None for m in new)
    assert set(judged) == {m for m, failure in maps.items() if failure is None}
    assert {k: ids[k] for k in judged_before} == judged_before  # judged before: not again


def test_a_judge_only_run_on_a_cluster_leaves_the_maps_another_live_run_holds(tiny_vlms_bpe512, data_dir, tmp_path):
    """The driver claims the judge-only maps before sending them, as a local run claims a batch: a map another live
    run holds is left to it (counted as elsewhere), the others are judged, and the run's claims end with it."""
    from localjudge.pipeline import lease_holder_alive
    from localjudge.store import Store

    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db, keys = tmp_path / "held.db", tmp_path / "keys.db"
    judge = ["--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--max-new-tokens", "16", "--batch-size", "1",
             "--judge-batch-size", "1"]
    invoke_json("predict", manifest, "--db", db)
    invoke_json("explain", "--db", db)
    with sqlite3.connect(db) as source, sqlite3.connect(keys) as copy:
        source.backup(copy)
    invoke_json("run", manifest, "--db", keys, *judge)  # a local run on a copy: each map's judgment key
    with sqlite3.connect(keys) as conn:
        key_of = dict(conn.execute("select saliency_id, id from judgments").fetchall())
    held = sorted(key_of)[0]
    holder = subprocess.Popen(["sleep", "300"])  # another run, alive, on this machine
    try:
        store = Store(db)
        lease = {"owner": "another run", "host": socket.gethostname(), "pid": holder.pid, "seconds": 600.0}
        assert store.claim_judgments([key_of[held]], lease, lease_holder_alive) == {key_of[held]}
        store.close()
        try:
            stages = invoke_json("run", manifest, "--db", db, *judge, "--ray", "--ray-workers", "1")
        finally:
            stop_ray()
    finally:
        holder.kill()
        holder.wait()
    assert stages["explain"]["computed"] == 0  # judge-only
    assert stages["judge"].get("elsewhere") == 1 and stages["judge"]["computed"] == len(key_of) - 1
    with sqlite3.connect(db) as conn:
        judged = {r[0] for r in conn.execute("select saliency_id from judgments")}
        owners = [r[0] for r in conn.execute("select owner from judge_leases")]
    assert judged == set(key_of) - {held}
    assert owners == ["another run"]  # the cluster run's claims ended with it
