"""What goes out of a store for other tools: one row per sample with every stage's outputs and the parameters of the
runs that made it, as CSV, JSON or JSON lines; and every stored map as a .npy file with an index."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO

import numpy as np

from .queries import run_parameters, samples
from .store import Store, unpack_array
from .vision import weights_note

FORMATS = ("csv", "json", "jsonl")
# The columns of an exported sample, in order. `confidence` is the model's probability of the map's target; `finding`
# says whether a multilabel model reported that target (1) or missed a labelled one (0), empty for single-label.
# Nested values (top-5, ratings, run configurations) are JSON text in CSV and plain values in JSON.
COLUMNS = (
    "judgment_id", "quadrant", "threshold", "status", "failure_kind", "score", "evaluation", "justification", "error",
    "path", "image_sha256", "label", "width", "height",
    "prediction_id", "model", "model_hash", "model_weights", "backend", "predicted_index", "predicted_label",
    "confidence", "correct", "label_indices", "top5",
    "saliency_id", "cam", "target_layer", "target_index", "target_label", "finding",
    "view_id", "alpha", "beta", "image_mode", "image_kind", "judge_backend", "judge_model", "judge_model_hash",
    "prompt_hash", "decoding", "render_version", "judge_image_size", "input_tokens", "output_tokens", "judged_at",
    "iou", "dice", "pixel_accuracy", "f1",
    "deletion_auc", "insertion_auc", "aopc", "average_drop", "increase_in_confidence", "faithfulness_steps",
    "faithfulness_baseline",
    "human_mean", "ratings", "predict_run_id", "predict_run", "judge_run_id", "judge_run",
)
_JSON_TEXT = ("label_indices", "top5", "decoding")  # stored as JSON text: decoded for JSON output
# A spreadsheet runs a cell that starts with one of these as a formula; text from a model or a file name must not.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value):
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def export_rows(store: Store, threshold: int, thresholds: dict[str, int] | None = None, **filters) -> list[dict]:
    runs = run_parameters(store)
    rows = []
    for sample in samples(store, threshold, thresholds, **filters):
        row = {name: sample.get(name) for name in COLUMNS}
        for name in _JSON_TEXT:
            row[name] = json.loads(row[name]) if row[name] else None
        row["model_weights"] = weights_note(sample["model_hash"])  # "random weights", else empty
        row["predict_run"] = runs.get(sample["predict_run_id"])
        row["judge_run"] = runs.get(sample["judge_run_id"])
        rows.append(row)
    return rows


def write_export(rows: list[dict], fmt: str, handle: IO[str]) -> None:
    if fmt == "json":
        json.dump(rows, handle, indent=1, ensure_ascii=False)
        handle.write("\n")
    elif fmt == "jsonl":
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    else:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")


MAP_INDEX_COLUMNS = ("image_path", "image_sha256", "model", "model_hash", "backend", "method", "target_layer",
                     "target_class", "target_label", "file", "failure")


def export_maps(store: Store, out: Path) -> int:
    """Every stored map as float32 .npy (named by the map's key) plus index.csv, for other tools to check or reuse."""
    out.mkdir(parents=True, exist_ok=True)
    rows = store.query(
        "select s.id, s.map, s.height, s.width, s.method, s.target_layer, s.target_index, s.failure, p.model, "
        "p.model_hash, p.backend, p.top5, i.path, i.sha256 from saliency_maps s "
        "join predictions p on p.id = s.prediction_id join images i on i.sha256 = s.image_sha256 "
        "order by i.path, p.model, s.method")
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
                             labels.get(row["target_index"], ""), name, row["failure"] or ""])
            count += 1
    return count
