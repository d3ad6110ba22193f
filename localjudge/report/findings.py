"""The report's first section, Findings: what a clinician reads in five minutes, from what the store already holds
(nothing is computed again but the intervals): the classes to inspect (eval classes), shortcut-candidate clusters
with exemplars (eval clusters), the mass on artifact regions (eval regions --artifact-regions), the background gap
(eval background) and the planted-shortcut canary (eval canary). Each finding carries the command whose --json
output gives the same numbers, and a check never run is named as such (with the command that runs it), so an
absent finding is not read as a clean one."""

from __future__ import annotations

import json

import numpy as np

from ..config import DEFAULTS
from ..queries import SCOPE_FILTERS, class_statistics, describe_setting, label_names_of_runs, run_parameters
from ..store import Store, unpack_array

INSPECT_SHOWN = 5  # classes to inspect, per judge setting
CLUSTERS_SHOWN = 6  # shortcut-candidate clusters
EXEMPLARS = 3  # maps shown per cluster


def _command(database: str, *words: str) -> str:
    return " ".join(["localjudge", *words, "--db", database, "--json"])


def _vision_filter(model: str | None, cam: str | None, model_column: str = "p.model",
                   cam_column: str | None = None) -> tuple[str, list]:
    clauses, params = [], []
    if model:
        clauses.append(f"{model_column} = ?")
        params.append(model)
    if cam and cam_column:
        clauses.append(f"{cam_column} = ?")
        params.append(cam)
    return (" and " + " and ".join(clauses)) if clauses else "", params


def _model_words(runs: dict, run_ids, name: str) -> list[str]:
    """How the command that stored these results named its vision model: a card file with its weights and labels
    (the user's own model) as given, a registered model by its name."""
    for run_id in sorted(r for r in run_ids if r):
        config = (runs.get(run_id) or {}).get("config") or {}
        if config.get("model"):
            words = ["--model", str(config["model"])]
            for option in ("weights", "labels", "card"):
                if config.get(option):
                    words += [f"--{option}", str(config[option])]
            return words
    return ["--model", name]


def _grouped(rows, key, runs: tuple[str, ...] = ("run_id",), newest=None, order=None) -> dict[tuple, dict]:
    """Rows grouped by `key(row)` (in their order, or sorted by `order(row)`), each group with its ids and the set
    of each `runs` column; with `newest(row)`, only the last row (rows come oldest first) of each such key is kept:
    results an older run or version left in the store beside a newer one are not counted twice."""
    if newest is not None:
        rows = list({newest(row): row for row in rows}.values())
    if order is not None:
        rows = sorted(rows, key=order)
    groups: dict[tuple, dict] = {}
    for row in rows:
        group = groups.setdefault(key(row), {"ids": [], **{column: set() for column in runs}})
        group["ids"].append(row["id"])
        for column in runs:
            group[column].add(row[column])
    return groups


def _names_by_run(store: Store, run_ids: set) -> dict:
    return {run: list(names) if names else [] for run, names in label_names_of_runs(store, run_ids).items()}


def classes_to_inspect(store: Store, threshold: int, thresholds: dict | None, filters: dict) -> dict:
    found = class_statistics(store, threshold, "predicted", None, None, None, thresholds, **filters)
    settings = []
    for setting in found:
        table = {row["group"]: row for row in setting["groups"]}
        settings.append({
            "setting": describe_setting(setting), "rule": setting["rule"], "threshold": setting["threshold"],
            "baseline": setting["baseline"]["disagreement"], "classes": len(setting["groups"]),
            "inspect": [{"class": row["group"], "n": table[row["group"]]["n"],
                         "accuracy": table[row["group"]]["accuracy"]["mean"], "disagreement": row["disagreement"],
                         "above_baseline": row["above_baseline"]} for row in setting["inspect"][:INSPECT_SHOWN]]})
    words = ["--threshold", "calibrated" if thresholds else str(threshold)]
    for name, value in filters.items():  # the report's own filters, as eval classes takes them
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return {"ran": bool(found), "settings": settings,
            "command": _command(store.path.name, "eval", "classes", *words)}


def clusters_command(database: str, parameters: dict) -> str:
    """The eval clusters command that makes a clustering with these stored parameters again (an option a store
    written before its parameters were kept lacks is left to its default)."""
    values = {"--grid": parameters.get("grid"), "--neighbours": parameters.get("neighbours_asked"),
              "--max-clusters": parameters.get("max_clusters"), "--seed": parameters.get("seed"),
              "--beta": parameters.get("beta"), "--min-maps": parameters.get("min_maps"),
              "--max-maps": parameters.get("max_maps"), "--groups": parameters.get("groups_file")}
    if parameters.get("by") == "group" and not parameters.get("groups_file"):
        values["--groups"] = "GROUPS.json"  # clustered per super-class before the file's path was kept
    words = [w for option, value in values.items() if value is not None for w in (option, str(value))]
    return _command(database, "eval", "clusters", *words)


