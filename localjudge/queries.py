"""Every read of the store for people, as dicts ready for text or JSON: the 2x2 matrices and the summary, region
and faithfulness means, per-map signals for correlations, label-issue tables, and samples: one judgment with
everything the stages know of it (the image, the prediction, the map, the judge's answer, region and faithfulness
scores, people's ratings and the parameters of the runs that made it), which the report, the export, the rating
page and the calibration read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .analysis import attention_matrix
from .config import DEFAULTS
from .errors import OptionError
from .saliency.masking import FIRST_RENDER_VERSION
from .store import Store, content_key, unpack_array

# Everything that makes two judgments incomparable; the names are for people, the hashes keep same-named
# models with other weights apart. The target tensor is part of it: maps of one method at two layers (a card's
# target moved to the post-activation tensor) are other maps.
# Whether a map's target is right: the target is among the image's labels (for a single-label model the target is
# the predicted class, so this is the prediction's own correctness); for a multilabel model, whether its call on the
# target (a finding, s.finding 1, or a labelled finding it missed, 0) agrees with the labels: a missed one is wrong.
_LABELLED = "exists(select 1 from json_each(p.label_indices) where value = s.target_index)"
TARGET_CORRECT = (f"(case when p.label_indices is null then null when s.finding is null then {_LABELLED} "
                  f"else s.finding = {_LABELLED} end)")
# Whether a map's target is one under the newest run's settings (its thresholds and --targets; marked by the run): a
# finding under an older, lower threshold, or a missed one after a run without --targets labelled, is no target, and
# no part of a matrix, report or export.
TARGET_CURRENT = "(s.current_target is null or s.current_target = 1)"
# alpha, beta and prompt_hash are NULL where they do not shape the judge's input (Audit.judge_input: a heatmap
# overlay reads no alpha or beta, the recognizer no prompt); render_version is the rendering's version.
GROUP_COLUMNS = ("model", "model_hash", "cam", "target_layer", "judge_model", "judge_model_hash", "image_mode",
                 "alpha", "beta", "judge_image_size", "prompt_hash", "decoding", "render_version")
# The columns of GROUP_COLUMNS from judgments j, predictions p and saliency_maps s.
SETTING_SELECT = ("p.model, p.model_hash, s.method as cam, s.target_layer, j.judge_model, j.judge_model_hash, "
                  "j.image_mode, j.alpha, j.beta, j.judge_image_size, j.prompt_hash, j.decoding, j.render_version")


def describe_setting(setting: dict) -> str:
    version = setting.get("render_version")
    return (f"{setting['model']} {setting['cam']}@{setting['target_layer']} {setting['judge_model']} "
            f"{setting['image_mode']} {shaping_text(setting)} size={setting['judge_image_size']}"
            + (f" rendering v{version}" if version not in (None, FIRST_RENDER_VERSION) else ""))


def shaping_text(setting: dict) -> str:
    """alpha, beta and the prompt of a setting, where they shape its judge's input."""
    parts = [] if setting["alpha"] is None else [f"a={setting['alpha']:g} b={setting['beta']:g}"]
    parts.append("no prompt" if setting["prompt_hash"] is None else f"prompt={setting['prompt_hash'][:8]}")
    return " ".join(parts)


def setting_key(row: dict) -> str:
    """One judge setting (the GROUP_COLUMNS of a row) as a key. The first rendering version adds nothing, so the
    keys of settings made before it (their calibrations) are unchanged."""
    values = [row[c] for c in GROUP_COLUMNS if c != "render_version"]
    version = row.get("render_version")
    return content_key("setting", *values, *([] if version in (None, FIRST_RENDER_VERSION) else [version]))


def calibrated_thresholds(store: Store) -> dict[str, int]:
    """The threshold of each setting's newest calibration (`localjudge calibrate`), where it found one: a newer
    calibration that found none (people's ratings did not separate) leaves its setting uncalibrated."""
    found = {}
    for row in store.query("select setting_key, threshold from calibrations order by rowid"):
        found[row["setting_key"]] = row["threshold"]
    return {key: threshold for key, threshold in found.items() if threshold is not None}


# What judgments can be filtered by, and the column each filter reads (judgments j, predictions p, maps s).
FILTER_COLUMNS = {"model": "p.model", "cam": "s.method", "target_layer": "s.target_layer",
                  "judge_model": "j.judge_model", "image_mode": "j.image_mode",
                  "alpha": "j.alpha", "beta": "j.beta", "prompt_hash": "j.prompt_hash",
                  "judge_model_hash": "j.judge_model_hash", "judge_image_size": "j.judge_image_size",
                  "decoding": "j.decoding", "model_hash": "p.model_hash", "render_version": "j.render_version"}


class _Null:
    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()  # a filter's value that asks for NULL (a part that does not shape the judge's input)


# Filters by which images a run read (run_images): --run ID (one run), --source PATH (every run over that folder or
# manifest, as runs.inputs names it: resolved, or redacted with --redact-paths; a list of those forms).
SCOPE_FILTERS = {
    "run": "j.image_sha256 in (select image_sha256 from run_images where run_id = ?)",
    "images": "j.image_sha256 in (select value from json_each(?))",  # these images (a list of sha256)
    "source": "j.image_sha256 in (select ri.image_sha256 from run_images ri join runs r on r.id = ri.run_id "
              "where r.inputs in (select value from json_each(?)))",
}


def filter_clauses(filters: dict) -> tuple[list[str], list]:
    """SQL conditions (and their parameters) for the filters given (None: not given)."""
    clauses, params = [], []
    for name, value in filters.items():
        if value is None:
            continue
        if name in SCOPE_FILTERS:
            clauses.append(SCOPE_FILTERS[name])
            params.append(json.dumps(list(value)) if name in ("source", "images") else value)
            continue
        if name not in FILTER_COLUMNS:
            raise ValueError(f"unknown filter {name!r}")
        if value is NULL:
            clauses.append(f"{FILTER_COLUMNS[name]} is null")
            continue
        clauses.append(f"{FILTER_COLUMNS[name]} = ?")
        params.append(value)
    return clauses, params


def resolve_run(store: Store, given: str) -> str:
    """A run's id from its id or the start of it (as `runs` lists them); a clear error where none or several match."""
    found = [r["id"] for r in store.query("select id from runs where substr(id, 1, length(?)) = ? order by id",
                                          [given, given])] if given else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise OptionError(f"--run {given}: no run of {store.path} has this id (`localjudge db runs` lists them)")
    raise OptionError(f"--run {given}: {len(found)} runs start so ({', '.join(f[:12] for f in found[:4])}…); "
                     "give more of the id")


def run_list(store: Store) -> list[dict]:
    """Every run, newest first, with the number of images it read."""
    return list(store.query(
        "select r.id, r.command, r.status, r.started_at, r.finished_at, r.inputs, "
        "(select count(*) from run_images ri where ri.run_id = r.id) as images from runs r "
        "order by r.started_at desc, r.id"))


