"""`eval clusters`: the stored maps of each model file, CAM method and target tensor clustered per class (the class a
map explains) with analysis.clusters, and the clusters stored with their members (`map_clusters`,
`cluster_members`). Per cluster: its size, mean judge score, accuracy, mean mass inside the ground-truth region,
the border share of its mean map, exemplars, and whether it is a shortcut candidate."""

from __future__ import annotations

import json

import numpy as np

from ..analysis.clusters import (GRID, MAX_CLUSTERS, MIN_MAPS, NEIGHBOURS, describe_clusters, downsample,
                                 eigengap_clusters)
from ..queries import (GROUP_COLUMNS, SETTING_SELECT, TARGET_CORRECT, TARGET_CURRENT, describe_setting,
                       filter_clauses, setting_key)
from ..config import CLUSTER_DEFAULTS
from ..store import Store, content_key, now, pack_array, unpack_array


MAX_MAPS = CLUSTER_DEFAULTS["max_maps"]  # a class with more maps is clustered on a seeded sample (a dense affinity)


def cluster_maps(store: Store, grid: int = GRID, max_clusters: int = MAX_CLUSTERS, min_maps: int = MIN_MAPS,
                 seed: int = 0, beta: float = 0.6, run_id: str | None = None, exemplars: int = 3,
                 max_maps: int = MAX_MAPS, neighbours: int = NEIGHBOURS, groups: dict[int, str] | None = None,
                 groups_file: str | None = None, **filters) -> list[dict]:
    """Each class's clusters (see the module), or with `groups` (class index -> super-class) each super-class's (a
    class in no group: "other"). A cluster's mean score reads one judge setting, the one with the most judgments in
    the store (scores of two settings are not comparable)."""
    from .canary import image_rng

    clauses, params = filter_clauses({k: v for k, v in filters.items() if k in ("model", "cam", "target_layer")})
    where = " and ".join(["s.failure is null", TARGET_CURRENT, *clauses])
    rows = list(store.query(
        "select s.id, s.image_sha256, p.model, p.model_hash, s.method as cam, s.target_layer, i.path, "
        "coalesce(s.target_label, p.predicted_label) as class, coalesce(s.target_index, p.predicted_index) as "
        "target_index, " + TARGET_CORRECT + " as correct "
        "from saliency_maps s join predictions p on p.id = s.prediction_id join images i on i.sha256 = "
        "s.image_sha256 where " + where + " order by p.model, s.method, s.target_layer, class, s.id", params))
    # judge settings per maps' setting (model file, method, target): a clustering reads the one of its own maps'
    # setting with the most judgments
    by_setting: dict[tuple, dict[str, dict[str, int]]] = {}
    described_setting: dict[str, str] = {}
    for j in store.query("select j.saliency_id, j.score, " + SETTING_SELECT + " from judgments j join predictions p "
                         "on p.id = j.prediction_id join saliency_maps s on s.id = j.saliency_id where "
                         "j.status = 'ok'"):
        key = setting_key(j)
        maps_setting = (j["model_hash"], j["cam"], j["target_layer"])
        by_setting.setdefault(maps_setting, {}).setdefault(key, {})[j["saliency_id"]] = j["score"]
        described_setting[key] = describe_setting({c: j[c] for c in GROUP_COLUMNS})
    mass = {r["saliency_id"]: r["mass_share"] for r in store.query(
        "select r.saliency_id, r.mass_share from region_scores r join ground_truth g on g.image_sha256 = "
        "r.image_sha256 and g.mask_sha256 = r.mask_sha256 where r.beta = ?", [beta])}
    by_class: dict[tuple, list[dict]] = {}
    for row in rows:
        name = row["class"] if groups is None else groups.get(row["target_index"], "other")
        by_class.setdefault((row["model"], row["model_hash"], row["cam"], row["target_layer"], name), []).append(row)
    found = []
    for (model, model_hash, cam, target_layer, name), members in by_class.items():
        if len(members) < min_maps:
            continue
        settings = by_setting.get((model_hash, cam, target_layer), {})
        chosen_setting = max(sorted(settings), key=lambda k: len(settings[k])) if settings else None
        scores = settings.get(chosen_setting, {})
        total = len(members)
        if total > max_maps:  # each map's own seeded draw ranks it, so a grown class keeps most of its sample
            members = sorted(members, key=lambda m: (image_rng(seed, m["image_sha256"]).random(),
                                                     m["id"]))[:max_maps]
        maps = {m["id"]: m for m in store.saliency_maps([m["id"] for m in members])}
        features = np.stack([downsample(unpack_array(maps[m["id"]]["map"], (maps[m["id"]]["height"],
                                                                           maps[m["id"]]["width"])), grid)
                             for m in members])
        labels, eigenvalues = eigengap_clusters(features, max_clusters, seed, neighbours)
        figures = {
            "score": np.array([scores.get(m["id"], np.nan) for m in members], dtype=float),
            "accuracy": np.array([np.nan if m["correct"] is None else m["correct"] for m in members], dtype=float),
            "mass_in_region": np.array([np.nan if mass.get(m["id"]) is None else mass[m["id"]] for m in members]),
        }
        parameters = {"affinity": "knn", "neighbours": min(neighbours, len(members) - 1),
                      "neighbours_asked": neighbours, "grid": grid,
                      "max_clusters": max_clusters, "seed": seed, "beta": beta, "maps": len(members),
                      "class_maps": total, "score_setting": described_setting.get(chosen_setting),
                      "by": "class" if groups is None else "group", "min_maps": min_maps, "max_maps": max_maps,
                      "groups_file": groups_file, "groups": None if groups is None else content_key(
                          "groups", sorted(groups.items()))}
        # keyed by what the clustering depends on: the groups by their content, not the file's path
        clustering = content_key("clusters", model_hash, cam, target_layer, name,
                                 {k: v for k, v in parameters.items() if k != "groups_file"},
                                 sorted(m["id"] for m in members))
        described = describe_clusters(features, labels, figures, grid)
        cluster_rows, member_rows = [], []
        for entry in described:
            cluster_id = content_key("cluster", clustering, entry["cluster"])
            chosen = [m for m, label in zip(members, labels) if label == entry["cluster"]]
            entry.update({"id": cluster_id, "exemplars": [m["path"] for m in chosen[:exemplars]],
                          "members": [m["id"] for m in chosen]})
            stats = {k: entry[k] for k in ("border_share", "score", "accuracy", "mass_in_region",
                                           "similarity_to_main", "score_interval", "accuracy_interval",
                                           "mass_in_region_interval")}
            cluster_rows.append({"id": cluster_id, "clustering": clustering, "model": model, "model_hash": model_hash,
                                 "cam": cam, "target_layer": target_layer, "class": name, "cluster": entry["cluster"],
                                 "size": entry["size"], "shortcut_candidate": int(entry["shortcut_candidate"]),
                                 "reasons": json.dumps(entry["reasons"]), "figures": json.dumps(stats),
                                 "grid": grid, "mean_map": pack_array(entry["mean_map"].reshape(grid, grid)),
                                 "parameters": json.dumps(parameters), "run_id": run_id, "created_at": now()})
            member_rows += [{"id": content_key("member", cluster_id, m["id"]), "cluster_id": cluster_id,
                             "saliency_id": m["id"]} for m in chosen]
        store.upsert_rows("map_clusters", cluster_rows)
        store.upsert_rows("cluster_members", member_rows)
        found.append({"model": model, "cam": cam, "target_layer": target_layer, "class": name, "maps": len(members),
                      "class_maps": total, "score_setting": described_setting.get(chosen_setting),
                      "parameters": parameters, "clustering": clustering,
                      "eigenvalues": [float(v) for v in eigenvalues],
                      "clusters": [{k: v for k, v in entry.items() if k != "mean_map"} for entry in described]})
    return found