def candidate_clusters(store: Store, model: str | None, cam: str | None) -> dict:
    """The shortcut candidates of the newest clustering of each class (a class clustered again replaces its older
    clusters), with up to EXEMPLARS member maps each (as exemplars: saliency ids), and the command of each."""
    where, params = _vision_filter(model, cam, "c.model", "c.cam")
    rows = list(store.query("select c.* from map_clusters c where 1 = 1" + where + " order by c.created_at desc, "
                            "c.cluster", params))
    newest: dict[tuple, str] = {}
    for row in rows:
        by = json.loads(row.get("parameters") or "{}").get("by", "class")
        newest.setdefault((row["model_hash"], row["cam"], row["target_layer"], row["class"], by), row["clustering"])
    chosen = set(newest.values())
    clusterings = [r for r in rows if r["clustering"] in chosen]
    candidates = []
    for row in clusterings:
        if not row["shortcut_candidate"]:
            continue
        members = [m["saliency_id"] for m in store.query(
            "select saliency_id from cluster_members where cluster_id = ? order by saliency_id", [row["id"]])]
        class_maps = sum(r["size"] for r in clusterings if r["clustering"] == row["clustering"])
        candidates.append({"model": row["model"], "cam": row["cam"], "target_layer": row["target_layer"],
                           "class": row["class"], "cluster": row["cluster"], "size": row["size"],
                           "class_maps": class_maps, "reasons": json.loads(row["reasons"]),
                           "figures": json.loads(row["figures"]), "exemplars": members[:EXEMPLARS],
                           "command": clusters_command(store.path.name, json.loads(row.get("parameters") or "{}"))})
    candidates.sort(key=lambda c: (-c["size"], c["class"], c["cluster"]))
    commands = sorted({clusters_command(store.path.name, json.loads(r.get("parameters") or "{}"))
                       for r in clusterings})
    return {"ran": bool(clusterings), "clustered_classes": len(chosen), "candidates": candidates[:CLUSTERS_SHOWN],
            "more": max(0, len(candidates) - CLUSTERS_SHOWN),
            "command": commands[0] if len(commands) == 1 else _command(store.path.name, "eval", "clusters"),
            "commands": commands}


def artifact_mass(store: Store, model: str | None, cam: str | None) -> dict:
    """Per vision model, CAM method and region: the maps' mass share there beside the region's area (eval regions
    --artifact-regions prints the same table for one model and method)."""
    from ..queries import artifact_table

    where, params = _vision_filter(model, cam, "p.model", "s.method")
    groups = _grouped(store.query("select a.id, a.run_id, p.model, p.model_hash, s.method, s.target_layer from "
                                  "artifact_scores a join saliency_maps s on s.id = a.saliency_id join predictions p "
                                  "on p.id = s.prediction_id where 1 = 1" + where + " order by p.model, s.method",
                                  params),
                      lambda r: (r["model"], r["model_hash"], r["method"], r["target_layer"]))
    runs = run_parameters(store)
    regions = []
    for (name, _, method, target), group in groups.items():
        ids = group["ids"]
        for found in artifact_table(store, ids, top=3):  # a file's region is specified as FILE#NAME
            regions.append({"model": name, "cam": method, "target_layer": target, "region": found["region"],
                            "spec": found["spec"],
                            "maps": found["maps"], "mass_share": found["mass_share"],
                            "area_fraction": found["area_fraction"], "excess": found["excess"],
                            "top_classes": found["by_class"][:3],
                            "command": _command(store.path.name, "eval", "regions",
                                                *_model_words(runs, group["run_id"], name), "--cam", method,
                                                "--artifact-regions", found["spec"].rsplit("#", 1)[0])})
    return {"ran": bool(regions), "regions": regions,
            "command": _command(store.path.name, "eval", "regions", "--artifact-regions", "border:16")}


def background_gap(store: Store, model: str | None) -> dict:
    """Per vision model file and seed: each variant's accuracy and the background gap."""
    from ..queries import background_table

    where, params = _vision_filter(model, None)
    # an image's newest result of each variant (its partner may have changed since an older run)
    groups = _grouped(store.query("select b.id, b.seed, b.run_id, b.prediction_id, b.variant, p.model, p.model_hash "
                                  "from background_tests b join predictions p on p.id = b.prediction_id where 1 = 1"
                                  + where + " order by b.created_at, b.id", params),
                      lambda r: (r["model"], r["model_hash"], r["seed"]),
                      newest=lambda r: (r["prediction_id"], r["variant"], r["seed"]),
                      order=lambda r: (r["model"], r["seed"], r["id"]))
    runs = run_parameters(store)
    tables = []
    for (name, _, seed), group in groups.items():
        overall = background_table(store, group["ids"], [])["overall"]
        tables.append({"model": name, "seed": seed, **overall,
                       "command": _command(store.path.name, "eval", "background",
                                           *_model_words(runs, group["run_id"], name), "--seed", str(seed))})
    return {"ran": bool(tables), "tables": tables, "command": _command(store.path.name, "eval", "background")}