def source_forms(path: str) -> list[str]:
    """How runs.inputs names a source: its resolved path, or that path redacted (a run with --redact-paths)."""
    from .data import redacted_path

    resolved = str(Path(path).resolve())
    return [resolved, redacted_path(resolved)]


def matrices(store: Store, threshold: int, thresholds: dict[str, int] | None = None, **filters) -> list[dict]:
    """One matrix per (vision model, CAM, target, judge, image mode, alpha, beta, prompt): they are never mixed, each
    with bootstrap intervals of its percentages and average score. A setting with a threshold in `thresholds` (by
    setting_key) uses it instead of `threshold`."""
    from .analysis.matrix import matrix_intervals
    from .judge import judge_caveat
    from .vision import weights_note

    cards = judge_cards(store)
    result = []
    for setting, members in _judged_settings(store, filters):
        correct = np.array([np.nan if r["correct"] is None else r["correct"] for r in members], dtype=float)
        scores = np.array([r["score"] for r in members], dtype=float)
        calibrated = (thresholds or {}).get(setting_key(setting))
        used = threshold if calibrated is None else calibrated
        card = card_of(cards, setting["judge_model_hash"], setting["decoding"])
        result.append({**setting, "setting_key": setting_key(setting), **attention_matrix(correct, scores, used),
                       **matrix_intervals(correct, scores, used, [r["image_sha256"] for r in members]),
                       "by_finding": by_finding(members, used),
                       "threshold_source": "given" if calibrated is None else "calibrated",
                       "judge_verdict": card["verdict"] if card else "not checked",
                       "judge_caveat": judge_caveat(setting["decoding"]),
                       "model_weights": weights_note(setting["model_hash"])})
    return result


def by_finding(members: list[dict], threshold: int) -> list[dict]:
    """A multilabel model's matrix per finding (the maps' target classes): each with its counts and percentages,
    largest first; [] where every map explains its image's predicted class (a single-label model)."""
    from .analysis.matrix import attention_matrix, matrix_intervals

    if all(r["target_index"] == r["predicted_index"] for r in members):  # one target per image: its prediction
        return []
    groups: dict[str, list[dict]] = {}
    for row in members:
        groups.setdefault(row["target_label"], []).append(row)
    found = []
    for label, rows in groups.items():
        correct = np.array([np.nan if r["correct"] is None else r["correct"] for r in rows], dtype=float)
        scores = np.array([r["score"] for r in rows], dtype=float)
        found.append({"finding": label, **attention_matrix(correct, scores, threshold),
                      **matrix_intervals(correct, scores, threshold)})
    return sorted(found, key=lambda f: (-f["judgments"], f["finding"]))


def _judged_settings(store: Store, filters: dict) -> list[tuple[dict, list[dict]]]:
    """The successful judgments matching `filters`, by setting (GROUP_COLUMNS): image, score and correctness."""
    clauses, params = filter_clauses(filters)
    # judgments of maps found degenerate after they were judged (a store made before) are no finding either
    where = ["j.status = 'ok'", "s.failure is null", TARGET_CURRENT, *clauses]
    rows = list(store.query(
        "select " + SETTING_SELECT + ", j.image_sha256, j.saliency_id, s.target_index, s.finding, p.predicted_index, "
        "p.label_indices, p.run_id as predict_run_id, "
        "coalesce(s.target_label, p.predicted_label) as target_label, j.score, " + TARGET_CORRECT +
        " as correct from judgments j "
        "join predictions p on p.id = j.prediction_id "
        "join saliency_maps s on s.id = j.saliency_id where " + " and ".join(where) +
        " order by p.model, s.method, s.target_layer, j.judge_model, j.image_mode", params))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in GROUP_COLUMNS), []).append(row)
    return [(dict(zip(GROUP_COLUMNS, key)), members) for key, members in groups.items()]


def paired_differences(store: Store, against: str, threshold: int, thresholds: dict[str, int] | None = None,
                       **filters) -> dict:
    """Every setting against the one whose key starts with `against`, on the images both judged: the difference of
    each quadrant's percentage and of the average score (other minus reference), with paired bootstrap intervals
    (the images resampled once for both settings). Each setting is split high/low at its own threshold (its
    calibrated one where `thresholds` has it)."""
    from .analysis.bootstrap import LEVEL, RESAMPLES, SEED, paired_difference_interval
    from .analysis.matrix import QUADRANTS, quadrant_labels

    keys = {setting_key(setting): (setting, members) for setting, members in _judged_settings(store, filters)}
    found = [key for key in keys if key.startswith(against)]
    if len(found) != 1:
        raise ValueError(f"--against {against}: {'no' if not found else 'more than one'} setting has a key starting "
                         "with it; `localjudge compare --json` lists each setting's setting_key")
    reference_key = found[0]

    def by_image(members: list[dict]) -> dict[tuple, tuple]:
        # an image is the unit (two models' judgments of it pair whatever each predicted); a multilabel model's
        # targets pair by finding name (and resample by image); a single-label and a multilabel setting share none
        return {(r["image_sha256"], r["target_label"] if r["finding"] is not None else None):
                (np.nan if r["correct"] is None else r["correct"], r["score"]) for r in members}

    def threshold_of(key: str) -> int:
        return (thresholds or {}).get(key, threshold)

    reference = by_image(keys[reference_key][1])
    reference_threshold = threshold_of(reference_key)
    differences = []
    for key, (setting, members) in keys.items():
        if key == reference_key:
            continue
        other = by_image(members)
        shared = [unit for unit in reference if unit in other]
        images = [unit[0] for unit in shared]
        first = np.array([reference[sha] for sha in shared], dtype=float).reshape(-1, 2)
        second = np.array([other[sha] for sha in shared], dtype=float).reshape(-1, 2)

        # Each side's quadrant labels at its own threshold, then shares compared on the same resampled images.
        first_labels = quadrant_labels(first[:, 0], first[:, 1], reference_threshold)
        second_labels = quadrant_labels(second[:, 0], second[:, 1], threshold_of(key))

        def share_of(quadrant: str):
            def statistic(labels: np.ndarray) -> float:
                placed = np.isin(labels, QUADRANTS).sum()
                return 100.0 * float((labels == quadrant).sum()) / placed if placed else float("nan")
            return statistic

        entry = {"setting_key": key, **{c: setting[c] for c in GROUP_COLUMNS}, "images": len(set(images)),
                 "units": len(shared), "thresholds": [reference_threshold, threshold_of(key)],
                 "average_score": paired_difference_interval(first[:, 1], second[:, 1], lambda v: float(v.mean()),
                                                             clusters=images)}
        for quadrant in QUADRANTS:
            entry[quadrant] = paired_difference_interval(first_labels, second_labels, share_of(quadrant),
                                                         clusters=images)
        differences.append(entry)
    return {"against": reference_key, "setting": keys[reference_key][0], "threshold": threshold,
            "differences": differences, "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL}}


def summary(store: Store) -> dict:
    one = lambda sql, params=(): next(iter(store.query(sql, params)))  # noqa: E731
    from .vision import weights_note

    models = [{**m, "model_weights": weights_note(m["model_hash"])} for m in store.query(
        "select model, model_hash, count(*) as predictions, count(correct) as labelled, "
        "avg(correct) as top1_accuracy from predictions group by model, model_hash order by model")]
    # a multilabel model's calls on the labelled findings of its images: found, missed (whether or not a missed one
    # was explained), and findings reported that are not labelled (top-1 accuracy reads only the most probable class)
    calls: dict[tuple, dict] = {}
    found_of: dict[str, set] = {}
    for row in store.query("select s.prediction_id, s.target_index from saliency_maps s join predictions p on "
                           "p.id = s.prediction_id where p.task = 'multilabel' and s.finding = 1 and "
                           + TARGET_CURRENT):
        found_of.setdefault(row["prediction_id"], set()).add(row["target_index"])
    for p in store.query("select id, model, model_hash, label_indices from predictions where task = 'multilabel' "
                         "and label_indices is not null"):
        labelled, found = set(json.loads(p["label_indices"])), found_of.get(p["id"], set())
        # per image: its labelled findings, those found, those reported but not labelled
        calls.setdefault((p["model"], p["model_hash"]), []).append(
            (len(labelled), len(labelled & found), len(found - labelled)))
    for model in models:
        per_image = calls.get((model["model"], model["model_hash"]))
        if per_image:
            model["findings"] = findings_summary(np.array(per_image, dtype=float))
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
        "maps_failed": one("select count(*) as n from saliency_maps where failure is not null")["n"],
        "map_failures": map_failures(store),
        "judgments": one("select count(*) as n from judgments")["n"],
        "judgments_succeeded": one("select count(*) as n from judgments where status = 'ok'")["n"],
        "judgments_failed": one("select count(*) as n from judgments where status = 'failed'")["n"],
        "judgments_by_judge": judgments,
        "judge_cards": [{"judge_model": c["judge_model"], "verdict": c["verdict"], "reasons": c["reasons"],
                         "sample": c["sample"]} for c in judge_cards(store).values()],
    }


