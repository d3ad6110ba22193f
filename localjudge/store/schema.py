"""The store's schema: migrations as ordered functions, each applied once and recorded in `_migrations` (the
simonw/llm pattern), and `TABLES`, the one list of the tables a store holds (used by merge, by clearing a Ray
worker's scratch store and by the doctor)."""

from __future__ import annotations

from typing import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn: Callable[[sqlite_utils.Database], None]):
    """Register a schema change; migrations run once each, in the order they are defined (simonw/llm pattern)."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str, "command": str, "config": str, "model_hashes": str, "package_versions": str,
            "inputs": str, "started_at": str, "finished_at": str, "status": str,
        },
        pk="id",
    )
    db["images"].create(
        {
            "sha256": str, "path": str, "size_bytes": int, "width": int, "height": int, "mode": str,
            "format": str, "label": str, "run_id": str, "created_at": str,
        },
        pk="sha256",
    )
    db["read_errors"].create(
        {"id": str, "path": str, "size_bytes": int, "sha256": str, "reason": str, "run_id": str, "created_at": str},
        pk="id",
    )
    db["predictions"].create(
        {
            "id": str, "image_sha256": str, "model": str, "model_hash": str, "preprocessing": str,
            "predicted_index": int, "predicted_label": str, "confidence": float, "top5": str,
            "probs": bytes, "label_indices": str, "correct": int, "run_id": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("image_sha256", "images", "sha256")],
    )
    db["saliency_maps"].create(
        {
            "id": str, "prediction_id": str, "image_sha256": str, "method": str, "target_layer": str,
            "target_index": int, "height": int, "width": int, "map": bytes, "run_id": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("prediction_id", "predictions", "id")],
    )
    db["prompts"].create({"hash": str, "image_mode": str, "text": str, "created_at": str}, pk="hash")
    db["judgments"].create(
        {
            "id": str, "saliency_id": str, "prediction_id": str, "image_sha256": str, "alpha": float,
            "beta": float, "image_mode": str, "judge_backend": str, "judge_model": str, "judge_model_hash": str,
            "prompt_hash": str, "decoding": str, "status": str, "failure_kind": str, "score": int, "evaluation": str,
            "justification": str, "raw_text": str, "error": str, "input_tokens": int, "output_tokens": int,
            "batch_size": int, "batch_seconds": float, "run_id": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id"), ("prompt_hash", "prompts", "hash")],
    )
    db["file_hashes"].create(
        {"path": str, "size_bytes": int, "mtime_ns": int, "sha256": str}, pk=("path", "size_bytes", "mtime_ns")
    )
    db["predictions"].create_index(["image_sha256"])
    db["saliency_maps"].create_index(["prediction_id"])
    db["judgments"].create_index(["saliency_id"])


@migration
def m002_execution_provider_and_backend(db: sqlite_utils.Database) -> None:
    # Which engine produced a row: the run's execution provider (e.g. CUDAExecutionProvider) and each
    # prediction's backend (torch or onnx).
    db["runs"].add_column("execution_provider", str)
    db["predictions"].add_column("backend", str)


@migration
def m003_judge_image_size(db: sqlite_utils.Database) -> None:
    # The judge's image size decides what it sees, so it is part of a judgment's key and recorded with it.
    db["judgments"].add_column("judge_image_size", int)


@migration
def m004_ground_truth_and_region_scores(db: sqlite_utils.Database) -> None:
    # An image's object region (one per image; a new source replaces it) and, per saliency map, how the binarised
    # attention mask agrees with it. A score is keyed by the map, the region's hash and beta.
    db["ground_truth"].create(
        {"image_sha256": str, "source": str, "reference": str, "height": int, "width": int, "mask": bytes,
         "mask_sha256": str, "area_fraction": float, "run_id": str, "created_at": str},
        pk="image_sha256",
        foreign_keys=[("image_sha256", "images", "sha256")],
    )
    db["region_scores"].create(
        {"id": str, "saliency_id": str, "image_sha256": str, "mask_sha256": str, "beta": float, "iou": float,
         "dice": float, "pixel_accuracy": float, "f1": float, "precision": float, "recall": float,
         "attended_fraction": float, "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["region_scores"].create_index(["saliency_id"])


@migration
def m005_faithfulness(db: sqlite_utils.Database) -> None:
    # Perturbation metrics of a saliency map, keyed by the map, the step count and the baseline fill; the curves are
    # kept (JSON lists) so other summaries can be computed later without the model.
    db["faithfulness"].create(
        {"id": str, "saliency_id": str, "image_sha256": str, "target_index": int, "steps": int, "baseline": str,
         "backend": str, "original_score": float, "explanation_score": float, "deletion_auc": float,
         "insertion_auc": float, "aopc": float, "average_drop": float, "increase_in_confidence": float,
         "deletion_curve": str, "insertion_curve": str, "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["faithfulness"].create_index(["saliency_id"])


@migration
def m006_ratings_and_calibrations(db: sqlite_utils.Database) -> None:
    # A person's 0-5 rating of a view (what a judge was shown: a map, alpha, beta, image mode), one per rater and
    # view (rating again replaces it); every judge that saw the same view is compared with it. A calibration is the
    # judge threshold fitted to people's ratings for one judge setting (queries.GROUP_COLUMNS).
    db["ratings"].create(
        {"id": str, "view_id": str, "saliency_id": str, "image_sha256": str, "alpha": float, "beta": float,
         "image_mode": str, "rater": str, "score": int, "created_at": str, "updated_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["ratings"].create_index(["saliency_id"])
    db["ratings"].create_index(["rater"])
    db["calibrations"].create(
        {"id": str, "setting_key": str, "setting": str, "raters": str, "human_threshold": int, "threshold": int,
         "n": int, "kappa": float, "weighted_kappa": float, "accuracy": float, "pearson": float, "spearman": float,
         "details": str, "created_at": str},
        pk="id",
    )
    db["calibrations"].create_index(["setting_key"])


@migration
def m007_map_failures(db: sqlite_utils.Database) -> None:
    # A map that shows nothing (all zero, or flat: see saliency.engine.degenerate) is kept with the reason it is no
    # finding; it is never judged, and summaries count it apart. NULL: a map to judge.
    db["saliency_maps"].add_column("failure", str)
    # Maps stored before: a degenerate map was normalised to all zeros (min-max of a constant), so those are found.
    flag_zero_maps(db.conn, "")


def flag_zero_maps(conn, among: str) -> None:
    """Give the all-zero maps with no failure yet (of those whose id the `among` SQL selects, if given) the engine's
    reason: for a store made before degenerate maps were caught (m007) and for maps merged in from one."""
    from . import unpack_array

    where = f" and id in ({among})" if among else ""
    rows = conn.execute(f"select id, map, height, width from main.saliency_maps where failure is null{where}")
    zero = [(ALL_ZERO_MAP, map_id) for map_id, blob, height, width in rows.fetchall()
            if not unpack_array(blob, (height, width)).any()]
    conn.executemany("update main.saliency_maps set failure = ? where id = ?", zero)


# Why an all-zero map is no finding: the engine's reason (saliency.engine.degenerate), given also to the maps of a store
# made before degenerate maps were caught (m007, and a merge from such a store), so that the same map says the same
# wherever it was made. (An old flat map was normalised to zeros too: it is found as all-zero.)
ALL_ZERO_MAP = "all-zero map: no positive evidence for the class at the target tensor"


@migration
def m008_sanity_checks(db: sqlite_utils.Database) -> None:
    # Adebayo et al.'s randomisation tests of one CAM method on one model's maps (eval sanity): keyed by the model
    # file, the target tensor, the method, the images and the seed; the cascade's steps kept as JSON.
    db["sanity_checks"].create(
        {"id": str, "model": str, "model_hash": str, "target_layer": str, "method": str, "images": int, "seed": int,
         "random_logit_rank": float, "random_logit_ssim": float, "randomised_rank": float, "randomised_ssim": float,
         "cascade": str, "flagged": int, "run_id": str, "created_at": str},
        pk="id",
    )


@migration
def m009_calibrations_keyed_with_the_target(db: sqlite_utils.Database) -> None:
    # A judge setting now includes the maps' target tensor (queries.GROUP_COLUMNS): a calibration stored before is
    # keyed again with the target of the maps its setting's judgments were made on (one target per setting then).
    import json

    from . import content_key

    columns = ("model", "model_hash", "cam", "target_layer", "judge_model", "judge_model_hash", "image_mode", "alpha",
               "beta", "judge_image_size", "prompt_hash", "decoding")  # GROUP_COLUMNS as this migration writes them
    for row in list(db.query("select id, setting from calibrations")):
        setting = json.loads(row["setting"])
        if "target_layer" in setting:
            continue
        targets = [r["target_layer"] for r in db.query(
            "select distinct s.target_layer from judgments j join predictions p on p.id = j.prediction_id "
            "join saliency_maps s on s.id = j.saliency_id where p.model_hash = ? and s.method = ? "
            "and j.judge_model_hash = ? and j.image_mode = ? and j.alpha is ? and j.beta is ? and j.prompt_hash is ? "
            "and j.judge_image_size = ? and j.decoding = ?",
            [setting["model_hash"], setting["cam"], setting["judge_model_hash"], setting["image_mode"],
             setting["alpha"], setting["beta"], setting["prompt_hash"], setting["judge_image_size"],
             setting["decoding"]])]
        if len(targets) != 1:
            continue  # no judgment left to tell (or several): the calibration stays as it was
        setting["target_layer"] = targets[0]
        db["calibrations"].update(row["id"], {"setting": json.dumps(setting, sort_keys=True),
                                             "setting_key": content_key("setting", *[setting[c] for c in columns])})


@migration
def m010_judge_checks(db: sqlite_utils.Database) -> None:
    # A judge's known-answer canaries (eval judge-check): each answer keyed by what was asked of which judge, and the
    # reliability card made of them.
    db["canary_judgments"].create(
        {"id": str, "judge_model": str, "judge_model_hash": str, "decoding": str, "kind": str, "variant": str,
         "saliency_id": str, "label": str, "prompt": str, "status": str, "score": int, "raw_text": str, "error": str,
         "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["judge_checks"].create(
        {"id": str, "judge_model": str, "judge_model_hash": str, "decoding": str, "verdict": str, "card": str,
         "run_id": str, "created_at": str},
        pk="id",
    )
    db["judge_checks"].create_index(["judge_model_hash"])


@migration
def m011_region_mass_share(db: sqlite_utils.Database) -> None:
    # The share of each map's mass inside its image's region (the energy-based pointing game), per region score.
    db["region_scores"].add_column("mass_share", float)


@migration
def m012_one_all_zero_reason(db: sqlite_utils.Database) -> None:
    # m007 first wrote another reason for the zero maps it found; the engine's own (ALL_ZERO_MAP) is the one reason,
    # so that the same map merged from two stores says the same.
    db.execute("update saliency_maps set failure = ? where failure like 'all-zero or flat map (found in a store%'",
               [ALL_ZERO_MAP])


@migration
def m013_image_kinds(db: sqlite_utils.Database) -> None:
    # What kind of image the judge is told it sees, where the file says (DICOM: "chest radiograph (CR)"); NULL: a
    # photo, unless the run names another kind (--image-kind). Images stored before stay NULL.
    db["images"].add_column("kind", str)
    # and what each judgment told its judge the image was (its prompt is the stored template filled with it)
    db["judgments"].add_column("image_kind", str)


@migration
def m014_target_labels(db: sqlite_utils.Database) -> None:
    # The class a map explains, by name: its prediction's class, or one finding of a multilabel model. NULL in maps
    # stored before: their target is the prediction's class (predictions.predicted_label).
    db["saliency_maps"].add_column("target_label", str)


@migration
def m015_findings_and_regions_per_finding(db: sqlite_utils.Database) -> None:
    # A multilabel model's map says how its target came to be explained: the target's probability, whether the
    # model finds it (1: at or above its threshold; 0: a labelled finding the model missed, explained with
    # --targets labelled) and whether it is a target of the newest run's settings (its threshold and --targets: a
    # map made under others is marked again, never made again). NULL for a single-label model's maps and maps
    # stored before.
    db["saliency_maps"].add_column("target_probability", float)
    db["saliency_maps"].add_column("finding", int)
    db["saliency_maps"].add_column("current_target", int)
    # a prediction's task where it is not single-label classification ("multilabel"): its targets are its findings
    db["predictions"].add_column("task", str)
    # An image's regions, one per finding it names ('' the image's object, whatever its class): a COCO category's
    # boxes, a mask with its class (--mask-label-column). The key becomes (image, label).
    db["ground_truth"].add_column("label", str, not_null_default="")
    db["ground_truth"].transform(pk=("image_sha256", "label"))


@migration
def m016_artifact_scores(db: sqlite_utils.Database) -> None:
    # The share of each map's mass in a named artifact region (a border, the corners, a box of the image): keyed by
    # the map and the region's definition, with the region's area fraction (a flat map's share: the baseline).
    db["artifact_scores"].create(
        {"id": str, "saliency_id": str, "image_sha256": str, "region": str, "spec": str, "mass_share": float,
         "area_fraction": float, "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("saliency_id", "saliency_maps", "id")],
    )
    db["artifact_scores"].create_index(["saliency_id"])


@migration
def m017_canary_tests(db: sqlite_utils.Database) -> None:
    # The planted-shortcut canary (eval canary): per sampled prediction, the artifact drawn into a copy of its view,
    # both views' class probabilities, and the share of each one's map on the artifact's pixels.
    db["canary_tests"].create(
        {"id": str, "prediction_id": str, "image_sha256": str, "artifact": str, "size": float, "seed": int,
         "box": str, "cam": str, "target_layer": str, "original_index": int, "tagged_index": int,
         "original_probs": bytes, "tagged_probs": bytes, "mass_tagged": float, "mass_original": float,
         "area_fraction": float, "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("prediction_id", "predictions", "id")],
    )


@migration
def m018_map_clusters(db: sqlite_utils.Database) -> None:
    # Clusters of a class's maps (eval clusters): each cluster with its figures, mean map and whether it is a
    # shortcut candidate, keyed by the clustering (model file, method, target, class, parameters, the maps) and its
    # number; and its members.
    db["map_clusters"].create(
        {"id": str, "clustering": str, "model": str, "model_hash": str, "cam": str, "target_layer": str,
         "class": str, "cluster": int, "size": int, "shortcut_candidate": int, "reasons": str, "figures": str,
         "grid": int, "mean_map": bytes, "run_id": str, "created_at": str},
        pk="id",
    )
    db["cluster_members"].create(
        {"id": str, "cluster_id": str, "saliency_id": str},
        pk="id",
        foreign_keys=[("cluster_id", "map_clusters", "id"), ("saliency_id", "saliency_maps", "id")],
    )
    db["cluster_members"].create_index(["cluster_id"])


@migration
def m019_background_tests(db: sqlite_utils.Database) -> None:
    # eval background: each image's prediction on a variant of its view (only object, no object, the object on
    # another image's background), keyed by the prediction, the variant, the seed and the region used.
    db["background_tests"].create(
        {"id": str, "prediction_id": str, "image_sha256": str, "variant": str, "seed": int, "partner_sha256": str,
         "predicted_index": int, "correct": int, "probs": bytes, "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("prediction_id", "predictions", "id")],
    )


@migration
def m020_cluster_parameters(db: sqlite_utils.Database) -> None:
    # The parameters a clustering was made with (grid, neighbours, eigengap cap, seed, beta, the sample), as JSON:
    # every figure of eval clusters traceable to how it was computed.
    db["map_clusters"].add_column("parameters", str)


@migration
def m021_canary_quadrants(db: sqlite_utils.Database) -> None:
    # eval canary --judge-quadrants: the judge's scores of an image's masked view before and after the artifact (each
    # with its own map and prediction), keyed by the canary result and the judge setting.
    db["canary_quadrants"].create(
        {"id": str, "canary_id": str, "judge_model": str, "judge_model_hash": str, "setting": str,
         "original_status": str, "original_score": int, "tagged_status": str, "tagged_score": int, "errors": str,
         "run_id": str, "created_at": str},
        pk="id",
        foreign_keys=[("canary_id", "canary_tests", "id")],
    )
    db["canary_quadrants"].create_index(["canary_id"])


@migration
def m022_run_images(db: sqlite_utils.Database) -> None:
    # Which images each run read (every one its source yielded, stored before or not): `run` prints the matrix of its
    # own images, and matrix/compare/report take --run and --source. Stores made before know only the run that first
    # ingested each image (images.run_id): that much is filled in.
    db["run_images"].create({"run_id": str, "image_sha256": str}, pk=("run_id", "image_sha256"))
    db["run_images"].create_index(["image_sha256"])
    db.execute("insert or ignore into run_images (run_id, image_sha256) "
               "select run_id, sha256 from images where run_id is not null")


@migration
def m023_render_version(db: sqlite_utils.Database) -> None:
    # The version of the rendering a judgment's input was drawn with (saliency.masking.RENDER_VERSION): judgments of
    # two versions are two settings, never one matrix. Every judgment made before was drawn with version 1.
    db["judgments"].add_column("render_version", int)
    db.execute("update judgments set render_version = 1")


@migration
def m024_judge_leases(db: sqlite_utils.Database) -> None:
    # Which run is judging what now: a judgment key claimed by its owner (one audit of one process: host, pid) until
    # it is stored or the lease expires, so two runs on one store split the judge work instead of both doing it.
    db["judge_leases"].create({"judgment_id": str, "owner": str, "host": str, "pid": int, "claimed_at": str,
                               "expires_at": float}, pk="judgment_id")
    db["judge_leases"].create_index(["owner"])


@migration
def m025_keys_hold_what_shapes_the_input(db: sqlite_utils.Database) -> None:
    # A judgment's key now holds exactly what shapes its judge's input (Audit.judge_input): no alpha or beta for a
    # heatmap overlay shown to a judge that does not read the maps, no prompt for a judge that reads none (the
    # recognizer). Judgments stored under the keys before are keyed anew, so an upgraded store does not judge them
    # again; so are people's ratings of heatmap views (a heatmap view holds no alpha or beta: queries.view_id) and
    # the calibrations of the settings whose judgments moved. A judgment whose old key cannot be made again from what
    # its row holds (one keyed before image kinds were) stays as it was, and so does each but one of rows that now
    # share a key (a map judged at two alphas in heatmap mode: the newest ok one takes the key, the others keep
    # theirs, and so a setting of their own, with its calibration).
    import json

    from . import content_key

    # What each judge backend of this release reads (JudgeSpec.reads_maps, reads_prompt), frozen with the migration:
    # a backend not named here is left as it is.
    reads = {"transformers": (False, True), "vllm": (False, True), "openai": (False, True),
             "recognizer": (True, False)}

    def shown(backend: str, image_mode: str, alpha, beta, prompt_hash) -> tuple:
        reads_maps, reads_prompt = reads[backend]
        masked = image_mode != "heatmap" or reads_maps
        return (alpha if masked else None, beta if masked else None, prompt_hash if reads_prompt else None)

    def judgment_key(row: dict, alpha, beta, prompt_hash) -> str:  # Audit.judgment_keys at rendering version 1
        return content_key("judgment", row["saliency_id"], alpha, beta, row["image_mode"], row["judge_model_hash"],
                           prompt_hash, json.loads(row["decoding"]), row["judge_image_size"], row["image_kind"])

    columns = ("model", "model_hash", "cam", "target_layer", "judge_model", "judge_model_hash", "image_mode", "alpha",
               "beta", "judge_image_size", "prompt_hash", "decoding")  # queries.GROUP_COLUMNS but render_version

    def setting_key(values: dict) -> str:  # queries.setting_key at rendering version 1
        return content_key("setting", *[values[c] for c in columns])

    claimants: dict[str, list[dict]] = {}
    for row in db.query("select j.id, j.saliency_id, j.alpha, j.beta, j.image_mode, j.judge_backend, "
                        "j.judge_model_hash, j.prompt_hash, j.decoding, j.judge_image_size, j.image_kind, j.status, "
                        "j.created_at, j.judge_model, p.model, p.model_hash, s.method as cam, s.target_layer "
                        "from judgments j join predictions p on p.id = j.prediction_id join saliency_maps s on "
                        "s.id = j.saliency_id where j.render_version = 1 and j.decoding is not null and "
                        "((j.image_mode = 'heatmap' and (j.alpha is not null or j.beta is not null)) or "
                        "j.prompt_hash is not null)"):
        row = dict(row)
        if row["judge_backend"] not in reads:
            continue
        now_shown = shown(row["judge_backend"], row["image_mode"], row["alpha"], row["beta"], row["prompt_hash"])
        if now_shown == (row["alpha"], row["beta"], row["prompt_hash"]):
            continue  # its key holds nothing it should not
        if judgment_key(row, row["alpha"], row["beta"], row["prompt_hash"]) != row["id"]:
            continue  # keyed some other way, earlier: left as it is
        row["shown"] = now_shown
        claimants.setdefault(judgment_key(row, *now_shown), []).append(row)
    # each old setting's judgments that moved, and what its setting becomes: its calibration follows them
    moved: dict[str, dict] = {}
    for key, rows in claimants.items():
        if db.execute("select 1 from judgments where id = ?", [key]).fetchone():
            continue  # judged under the new key already (this store was used by a newer localjudge before)
        first = max(rows, key=lambda r: (r["status"] == "ok", r["created_at"] or "", r["id"]))
        alpha, beta, prompt_hash = first["shown"]
        db.execute("update judgments set id = ?, alpha = ?, beta = ?, prompt_hash = ? where id = ?",
                   [key, alpha, beta, prompt_hash, first["id"]])
        entry = moved.setdefault(setting_key(first), {"rows": 0, "shown": set()})
        entry["rows"] += 1
        entry["shown"].add(first["shown"])
    db.execute("delete from judge_leases")  # claims on the old keys (none outlives a run)

    rated: dict[str, list[dict]] = {}
    for row in db.query("select id, saliency_id, rater, updated_at from ratings "
                        "where image_mode = 'heatmap' and (alpha is not null or beta is not null)"):
        view = content_key("view", row["saliency_id"], None, None, "heatmap")
        rated.setdefault(content_key("rating", view, row["rater"]), []).append({**dict(row), "view": view})
    for key, rows in rated.items():
        if not db.execute("select 1 from ratings where id = ?", [key]).fetchone():
            newest = max(rows, key=lambda r: (r["updated_at"] or "", r["id"]))
            db.execute("update ratings set id = ?, view_id = ?, alpha = null, beta = null where id = ?",
                       [key, newest["view"], newest["id"]])

    # A calibration follows its setting's judgments where they moved (to one new setting); where two calibrations
    # would take one new key, the one whose setting moved the most judgments (the newest on a tie) takes it, and none
    # takes a key another calibration holds already.
    taken = {r["setting_key"] for r in db.query("select setting_key from calibrations")}
    candidates: dict[str, list[tuple]] = {}
    for rowid, row in enumerate(list(db.query("select id, setting from calibrations order by rowid"))):
        setting = json.loads(row["setting"])
        if not all(c in setting for c in columns):
            continue
        entry = moved.get(setting_key(setting))
        if entry is None or len(entry["shown"]) != 1:
            continue  # none of its judgments moved (or they went two ways): it stays as it was
        (alpha, beta, prompt_hash), = entry["shown"]
        became = {**setting, "alpha": alpha, "beta": beta, "prompt_hash": prompt_hash}
        candidates.setdefault(setting_key(became), []).append((entry["rows"], rowid, row["id"], became))
    for key, found in candidates.items():
        if key in taken:
            continue
        _, _, calibration, became = max(found, key=lambda c: (c[0], c[1]))
        db["calibrations"].update(calibration, {"setting": json.dumps(became, sort_keys=True), "setting_key": key})


# The tables of audit content, in an order that satisfies their foreign keys, each with its primary key. Besides
# them a store holds file_hashes (this machine's cache of its own files' hashes) and _migrations (its own schema).
TABLES = (("runs", ("id",)), ("images", ("sha256",)), ("read_errors", ("id",)), ("predictions", ("id",)),
          ("saliency_maps", ("id",)), ("prompts", ("hash",)), ("judgments", ("id",)),
          ("ground_truth", ("image_sha256", "label")), ("region_scores", ("id",)), ("faithfulness", ("id",)),
          ("ratings", ("id",)), ("calibrations", ("id",)), ("sanity_checks", ("id",)),
          ("canary_judgments", ("id",)), ("judge_checks", ("id",)), ("artifact_scores", ("id",)),
          ("canary_tests", ("id",)), ("map_clusters", ("id",)), ("cluster_members", ("id",)),
          ("background_tests", ("id",)), ("canary_quadrants", ("id",)), ("run_images", ("run_id", "image_sha256")))
# What a Ray worker's scratch store keeps between batches: its run and the prompts its judge stored once.
SCRATCH_KEPT = ("runs", "prompts")
