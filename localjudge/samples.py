"""A sample is one judgment with everything the stages know of it: the image, the prediction, the map, the
judge's answer, region and faithfulness scores, people's ratings and the parameters of the runs that made it. The
report, the export, the rating page and the calibration all read samples from here."""

from __future__ import annotations

import json

from .reports import filter_clauses, setting_key
from .store import Store, content_key

_SAMPLE_SQL = """
select j.id as judgment_id, j.status, j.failure_kind, j.score, j.evaluation, j.justification, j.error,
       j.alpha, j.beta, j.image_mode, j.judge_backend, j.judge_model, j.judge_model_hash, j.prompt_hash, j.decoding,
       j.judge_image_size, j.input_tokens, j.output_tokens, j.run_id as judge_run_id, j.created_at as judged_at,
       j.saliency_id, s.method as cam, s.target_layer, s.target_index,
       p.id as prediction_id, p.model, p.model_hash, p.backend, p.preprocessing, p.predicted_index,
       p.predicted_label, p.confidence, p.correct, p.label_indices, p.top5, p.run_id as predict_run_id,
       i.sha256 as image_sha256, i.path, i.label, i.width, i.height,
       r.iou, r.dice, r.pixel_accuracy, r.f1,
       f.deletion_auc, f.insertion_auc, f.aopc, f.average_drop, f.increase_in_confidence,
       f.steps as faithfulness_steps, f.baseline as faithfulness_baseline
from judgments j
join predictions p on p.id = j.prediction_id
join saliency_maps s on s.id = j.saliency_id
join images i on i.sha256 = j.image_sha256
-- the newest region score of the map at the judgment's beta, and the map's newest faithfulness row
left join region_scores r on r.id = (select id from region_scores where saliency_id = j.saliency_id
                                     and beta = j.beta order by created_at desc, id limit 1)
left join faithfulness f on f.id = (select id from faithfulness where saliency_id = j.saliency_id
                                    order by created_at desc, id limit 1)
{where}
order by i.path, p.model, s.method, j.judge_model, j.alpha, j.beta, j.id
"""


def view_id(saliency_id: str, alpha: float, beta: float, image_mode: str) -> str:
    """What a judge was shown (and what a person rates): the map, rendered with alpha, beta in one image mode."""
    return content_key("view", saliency_id, float(alpha), float(beta), image_mode)


def quadrant(status: str, correct, score, threshold: int) -> str:
    """CH/CL/WH/WL for a successful judgment of a labelled image; 'unlabelled' or 'failed' otherwise."""
    if status != "ok":
        return "failed"
    if correct is None:
        return "unlabelled"
    return ("C" if correct else "W") + ("H" if score >= threshold else "L")


def _where(filters: dict) -> tuple[str, list]:
    clauses, params = filter_clauses(filters)
    return ("where " + " and ".join(clauses)) if clauses else "", params


def samples(store: Store, threshold: int, thresholds: dict[str, int] | None = None, **filters) -> list[dict]:
    """Every judgment as a sample, in a stable order. `thresholds` maps a setting key (reports.setting_key) to a
    calibrated threshold that replaces `threshold` for that setting."""
    where, params = _where(filters)
    rows = [dict(r) for r in store.query(_SAMPLE_SQL.format(where=where), params)]
    ratings: dict[str, list[dict]] = {}
    for r in store.query("select view_id, rater, score, updated_at from ratings order by rater"):
        ratings.setdefault(r["view_id"], []).append({"rater": r["rater"], "score": r["score"]})
    for row in rows:
        row["view_id"] = view_id(row["saliency_id"], row["alpha"], row["beta"], row["image_mode"])
        row["threshold"] = (thresholds or {}).get(setting_key(row), threshold)
        row["quadrant"] = quadrant(row["status"], row["correct"], row["score"], row["threshold"])
        row["ratings"] = ratings.get(row["view_id"], [])
        row["human_mean"] = (sum(r["score"] for r in row["ratings"]) / len(row["ratings"])
                             if row["ratings"] else None)
    return rows


def run_parameters(store: Store) -> dict[str, dict]:
    """Each run's whole configuration (and command, status and provider), by run id."""
    result = {}
    for run in store.query("select id, command, config, started_at, finished_at, status, execution_provider "
                           "from runs"):
        result[run["id"]] = {**run, "config": json.loads(run["config"]) if run["config"] else None}
    return result


def views(store: Store, **filters) -> list[dict]:
    """The distinct views judges were shown, each with what a person needs to rate it (but its map, which is read
    when it is shown), in a fixed pseudo-random order (by view id): any prefix a person rates is a fair sample of
    the whole."""
    where, params = _where(filters)
    rows = store.query(
        "select distinct j.saliency_id, j.alpha, j.beta, j.image_mode, j.prompt_hash, j.judge_image_size, "
        "j.image_sha256, p.predicted_label, p.preprocessing, i.path "
        "from judgments j join predictions p on p.id = j.prediction_id "
        "join saliency_maps s on s.id = j.saliency_id join images i on i.sha256 = j.image_sha256 " + where, params)
    found: dict[str, dict] = {}
    for row in rows:
        key = view_id(row["saliency_id"], row["alpha"], row["beta"], row["image_mode"])
        # The same view judged under several prompts (or image sizes): people see it once, with the first one's.
        if key not in found or (row["prompt_hash"], row["judge_image_size"]) < (
                found[key]["prompt_hash"], found[key]["judge_image_size"]):
            found[key] = {**row, "view_id": key}
    return [found[k] for k in sorted(found)]