def findings_summary(per_image: np.ndarray) -> dict:
    """A multilabel model's recall and precision over its labelled findings, from per-image (labelled, found, not
    labelled) counts, each with its bootstrap interval (the images resampled, the counts pooled again)."""
    from .analysis.bootstrap import interval

    labelled, found, extra = per_image.sum(axis=0)

    def ratio(numerator: int, denominator) -> callable:
        def statistic(rows: np.ndarray) -> float:
            total = denominator(per_image[rows]).sum()
            return float(per_image[rows][:, numerator].sum() / total) if total else float("nan")
        return statistic

    def recall_of(rows):
        return rows[:, 0]

    def reported_of(rows):
        return rows[:, 1] + rows[:, 2]

    result = {"images": len(per_image), "labelled": int(labelled), "found": int(found),
              "missed": int(labelled - found), "not_labelled": int(extra)}
    for name, numerator, denominator, total in (("recall", 1, recall_of, labelled),
                                                ("precision", 1, reported_of, found + extra)):
        low, high = interval(ratio(numerator, denominator), len(per_image))
        result[name] = {"value": float(found / total) if total else None, "ci_low": low, "ci_high": high}
    return result


def map_failures(store: Store, model: str | None = None, cam: str | None = None) -> list[dict]:
    """The degenerate maps (stored as map failures, never judged): file, model, CAM, target and why."""
    clauses, params = filter_clauses({"model": model, "cam": cam})
    return [dict(r) for r in store.query(
        "select i.path, p.model, s.method as cam, s.target_layer, s.failure as reason from saliency_maps s "
        "join predictions p on p.id = s.prediction_id join images i on i.sha256 = s.image_sha256 "
        "where " + " and ".join(["s.failure is not null", *clauses]) + " order by i.path, p.model, s.method",
        params)]


def sanity_checks(store: Store, model: str | None = None, cam: str | None = None) -> list[dict]:
    """The newest sanity check of each model file, target and method (eval sanity)."""
    rows = store.query("select * from sanity_checks order by created_at, rowid")
    newest = {}
    for row in rows:
        if (model is None or row["model"] == model) and (cam is None or row["method"] == cam):
            newest[(row["model_hash"], row["target_layer"], row["method"])] = {
                k: row[k] for k in ("model", "target_layer", "method", "images", "seed", "random_logit_rank",
                                    "random_logit_ssim", "randomised_rank", "randomised_ssim")} | {
                "flagged": bool(row["flagged"])}
    return list(newest.values())


def localisation(store: Store, saliency_ids: list[str], beta: float) -> dict:
    """The localisation suite (analysis.localisation) of these stored maps against their images' regions, beside the
    trivial baselines on the same regions. Maps whose image has no region, and degenerate maps, are left out. Maps
    are read a few hundred at a time and let go once measured."""
    from .analysis.localisation import localisation_table
    from .ground_truth import region_in_view, region_of_map

    def pairs():
        for start in range(0, len(saliency_ids), 256):
            maps = [m for m in store.saliency_maps(saliency_ids[start:start + 256]) if not m.get("failure")]
            regions: dict[str, dict[str, dict]] = {}
            for t in store.ground_truth({m["image_sha256"] for m in maps}):
                regions.setdefault(t["image_sha256"], {})[t["label"]] = t
            maps = [m for m in maps if m["image_sha256"] in regions]
            predictions = {p["id"]: p for p in store.predictions({m["prediction_id"] for m in maps})}
            for m in maps:
                prediction = predictions[m["prediction_id"]]
                labels = json.loads(prediction["label_indices"]) if prediction["label_indices"] else None
                truth = region_of_map(regions[m["image_sha256"]], m, labels)
                if truth is None:
                    continue
                saliency = unpack_array(m["map"], (m["height"], m["width"]))
                yield saliency, region_in_view(truth, json.loads(prediction["preprocessing"]), saliency.shape)

    return localisation_table(pairs(), beta)


def localisation_by_setting(store: Store, beta: float, model: str | None = None, cam: str | None = None) -> list[dict]:
    """The localisation suite of each model file, CAM method and target tensor with ground-truth regions stored."""
    clauses, params = filter_clauses({"model": model, "cam": cam})
    groups: dict[tuple, list[str]] = {}
    for row in store.query(
            "select s.id, p.model, p.model_hash, s.method, s.target_layer from saliency_maps s "
            "join predictions p on p.id = s.prediction_id where s.image_sha256 in (select image_sha256 from "
            "ground_truth)" + (" and " + " and ".join(clauses) if clauses else "")
            + " order by p.model, s.method, s.id", params):
        groups.setdefault((row["model"], row["model_hash"], row["method"], row["target_layer"]), []).append(row["id"])
    return [{"model": model_name, "cam": method, "target_layer": target, **localisation(store, ids, beta)}
            for (model_name, _, method, target), ids in groups.items()]


