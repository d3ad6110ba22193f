"""Read-only views of a store for people: the summary and the 2x2 matrices, as dicts ready for text or JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .analysis import attention_matrix
from .store import Store, unpack_array

# Everything that makes two judgments incomparable; the names are for people, the hashes keep same-named
# models with other weights apart.
GROUP_COLUMNS = ("model", "model_hash", "cam", "judge_model", "judge_model_hash", "image_mode", "alpha", "beta",
                 "judge_image_size", "prompt_hash", "decoding")


def matrices(store: Store, threshold: int, **filters) -> list[dict]:
    """One matrix per (vision model, CAM, judge, image mode, alpha, beta, prompt): they are never mixed."""
    where = ["j.status = 'ok'"]
    params: list = []
    column_of = {"model": "p.model", "cam": "s.method", "judge_model": "j.judge_model", "image_mode": "j.image_mode",
                 "alpha": "j.alpha", "beta": "j.beta"}
    for name, value in filters.items():
        if value is not None:
            where.append(f"{column_of[name]} = ?")
            params.append(value)
    rows = list(store.query(
        "select p.model, p.model_hash, s.method as cam, j.judge_model, j.judge_model_hash, j.image_mode, j.alpha, "
        "j.beta, j.judge_image_size, j.prompt_hash, j.decoding, j.score, p.correct from judgments j "
        "join predictions p on p.id = j.prediction_id "
        "join saliency_maps s on s.id = j.saliency_id where " + " and ".join(where) +
        " order by p.model, s.method, j.judge_model, j.image_mode", params))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in GROUP_COLUMNS), []).append(row)
    result = []
    for key, members in groups.items():
        correct = np.array([np.nan if r["correct"] is None else r["correct"] for r in members], dtype=float)
        scores = np.array([r["score"] for r in members], dtype=float)
        result.append({**dict(zip(GROUP_COLUMNS, key)), **attention_matrix(correct, scores, threshold)})
    return result


def summary(store: Store) -> dict:
    one = lambda sql, params=(): next(iter(store.query(sql, params)))  # noqa: E731
    models = list(store.query(
        "select model, model_hash, count(*) as predictions, count(correct) as labelled, "
        "avg(correct) as top1_accuracy from predictions group by model, model_hash order by model"))
    labelled = one("select count(correct) as n, avg(correct) as accuracy from predictions")
    judgments = list(store.query(
        "select judge_model, image_mode, status, failure_kind, count(*) as n, avg(score) as average_score "
        "from judgments group by judge_model, image_mode, status, failure_kind order by judge_model"))
    return {
        "images": one("select count(*) as n from images")["n"],
        "read_errors": one("select count(*) as n from read_errors")["n"],
        "read_error_files": [{"path": r["path"], "reason": r["reason"]} for r in store.read_errors()],
        "predictions": one("select count(*) as n from predictions")["n"],
        "labelled_predictions": labelled["n"],
        "top1_accuracy": labelled["accuracy"],
        "models": models,
        "cams": one("select count(*) as n from saliency_maps")["n"],
        "judgments": one("select count(*) as n from judgments")["n"],
        "judgments_succeeded": one("select count(*) as n from judgments where status = 'ok'")["n"],
        "judgments_failed": one("select count(*) as n from judgments where status = 'failed'")["n"],
        "judgments_by_judge": judgments,
    }


MAP_INDEX_COLUMNS = ("image_path", "image_sha256", "model", "model_hash", "backend", "method", "target_layer",
                     "target_class", "target_label", "file")


def export_maps(store: Store, out: Path) -> int:
    """Every stored map as float32 .npy (named by the map's key) plus index.csv, for other tools to check or reuse."""
    out.mkdir(parents=True, exist_ok=True)
    rows = store.query(
        "select s.id, s.map, s.height, s.width, s.method, s.target_layer, s.target_index, p.model, p.model_hash, "
        "p.backend, p.top5, i.path, i.sha256 from saliency_maps s join predictions p on p.id = s.prediction_id "
        "join images i on i.sha256 = s.image_sha256 order by i.path, p.model, s.method")
    count = 0
    with open(out / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MAP_INDEX_COLUMNS)
        for row in rows:
            name = f"{row['id']}.npy"
            np.save(out / name, unpack_array(row["map"], (row["height"], row["width"])).astype(np.float32))
            labels = {entry["index"]: entry["label"] for entry in json.loads(row["top5"])}
            writer.writerow([row["path"], row["sha256"], row["model"], row["model_hash"], row["backend"] or "torch",
                             row["method"], row["target_layer"], row["target_index"],
                             labels.get(row["target_index"], ""), name])
            count += 1
    return count


def region_means(store: Store, score_ids: list[str]) -> dict:
    """Mean IoU, Dice, pixel accuracy and F1 over the given region scores."""
    from .analysis.regions import REGION_METRICS

    return _means(store, "region_scores", score_ids, REGION_METRICS)


def faithfulness_means(store: Store, ids: list[str]) -> dict:
    """Mean deletion/insertion AUC and AOPC; Average Drop and Increase in Confidence as the papers report them
    (means over images, in %)."""
    from .analysis.faithfulness import FAITHFULNESS_METRICS

    means = _means(store, "faithfulness", ids, FAITHFULNESS_METRICS)
    for metric in ("average_drop", "increase_in_confidence"):
        if means[metric] is not None:
            means[metric] *= 100
    return means


def _means(store: Store, table: str, ids: list[str], metrics) -> dict:
    rows = list(store.query(f"select * from [{table}] where id in (select value from json_each(?))",
                            [json.dumps(list(ids))]))
    return {"maps": len(rows), **{m: (sum(r[m] for r in rows) / len(rows) if rows else None) for m in metrics}}