def canary_results(store: Store, model: str | None, cam: str | None, threshold: int) -> dict:
    """Per vision model file, artifact, size, seed, CAM and target: the canary's summary, and its quadrant changes
    where a judge scored them (the setting with the most scores)."""
    from ..queries import canary_report

    where, params = _vision_filter(model, cam, "p.model", "c.cam")
    # an image's newest result (results of an older version of the canary stay in the store beside it)
    groups = _grouped(store.query("select c.id, c.prediction_id, c.artifact, c.size, c.seed, c.cam, c.target_layer, "
                                  "c.run_id as canary_run, p.model, p.model_hash, p.run_id from canary_tests c join "
                                  "predictions p on p.id = c.prediction_id where 1 = 1" + where
                                  + " order by c.created_at, c.id", params),
                      lambda r: (r["model"], r["model_hash"], r["artifact"], r["size"], r["seed"], r["cam"],
                                 r["target_layer"]),
                      runs=("run_id", "canary_run"),
                      newest=lambda r: (r["prediction_id"], r["artifact"], r["size"], r["seed"], r["cam"],
                                        r["target_layer"]),
                      order=lambda r: (r["model"], r["artifact"], r["size"], r["seed"], r["id"]))
    runs = run_parameters(store)
    results = []
    for (name, _, artifact, size, seed, method, target), group in groups.items():
        names = next((n for n in _names_by_run(store, group["run_id"]).values() if n), None)
        if names is None:  # the label list can no longer be read: classes by index
            first = next(iter(store.query("select original_probs from canary_tests where id = ?", [group["ids"][0]])))
            names = [str(i) for i in range(len(unpack_array(first["original_probs"], (-1,), np.float32)))]
        settings = [r["setting"] for r in store.query(
            "select setting, count(*) as n from canary_quadrants where canary_id in (select value from json_each(?)) "
            "group by setting order by n desc, setting", [json.dumps(group["ids"])])]
        found = canary_report(store, group["ids"], names, quadrant_setting=settings[0] if settings else None,
                              threshold=threshold)
        words = _model_words(runs, group["canary_run"], name)
        if settings:  # the judge the quadrants were scored with, as the canary's run named it
            words.append("--judge-quadrants")
            for run_id in sorted(r for r in group["canary_run"] if r):
                config = (runs.get(run_id) or {}).get("config") or {}
                words += [w for option in ("judge", "vlm") if config.get(option) not in (None, "auto")
                          for w in (f"--{option}", str(config[option]))]
                break
        results.append({"model": name, "artifact": artifact, "size": size, "seed": seed, "cam": method,
                        "target_layer": target, "summary": found["summary"], "quadrants": found["quadrants"],
                        "command": _command(store.path.name, "eval", "canary", *words, "--cam", method,
                                            "--artifact", artifact, "--size", f"{size:g}", "--images",
                                            str(len(group["ids"])), "--seed", str(seed))})
    return {"ran": bool(results), "results": results,
            "command": _command(store.path.name, "eval", "canary", "--artifact", "tag")}


def findings(store: Store, threshold: int, thresholds: dict | None, filters: dict) -> dict:
    model, cam = filters.get("model"), filters.get("cam")
    found = {"classes": classes_to_inspect(store, threshold, thresholds, filters),
             "clusters": candidate_clusters(store, model, cam),
             "artifacts": artifact_mass(store, model, cam),
             "background": background_gap(store, model),
             "canary": canary_results(store, model, cam, threshold)}
    # The shortcut checks are `eval` results over the store's maps, not over one run's or source's images: a report
    # scoped with --run or --source says so on each of them rather than let them pass for the scope's.
    if any(filters.get(name) is not None for name in SCOPE_FILTERS):
        for name in ("clusters", "artifacts", "background", "canary"):
            found[name]["whole_store"] = True
    return found


def exemplar_rows(store: Store, found: dict) -> list[dict]:
    """A row per exemplar map of the candidate clusters, as the thumbnail renderer reads it (its picture, the
    model's view of it, the map, and the default mask's alpha and beta)."""
    wanted = [sid for c in found["clusters"]["candidates"] for sid in c["exemplars"]]
    if not wanted:
        return []
    return [dict(r, alpha=DEFAULTS.alpha, beta=DEFAULTS.beta) for r in store.query(
        "select s.id as saliency_id, s.image_sha256, p.preprocessing, i.path from saliency_maps s join predictions p "
        "on p.id = s.prediction_id join images i on i.sha256 = s.image_sha256 where s.id in "
        "(select value from json_each(?))", [json.dumps(wanted)])]


__all__ = ["findings", "exemplar_rows"]