def judge_agreement(store: Store, **filters) -> list[dict]:
    """How every two judge settings that scored the same views (the same map, alpha, beta and image mode) agree:
    weighted kappa, ICC, Pearson and Spearman with intervals (analysis.agreement.score_agreement)."""
    from .analysis.agreement import score_agreement

    clauses, params = filter_clauses(filters)
    scores: dict[str, dict[str, int]] = {}
    settings: dict[str, dict] = {}
    for row in store.query(
            "select " + SETTING_SELECT + ", j.saliency_id, j.score from judgments j join predictions p on "
            "p.id = j.prediction_id join saliency_maps s on s.id = j.saliency_id where "
            + " and ".join(["j.status = 'ok'", "s.failure is null", *clauses]), params):
        key = setting_key(row)
        settings.setdefault(key, {c: row[c] for c in GROUP_COLUMNS})
        view = view_id(row["saliency_id"], row["alpha"], row["beta"], row["image_mode"])
        scores.setdefault(key, {})[view] = row["score"]
    found = []
    keys = sorted(settings)
    for n, first in enumerate(keys):
        for second in keys[n + 1:]:
            shared = sorted(set(scores[first]) & set(scores[second]))
            if len(shared) < 2:
                continue
            found.append({"first": first, "second": second, "judges": [settings[first]["judge_model"],
                                                                      settings[second]["judge_model"]],
                          "views": len(shared), **score_agreement([scores[first][v] for v in shared],
                                                                  [scores[second][v] for v in shared])})
    return found


def rater_agreement(store: Store, raters: tuple[str, ...] = ()) -> list[dict]:
    """How every two people who rated the same views agree (analysis.agreement.score_agreement)."""
    from .analysis.agreement import score_agreement

    ratings: dict[str, dict[str, int]] = {}
    for row in store.query("select rater, view_id, score from ratings order by rater, view_id"):
        if not raters or row["rater"] in raters:
            ratings.setdefault(row["rater"], {})[row["view_id"]] = row["score"]
    names = sorted(ratings)
    found = []
    for n, first in enumerate(names):
        for second in names[n + 1:]:
            shared = sorted(set(ratings[first]) & set(ratings[second]))
            if len(shared) >= 2:
                found.append({"raters": [first, second], "views": len(shared),
                              **score_agreement([ratings[first][v] for v in shared],
                                                [ratings[second][v] for v in shared])})
    return found


def judge_cards(store: Store) -> dict[str, dict]:
    """Each judge's newest reliability card (eval judge-check), by judge hash and decoding (its setting)."""
    cards = {}
    for row in store.query("select judge_model_hash, decoding, card from judge_checks order by created_at, rowid"):
        cards[row["judge_model_hash"] + " " + row["decoding"]] = json.loads(row["card"])
    return cards


def card_of(cards: dict[str, dict], judge_model_hash: str, decoding: str) -> dict | None:
    """The card of one judge setting (its hash and decoding, as a judgment stores them), if it has one."""
    return cards.get(judge_model_hash + " " + decoding)


def region_means(store: Store, score_ids: list[str]) -> dict:
    """Mean IoU, Dice, pixel accuracy and F1 over the given region scores; for a multilabel model's maps (or any
    that explain other classes than their predictions'), also per finding (`by_finding`, largest first)."""
    from .analysis.regions import REGION_METRICS

    means = _means(store, "region_scores", score_ids, REGION_METRICS)
    rows = list(store.query(
        "select r.id, s.target_index, s.finding as found, p.predicted_index, "
        "coalesce(s.target_label, p.predicted_label) as finding "
        "from region_scores r join saliency_maps s on s.id = r.saliency_id join predictions p on p.id = "
        "s.prediction_id where r.id in (select value from json_each(?))", [json.dumps(list(score_ids))]))
    groups: dict[str, list[str]] = {}
    if any(r["found"] is not None or r["target_index"] != r["predicted_index"] for r in rows):
        for r in rows:
            groups.setdefault(r["finding"], []).append(r["id"])
    means["by_finding"] = sorted(({"finding": finding, **_means(store, "region_scores", ids, REGION_METRICS)}
                                  for finding, ids in groups.items()), key=lambda f: (-f["maps"], f["finding"]))
    return means


def faithfulness_means(store: Store, ids: list[str]) -> dict:
    """Mean deletion/insertion AUC and AOPC; Average Drop and Increase in Confidence as the papers report them
    (means over images, in %)."""
    from .analysis.faithfulness import FAITHFULNESS_METRICS

    return _means(store, "faithfulness", ids, FAITHFULNESS_METRICS, percent=("average_drop", "increase_in_confidence"))


