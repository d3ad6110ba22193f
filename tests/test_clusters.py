"""Map clustering (eval clusters): known answers on synthetic maps whose groups are known, and the command on real
photos (clusters stored with their members)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from localjudge.analysis.clusters import border_share, describe_clusters, downsample, eigengap_clusters, knn_affinity

from .conftest import invoke_json


def blob(centre: tuple[float, float], side: int = 64, sigma: float = 6.0) -> np.ndarray:
    rows, columns = np.mgrid[0:side, 0:side]
    return np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * sigma ** 2))


def test_downsample_and_border_by_hand():
    saliency = np.zeros((4, 4))
    saliency[0, 0] = 4.0
    saliency[3, 3] = 4.0
    assert downsample(saliency, 2).tolist() == [0.5, 0.0, 0.0, 0.5]  # cell means 1, 0, 0, 1 as a distribution
    assert downsample(np.zeros((4, 4)), 2).tolist() == [0.0] * 4
    grid = np.ones((16, 16))
    assert border_share(grid.ravel()) == pytest.approx(1 - 144 / 256)  # 2 cells of 16
    assert border_share(np.ones(64 * 64), 64) == pytest.approx(1 - 48 ** 2 / 64 ** 2)  # 8 cells of 64: 1/8 again
    assert border_share(np.ones(16), 4) == pytest.approx(1 - 2 * 2 / 16)  # 1 cell of 4: an inside of 2 x 2 remains


def test_neighbour_links_by_hand():
    """Points at 0, 1, 3 and 10 on a line, one neighbour each: 0 <-> 1 mutual (1), 3 -> 1 and 10 -> 3 one-sided
    (0.5 each way)."""
    affinity = knn_affinity(np.array([[0.0], [1.0], [3.0], [10.0]]), 1)
    assert affinity.tolist() == [[0, 1, 0, 0], [1, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 0.5, 0]]


def test_a_minority_looking_elsewhere_is_its_own_cluster_and_a_candidate():
    """Twelve maps on the centre (jittered) and five on the top-left corner: two clusters, the corner one flagged.
    With regions: the corner maps put little mass on the object (flagged); a second group on the object at another
    place (the object moved) is not."""
    rng = np.random.default_rng(0)
    centre = [blob((32 + rng.normal(0, 2), 32 + rng.normal(0, 2))) for _ in range(12)]
    corner = [blob((8 + rng.normal(0, 1), 8 + rng.normal(0, 1))) for _ in range(5)]
    features = np.stack([downsample(m) for m in centre + corner])
    labels, eigenvalues = eigengap_clusters(features, seed=0)
    assert labels.tolist() == [0] * 12 + [1] * 5 and eigenvalues[0] == pytest.approx(0, abs=1e-9)
    clusters = describe_clusters(features, labels, {"score": np.r_[np.full(12, 4.0), np.full(5, 1.0)]})
    assert [c["size"] for c in clusters] == [12, 5] and clusters[1]["score"] == 1.0
    assert not clusters[0]["shortcut_candidate"] and clusters[1]["shortcut_candidate"]
    assert clusters[1]["border_share"] > clusters[0]["border_share"]
    mass = np.r_[np.full(12, 0.8), np.full(5, 0.1)]
    with_regions = describe_clusters(features, labels, {"mass_in_region": mass})
    assert with_regions[1]["shortcut_candidate"] and "less of its mass on the object" in with_regions[1]["reasons"][0]
    on_object = describe_clusters(features, labels, {"mass_in_region": np.full(17, 0.8)})
    assert not on_object[1]["shortcut_candidate"]  # elsewhere in the view, but on the object: no shortcut


def test_clusters_of_real_maps_are_stored_with_their_members(tmp_path, data_dir):
    manifest = data_dir / "seg-photos" / "labels.csv"
    db = tmp_path / "clusters.db"
    from .conftest import invoke

    invoke("run", manifest, "--path-column", "file", "--label-column", "imagenet_indices", "--db", db,
           "--mask-column", "mask", "--shard", "1/2")
    found = invoke_json("eval", "clusters", "--db", db, "--min-maps", "6")["classes"]
    assert found, "a class with six or more maps (sorrel: the horses)"
    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("select id, size from map_clusters").fetchall())
        members = conn.execute("select cluster_id, count(*) from cluster_members group by cluster_id").fetchall()
    assert {cid: n for cid, n in members} == stored
    for entry in found:
        assert sum(c["size"] for c in entry["clusters"]) == entry["maps"]
        assert all(c["mass_in_region"] is not None for c in entry["clusters"])  # regions were given to the run
    again = invoke_json("eval", "clusters", "--db", db, "--min-maps", "6")["classes"]
    assert [c["clusters"][0]["members"] for c in again] == [c["clusters"][0]["members"] for c in found]
    with sqlite3.connect(db) as conn:  # how each clustering was made is stored with it
        parameters = [json.loads(p) for (p,) in conn.execute("select distinct parameters from map_clusters")]
    assert {(p["neighbours"], p["grid"], p["seed"]) for p in parameters} == {
        (min(10, c["maps"] - 1), 16, 0) for c in found}
    groups = tmp_path / "groups.json"  # per super-class: the horse classes together, everything else "other"
    groups.write_text(json.dumps({"groups": {"horses": [339, 603]}}))
    grouped = invoke_json("eval", "clusters", "--db", db, "--min-maps", "3", "--groups", groups)["classes"]
    with sqlite3.connect(db) as conn:
        targets = dict(conn.execute("select coalesce(s.target_index, p.predicted_index) in (339, 603), count(*) from "
                                    "saliency_maps s join predictions p on p.id = s.prediction_id group by 1"))
    assert {c["class"]: c["maps"] for c in grouped} == {name: targets[flag] for name, flag in
                                                        (("horses", 1), ("other", 0)) if targets.get(flag, 0) >= 3}
    assert all(c["parameters"]["by"] == "group" for c in grouped) and grouped
    sampled = invoke_json("eval", "clusters", "--db", db, "--min-maps", "6", "--max-maps", "10")["classes"]
    assert all(c["maps"] == min(10, c["class_maps"]) for c in sampled) and any(c["class_maps"] > 10 for c in sampled)