def _means(store: Store, table: str, ids: list[str], metrics, percent: tuple[str, ...] = ()) -> dict:
    """Each metric's mean over the rows, with its bootstrap interval (the maps resampled); `percent` metrics in %."""
    from .analysis.bootstrap import LEVEL, RESAMPLES, SEED, mean_interval

    rows = list(store.query(f"select * from [{table}] where id in (select value from json_each(?))",
                            [json.dumps(list(ids))]))
    means, intervals = {"maps": len(rows)}, {}
    for metric in metrics:
        scale = 100.0 if metric in percent else 1.0
        values = np.array([np.nan if r[metric] is None else r[metric] * scale for r in rows], dtype=float)
        means[metric] = float(np.nanmean(values)) if rows and not np.isnan(values).all() else None
        low, high = mean_interval(values)
        intervals[metric] = {"ci_low": low, "ci_high": high}
    return {**means, "intervals": intervals, "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL}}


def class_statistics(store: Store, threshold: int, by: str = "predicted", beta: float | None = None,
                     groups: dict[int, str] | None = None, min_n: int | None = None,
                     thresholds: dict[str, int] | None = None, **filters) -> list[dict]:
    """Per-class attention statistics of each judge setting (analysis.classes): its judgments grouped by their
    target's class (`by` "predicted": the class the map explains; "labelled": the image's first labelled class, a
    multilabel target's own class) or, with `groups` (class index -> group name), by the group of that class (a
    class in no group: "other"). Map signals: the mass inside the map's ground-truth region (region_scores at
    `beta`, the image's current region), the map's normalised entropy and its attended area at `beta`."""
    from .analysis.classes import MIN_RANKED, attended_area, class_table, map_entropy

    if by not in ("predicted", "labelled"):
        raise ValueError(f"group by 'predicted' or 'labelled', not {by!r}")
    found = []
    asked_beta = beta
    for setting, members in _judged_settings(store, filters):
        # attended area and region mass at the beta given, else at the setting's own (what its judge was shown)
        # a heatmap judge was shown no beta (its setting holds none): the default one
        beta = (DEFAULTS.beta if setting["beta"] is None else setting["beta"]) if asked_beta is None else asked_beta
        names = label_names_of_runs(store, {r["predict_run_id"] for r in members})
        keys = []
        for r in members:
            multilabel = r["finding"] is not None or r["target_index"] != r["predicted_index"]
            labels = json.loads(r["label_indices"]) if r["label_indices"] else []
            if by == "predicted" or multilabel or (labels and r["target_index"] in labels):
                index, name = r["target_index"], r["target_label"]  # a right prediction's label is its own class
            elif labels:
                index = labels[0]
                run_names = names.get(r["predict_run_id"])
                name = run_names[index] if run_names and index < len(run_names) else str(index)
            else:
                index, name = None, "(unlabelled)"
            keys.append(name if groups is None else groups.get(index, "other") if index is not None else name)
        ids = [r["saliency_id"] for r in members]
        entropy, area = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
        position: dict[str, list[int]] = {}
        for n, sid in enumerate(ids):
            position.setdefault(sid, []).append(n)
        unique = list(position)
        for start in range(0, len(unique), 256):
            for m in store.saliency_maps(unique[start:start + 256]):
                saliency = unpack_array(m["map"], (m["height"], m["width"]))
                for n in position[m["id"]]:
                    entropy[n] = np.nan if (e := map_entropy(saliency)) is None else e
                    area[n] = attended_area(saliency, beta)
        mass = np.full(len(ids), np.nan)
        for row in store.query(
                "select r.saliency_id, r.mass_share from region_scores r join ground_truth g on g.image_sha256 = "
                "r.image_sha256 and g.mask_sha256 = r.mask_sha256 where r.beta = ? and r.saliency_id in "
                "(select value from json_each(?))", [beta, json.dumps(unique)]):
            for n in position[row["saliency_id"]]:
                if row["mass_share"] is not None:
                    mass[n] = row["mass_share"]
        used = (thresholds or {}).get(setting_key(setting), threshold)
        correct = np.array([np.nan if r["correct"] is None else r["correct"] for r in members], dtype=float)
        scores = np.array([r["score"] for r in members], dtype=float)
        table = class_table(np.array(keys, dtype=object), correct, scores, used,
                            {"mass_in_region": mass, "entropy": entropy, "attended_area": area},
                            MIN_RANKED if min_n is None else min_n)
        found.append({**setting, "setting_key": setting_key(setting), "by": by if groups is None else f"{by} group",
                      "threshold": used, "beta": beta, **table})
    return found


def artifact_table(store: Store, score_ids: list[str], top: int = 10) -> list[dict]:
    """Per artifact region, over the given scores: the mean share of the maps' mass inside it beside its baseline
    (the region's mean area: a flat map's share), their mean difference, each with its bootstrap interval (the maps
    resampled); the mean share per class (the map's target) and the images whose maps put most mass there."""
    from .analysis.bootstrap import mean_interval

    rows = list(store.query(
        "select a.region, a.spec, a.mass_share, a.area_fraction, a.saliency_id, i.path, "
        "coalesce(s.target_label, p.predicted_label) as class from artifact_scores a "
        "join saliency_maps s on s.id = a.saliency_id join predictions p on p.id = s.prediction_id "
        "join images i on i.sha256 = a.image_sha256 where a.id in (select value from json_each(?)) "
        "and a.mass_share is not null order by a.region, a.spec, a.mass_share desc, i.path",
        [json.dumps(list(score_ids))]))
    regions: dict[tuple, list[dict]] = {}
    for row in rows:  # by definition: two files may name different boxes alike
        regions.setdefault((row["region"], row["spec"]), []).append(row)
    found = []
    for (name, _), members in regions.items():
        share = np.array([r["mass_share"] for r in members])
        area = np.array([r["area_fraction"] for r in members])

        def figure(values: np.ndarray) -> dict:
            low, high = mean_interval(values)
            return {"mean": float(values.mean()), "ci_low": low, "ci_high": high}

        by_class: dict[str, list[float]] = {}
        area_of: dict[str, list[float]] = {}
        for r in members:
            by_class.setdefault(r["class"], []).append(r["mass_share"])
            area_of.setdefault(r["class"], []).append(r["area_fraction"])
        found.append({
            "region": name, "spec": members[0]["spec"], "maps": len(members), "mass_share": figure(share),
            "area_fraction": figure(area), "excess": figure(share - area),
            "by_class": sorted(({"class": c, "maps": len(v), "mass_share": float(np.mean(v)),
                                 **dict(zip(("ci_low", "ci_high"), mean_interval(np.array(v)))),
                                 "area_fraction": float(np.mean(area_of[c]))}
                                for c, v in by_class.items()), key=lambda c: (-c["mass_share"], c["class"])),
            "top_images": [{"path": r["path"], "class": r["class"], "mass_share": r["mass_share"],
                            "area_fraction": r["area_fraction"], "saliency_id": r["saliency_id"]}
                           for r in members[:top]]})
    return found


def map_signals(store: Store, beta: float, steps: int, baseline: str, model: str | None = None,
                cam: str | None = None) -> dict[str, np.ndarray]:
    """Per-saliency-map signals, aligned (NaN where a map lacks one): judge scores (one signal per judgment setting,
    GROUP_COLUMNS), the model's confidence, region agreement at `beta`, and faithfulness at
    `steps`/`baseline`. Signals no map has are left out."""
    where, params = [], []
    if model:
        where.append("p.model = ?")
        params.append(model)
    if cam:
        where.append("s.method = ?")
        params.append(cam)
    clause = f"where {' and '.join(where)}" if where else ""
    clause = f"{clause} and s.failure is null" if clause else "where s.failure is null"  # degenerate maps: no signal
    # the model's confidence in the map's target (a multilabel finding's own probability; maps stored before m015:
    # their prediction's)
    maps = list(store.query("select s.id, coalesce(s.target_probability, p.confidence) as confidence from "
                            "saliency_maps s join predictions p on "
                            f"p.id = s.prediction_id {clause} order by s.id", params))
    index = {m["id"]: i for i, m in enumerate(maps)}
    signals: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray:
        return signals.setdefault(name, np.full(len(maps), np.nan))

    judged = [j for j in store.query(
        "select j.saliency_id, j.score, " + SETTING_SELECT + " from judgments j join predictions p on "
        "p.id = j.prediction_id join saliency_maps s on s.id = j.saliency_id where j.status = 'ok' "
        "order by j.created_at, j.id") if j["saliency_id"] in index]
    settings = sorted({tuple(j[c] for c in GROUP_COLUMNS) for j in judged}, key=str)
    for j in judged:
        setting = tuple(j[c] for c in GROUP_COLUMNS)
        name = "score" if len(settings) == 1 else "score " + describe_setting(dict(zip(GROUP_COLUMNS, setting)))
        column(name)[index[j["saliency_id"]]] = j["score"]
    for m in maps:
        column("confidence")[index[m["id"]]] = m["confidence"]
    # Scores against each image's current region (a replaced mask leaves its old scores behind).
    for row in store.query("select r.saliency_id, r.iou, r.dice, r.pixel_accuracy, r.f1, r.mass_share from "
                           "region_scores r join ground_truth g on g.image_sha256 = r.image_sha256 and "
                           "g.mask_sha256 = r.mask_sha256 where r.beta = ?", [beta]):
        if row["saliency_id"] in index:
            for metric in ("iou", "dice", "pixel_accuracy", "f1", "mass_share"):
                if row[metric] is not None:
                    column(metric)[index[row["saliency_id"]]] = row[metric]
    for row in store.query("select * from faithfulness where steps = ? and baseline = ?", [steps, baseline]):
        if row["saliency_id"] in index:
            for metric, name in (("deletion_auc", "deletion"), ("insertion_auc", "insertion"),
                                 ("average_drop", "average_drop"), ("aopc", "aopc")):
                column(name)[index[row["saliency_id"]]] = row[metric]
    return {name: values for name, values in signals.items() if not np.isnan(values).all()}


def read_truth(path: Path) -> dict[str, bool]:
    """A CSV with `path` and `label_ok` (1/0, true/false): whether each image's given label is right."""
    truth = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        for needed in ("path", "label_ok"):
            if needed not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no column {needed!r} (columns: {', '.join(reader.fieldnames or [])})")
        for row in reader:
            value = row["label_ok"].strip().lower()
            if value not in ("1", "0", "true", "false"):
                raise ValueError(f"{path}: label_ok must be 1/0 or true/false, got {row['label_ok']!r} "
                                 f"for {row['path']}")
            image = Path(row["path"])
            image = image if image.is_absolute() else Path(path).absolute().parent / image
            truth[str(image.resolve())] = value in ("1", "true")
    return truth


def stored_probabilities(store: Store, image_shas: list[str], model: str, model_hash: str | None = None) -> np.ndarray:
    """The stored probability vectors of `model` for these images, in their order: of one version of it (its model
    hash, or the start of it, where the store holds predictions of several: other weights, another backend)."""
    rows = list(store.query(
        "select image_sha256, probs, model_hash from predictions where model = ? and image_sha256 in "
        "(select value from json_each(?)) and substr(model_hash, 1, length(?)) = ?",
        [model, json.dumps(image_shas), model_hash or "", model_hash or ""]))
    hashes = sorted({r["model_hash"] for r in rows})
    if len(hashes) > 1:
        raise ValueError(f"the store holds predictions of {len(hashes)} versions of {model} (other weights or "
                         f"another backend): choose one with --probs-model-hash ({', '.join(hashes)})")
    found = {r["image_sha256"]: r["probs"] for r in rows}
    missing = [sha for sha in image_shas if sha not in found]
    if missing:
        raise ValueError(f"{len(missing)} of the images have no prediction of {model}; run `localjudge predict "
                         f"IMAGES --model {model}` first")
    return np.stack([unpack_array(found[sha], (-1,), np.float32) for sha in image_shas])


def label_issue_table(store: Store, truth_path: Path, threshold: int, model: str, judge_model: str | None = None,
                      image_mode: str | None = None, cam: str | None = None, probs_model: str | None = None,
                      target_layer: str | None = None, setting: str | None = None,
                      probs_model_hash: str | None = None) -> dict:
    """Every method's verdicts on the images of the truth file that have a label, a prediction of `model` and a
    successful judgment: the shape of the paper's Tables 5 and 6. `setting`: only the judge setting whose key starts
    with it (two settings may differ only in their decoding, e.g. two recognizer designs)."""
    from .analysis.bootstrap import LEVEL, RESAMPLES, SEED
    from .analysis.label_issues import (CLEANLAB_FILTERS, cleanlab_flags, detection_scores, f1_intervals,
                                        given_labels, judge_flags)

    truth = read_truth(truth_path)
    images = {str(Path(i["path"]).resolve()): i["sha256"] for i in store.images()}
    by_sha = {images[p]: ok for p, ok in truth.items() if p in images}
    where, params = ["j.status = 'ok'", "s.failure is null", "p.model = ?", "p.label_indices is not null"], [model]
    for column, value in (("j.judge_model", judge_model), ("j.image_mode", image_mode), ("s.method", cam),
                          ("s.target_layer", target_layer)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = [r for r in store.query(
        "select p.image_sha256, p.probs, p.label_indices, p.correct, j.score, s.finding, " + SETTING_SELECT +
        " from judgments j join predictions p on p.id = j.prediction_id join saliency_maps s on s.id = j.saliency_id "
        "where " + " and ".join(where) + " order by p.image_sha256", params) if r["image_sha256"] in by_sha
        and (setting is None or setting_key(r).startswith(setting))]
    if any(r["finding"] is not None for r in rows):
        raise ValueError(f"{model} is a multilabel model: label issues are found for single-label models (cleanlab's "
                         "filters and the judge's flags read one label and one prediction per image)")
    settings = {tuple(r[c] for c in GROUP_COLUMNS) for r in rows}
    if len(settings) > 1:
        raise ValueError("judgments of several settings (model, CAM, target, judge, image mode, alpha, beta, prompt, "
                         "judge image size, decoding); choose one with --cam, --target-layer, --judge-model, "
                         "--image-mode or --setting KEY: "
                         + "; ".join(f"{setting_key(dict(zip(GROUP_COLUMNS, s)))[:12]}: "
                                     f"{describe_setting(dict(zip(GROUP_COLUMNS, s)))}"
                                     for s in sorted(settings, key=str)))
    if not rows:
        raise ValueError(f"{truth_path}: none of its images has a label, a prediction of {model} and a successful "
                         "judgment in this store")
    if len({r["image_sha256"] for r in rows}) != len(rows):
        raise ValueError("an image has several predictions of this model in the store (several model files?); "
                         "audit them in separate stores")
    label_ok = np.array([by_sha[r["image_sha256"]] for r in rows])
    correct = np.array([bool(r["correct"]) for r in rows])
    scores = np.array([r["score"] for r in rows], dtype=float)
    probs = (stored_probabilities(store, [r["image_sha256"] for r in rows], probs_model, probs_model_hash)
             if probs_model else np.stack([unpack_array(r["probs"], (-1,), np.float32) for r in rows]))
    labels = given_labels([json.loads(r["label_indices"]) for r in rows], probs)  # all of each image's labels
    methods = {"keep-all": np.zeros(len(rows), dtype=bool),
               "judge": judge_flags(correct, scores, threshold),
               "judge-wh": judge_flags(correct, scores, threshold, wh_only=True)}
    for filter_by, short in CLEANLAB_FILTERS.items():
        methods[f"cleanlab {short} ({filter_by})"] = cleanlab_flags(labels, probs, filter_by)
    setting = dict(zip(GROUP_COLUMNS, next(iter(settings))))
    return {"truth": str(truth_path), "samples": len(rows), "labels_wrong": int((~label_ok).sum()),
            "cleanlab_probabilities": probs_model or model,
            "threshold": threshold, "judge": {k: setting[k] for k in ("judge_model", "image_mode", "alpha", "beta",
                                                                       "cam", "prompt_hash")},
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL},
            "methods": [{"method": name, **detection_scores(label_ok, flags),
                         **f1_intervals(label_ok, flags, methods["keep-all"])} for name, flags in methods.items()]}


# --- samples ------------------------------------------------------------------------------------------
_SAMPLE_SQL = """
select j.id as judgment_id, j.status, j.failure_kind, j.score, j.evaluation, j.justification, j.error,
       j.alpha, j.beta, j.image_mode, j.image_kind, j.judge_backend, j.judge_model, j.judge_model_hash,
       j.prompt_hash, j.decoding, j.render_version,
       j.judge_image_size, j.input_tokens, j.output_tokens, j.run_id as judge_run_id, j.created_at as judged_at,
       j.saliency_id, s.method as cam, s.target_layer, s.target_index, s.finding,
       coalesce(s.target_label, p.predicted_label) as target_label,
       p.id as prediction_id, p.model, p.model_hash, p.backend, p.preprocessing, p.predicted_index,
       p.predicted_label, coalesce(s.target_probability, p.confidence) as confidence, {correct} as correct,
       p.label_indices, p.top5, p.run_id as predict_run_id,
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
                                     and beta = coalesce(j.beta, {DEFAULT_BETA}) order by created_at desc, id limit 1)
left join faithfulness f on f.id = (select id from faithfulness where saliency_id = j.saliency_id
                                    order by created_at desc, id limit 1)
{where}
order by i.path, p.model, s.method, j.judge_model, j.alpha, j.beta, j.id
"""


# a heatmap judgment holds no beta (its overlay reads none): its region scores are read at the default beta, as
# class_statistics reads them
_SAMPLE_SQL = _SAMPLE_SQL.replace("{correct}", TARGET_CORRECT).replace("{DEFAULT_BETA}", repr(float(DEFAULTS.beta)))


def label_names_of_runs(store: Store, run_ids: set[str | None]) -> dict[str | None, tuple[str, ...] | None]:
    """The class names each predicting run used: those it recorded (a label list of the user's own), else its
    registered card's; None where they can no longer be read."""
    return {run_id: None if found is None else found.names
            for run_id, found in label_lists_of_runs(store, run_ids).items()}


def label_lists_of_runs(store: Store, run_ids: set[str | None]) -> dict:
    """The label list (data.LabelList) each predicting run used: the names it recorded (a list of the user's own),
    else its registered card's list; None where it can no longer be read."""
    from .data import LabelList
    from .errors import UserError
    from .vision import resolve_card

    runs = run_parameters(store)
    recorded = {r["id"]: json.loads(r["model_hashes"] or "{}").get("labels") for r in store.query(
        "select id, model_hashes from runs where id in (select value from json_each(?))", [json.dumps(list(run_ids))])}
    lists: dict = {}
    for run_id in run_ids:
        if recorded.get(run_id):  # the names the run recorded (a list of the user's own)
            names = tuple(recorded[run_id]["names"])
            lists[run_id] = LabelList(names, ("",) * len(names))
            continue
        config = (runs.get(run_id) or {}).get("config") or {}
        try:
            lists[run_id] = resolve_card(config["model"], config.get("card"), config.get("labels")).label_list()
        except (UserError, OSError, KeyError, ValueError):
            lists[run_id] = None
    return lists


def view_shading(alpha, beta, image_mode: str) -> tuple:
    """The alpha and beta a view is drawn with: none for a heatmap overlay, which does not depend on them, whatever
    judge saw it (the recognizer, which reads them, keeps them in its judgments, not in the view)."""
    return (None, None) if image_mode == "heatmap" else (alpha, beta)


def view_id(saliency_id: str, alpha: float, beta: float, image_mode: str) -> str:
    """What a judge was shown (and what a person rates): the map, rendered with alpha, beta in one image mode."""
    alpha, beta = view_shading(alpha, beta, image_mode)
    return content_key("view", saliency_id, None if alpha is None else float(alpha),
                       None if beta is None else float(beta), image_mode)


def quadrant(status: str, correct, score, threshold: int) -> str:
    """CH/CL/WH/WL for a successful judgment of a labelled image; 'unlabelled' or 'failed' otherwise."""
    if status != "ok":
        return "failed"
    if correct is None:
        return "unlabelled"
    return ("C" if correct else "W") + ("H" if score >= threshold else "L")


def _where(filters: dict) -> tuple[str, list]:
    clauses, params = filter_clauses(filters)
    return "where " + " and ".join([TARGET_CURRENT, *clauses]), params


def samples(store: Store, threshold: int, thresholds: dict[str, int] | None = None, **filters) -> list[dict]:
    """Every judgment as a sample, in a stable order. `thresholds` maps a setting key (queries.setting_key) to a
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


def by_disagreement(store: Store, view_ids: list[str], judges: tuple[str, str]) -> list[str]:
    """`view_ids` with those both judges (by name) scored first, the largest difference between their scores first
    (a judge with several settings on a view: its mean score), the rest after them in their given order."""
    scores: dict[str, dict[str, list[int]]] = {}
    for row in store.query("select j.saliency_id, j.alpha, j.beta, j.image_mode, j.judge_model, j.score "
                           "from judgments j where j.status = 'ok' and j.judge_model in (?, ?)", list(judges)):
        view = view_id(row["saliency_id"], row["alpha"], row["beta"], row["image_mode"])
        scores.setdefault(view, {}).setdefault(row["judge_model"], []).append(row["score"])
    gap = {view: abs(np.mean(found[judges[0]]) - np.mean(found[judges[1]])) for view, found in scores.items()
           if judges[0] in found and judges[1] in found}
    missing = [name for name in judges if not any(name in found for found in scores.values())]
    if missing:
        raise ValueError(f"no successful judgment by {', '.join(missing)} in this store (judges are named as "
                         "`localjudge compare` shows them)")
    position = {view: n for n, view in enumerate(view_ids)}
    both = sorted((v for v in view_ids if v in gap), key=lambda v: (-gap[v], position[v]))
    return both + [v for v in view_ids if v not in gap]


def views(store: Store, **filters) -> list[dict]:
    """The distinct views judges were shown, each with what a person needs to rate it (but its map, which is read
    when it is shown), in a fixed pseudo-random order (by view id): any prefix a person rates is a fair sample of
    the whole."""
    where, params = _where(filters)
    rows = store.query(
        "select distinct j.saliency_id, j.alpha, j.beta, j.image_mode, j.prompt_hash, j.judge_image_size, "
        "j.image_kind, j.image_sha256, coalesce(s.target_label, p.predicted_label) as predicted_label, "
        "p.preprocessing, i.path "
        "from judgments j join predictions p on p.id = j.prediction_id "
        "join saliency_maps s on s.id = j.saliency_id join images i on i.sha256 = j.image_sha256 " + where, params)
    found: dict[str, dict] = {}
    for row in rows:
        key = view_id(row["saliency_id"], row["alpha"], row["beta"], row["image_mode"])
        alpha, beta = view_shading(row["alpha"], row["beta"], row["image_mode"])
        row = {**row, "alpha": alpha, "beta": beta}  # as the view is drawn and rated
        # The same view judged under several prompts (or image sizes): people see it once, with the first one's.
        if key not in found or (row["prompt_hash"] or "", row["judge_image_size"]) < (
                found[key]["prompt_hash"] or "", found[key]["judge_image_size"]):
            found[key] = {**row, "view_id": key}
    return [found[k] for k in sorted(found)]


# eval background's variants of each image's view (pipeline.background makes them)
BACKGROUND_VARIANTS = ("original", "only_object", "no_object", "mixed_same", "mixed_rand")


def background_table(store, ids: list[str], names: list[str]) -> dict:
    """Each variant's accuracy with its interval, overall and per labelled class, and the background gap."""
    from .analysis.bootstrap import mean_interval, paired_difference_interval

    rows = list(store.query("select b.image_sha256, b.variant, b.correct, p.label_indices from background_tests b "
                            "join predictions p on p.id = b.prediction_id where b.id in "
                            "(select value from json_each(?))", [json.dumps(ids)]))
    by_image: dict[str, dict] = {}
    for r in rows:
        entry = by_image.setdefault(r["image_sha256"], {"label": json.loads(r["label_indices"])[0]})
        entry[r["variant"]] = r["correct"]

    def figures(images: list[dict]) -> dict:
        result = {"images": len(images)}
        for variant in BACKGROUND_VARIANTS:
            values = np.array([i[variant] for i in images if variant in i], dtype=float)
            low, high = mean_interval(values)
            result[variant] = {"accuracy": float(values.mean()) if len(values) else None, "ci_low": low,
                               "ci_high": high, "n": int(len(values))}
        both = [i for i in images if "mixed_same" in i and "mixed_rand" in i]
        gap = paired_difference_interval(np.array([i["mixed_rand"] for i in both], dtype=float),
                                         np.array([i["mixed_same"] for i in both], dtype=float),
                                         lambda v: float(v.mean()))
        result["bg_gap"] = gap  # mixed same minus mixed rand, over the images with both
        return result

    images = list(by_image.values())
    # the trivial baseline: the accuracy of always answering the commonest labelled class, whatever the image
    labels = [i["label"] for i in images]
    majority = max(labels.count(label) for label in set(labels)) / len(labels) if labels else None
    classes: dict[int, list[dict]] = {}
    for image in images:
        classes.setdefault(image["label"], []).append(image)
    return {"overall": {**figures(images), "majority_baseline": majority},
            "by_class": sorted(({"class": names[c] if c < len(names) else str(c), **figures(members)}
                                for c, members in classes.items()), key=lambda c: (-c["images"], c["class"]))}


def canary_report(store, ids: list[str], names: list[str], top: int = 10, quadrant_setting: str | None = None,
                  threshold: int = 3) -> dict:
    """The canary's figures (eval canary; read from the store without torch, as the report reads them) over the
    stored results `ids` (analysis.canary.canary_summary), per class (the original
    prediction's, each figure with its interval) and the images whose tagged maps put most mass on the artifact;
    with `quadrant_setting`, the quadrant changes of the images the judge scored under it (a score at or above
    `threshold` is high; right where the prediction is among the image's labels)."""
    from .analysis.canary import canary_summary, mean_with_interval, quadrant_changes

    rows = list(store.query("select c.*, i.path from canary_tests c join images i on i.sha256 = c.image_sha256 "
                            "where c.id in (select value from json_each(?)) order by c.id", [json.dumps(ids)]))
    if not rows:
        return {"summary": None, "by_class": [], "quadrants": None, "top_images": []}
    original = np.stack([unpack_array(r["original_probs"], (-1,), np.float32) for r in rows])
    tagged = np.stack([unpack_array(r["tagged_probs"], (-1,), np.float32) for r in rows])

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=float)

    summary = canary_summary(original, tagged, column("mass_tagged"), column("mass_original"), column("area_fraction"),
                             names)
    by_class: dict[int, list[int]] = {}
    for n, r in enumerate(rows):
        by_class.setdefault(r["original_index"], []).append(n)
    classes = []
    for index, members in by_class.items():
        members = np.array(members)
        classes.append({"class": names[index] if index < len(names) else str(index), "images": len(members),
                        "flip_rate": mean_with_interval([rows[m]["tagged_index"] != index for m in members]),
                        "probability_change": mean_with_interval(tagged[members, index] - original[members, index]),
                        "mass_on_artifact": mean_with_interval(column("mass_tagged")[members])})
    classes.sort(key=lambda c: (-c["images"], c["class"]))
    quadrants = None
    if quadrant_setting is not None:
        judged = {r["canary_id"]: r for r in store.query(
            "select q.*, p.label_indices from canary_quadrants q join canary_tests c on c.id = q.canary_id join "
            "predictions p on p.id = c.prediction_id where q.setting = ? and q.canary_id in (select value from "
            "json_each(?))", [quadrant_setting, json.dumps(ids)])}

        def quadrant(row: dict, index: int, status: str, score) -> str | None:
            labelled = json.loads(row["label_indices"]) if row["label_indices"] else []
            if status != "ok" or not labelled:
                return None
            return ("C" if index in labelled else "W") + ("H" if score >= threshold else "L")

        pairs = [(quadrant(judged[r["id"]], r["original_index"], judged[r["id"]]["original_status"],
                           judged[r["id"]]["original_score"]),
                  quadrant(judged[r["id"]], r["tagged_index"], judged[r["id"]]["tagged_status"],
                           judged[r["id"]]["tagged_score"])) for r in rows if r["id"] in judged]
        quadrants = {**quadrant_changes(np.array([a for a, _ in pairs], dtype=object),
                                        np.array([b for _, b in pairs], dtype=object)),
                     "judged": len(pairs), "threshold": threshold, "setting": json.loads(quadrant_setting)}
    ranked = sorted(range(len(rows)), key=lambda n: (-(rows[n]["mass_tagged"] or 0.0), rows[n]["path"]))
    return {"summary": summary, "by_class": classes, "quadrants": quadrants,
            "top_images": [{"path": rows[n]["path"], "mass_on_artifact": rows[n]["mass_tagged"],
                            "original": names[rows[n]["original_index"]], "tagged": names[rows[n]["tagged_index"]],
                            "box": json.loads(rows[n]["box"])} for n in ranked[:top]]}
