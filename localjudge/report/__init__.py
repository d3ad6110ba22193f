"""The offline HTML report: one folder with index.html, its script and style, the samples as data.js and one
thumbnail file per picture. Nothing in it is fetched from anywhere else, and nothing in it points outside the folder.

Every text that came from a model, a file name or a person reaches the page as JSON data and is put into the page
with textContent or setAttribute, never parsed as HTML; the page's Content-Security-Policy allows only its own
script and style, and no connection at all."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from ..config import DEFAULTS
from ..data import ChangedImage, jpeg_bytes, load_verified
from ..errors import UserError
from ..queries import (card_of, judge_cards, label_names_of_runs, localisation_by_setting, map_failures,
                       sanity_checks)
from ..queries import samples as read_samples
from ..store import Store, content_key, unpack_array
from ..vision import weights_note
from ..vision.preprocess import model_view
from .findings import exemplar_rows, findings
from .thumbnails import THUMBNAIL_KINDS, thumbnail

ASSETS = ("index.html", "report.js", "report.css")
THUMBNAIL_SIDE = 160
THUMBNAIL_DIR = "thumbs"
# The files a build wrote into its folder: the next build into it deletes only those (never a file of the user's),
# and a non-empty folder without it is refused (it may be anything).
MANIFEST = ".localjudge-report.json"
# what a build writes: its assets, its data and thumbnails named by content (thumbnail_name); a manifest naming
# anything else (another path, a parent folder) is not followed
BUILT_FILE = re.compile(r"^(data\.js|index\.html|report\.js|report\.css|thumbs/[0-9a-f]{24}\.jpg)$")


class ReportError(UserError):
    pass


def claimed_files(out: Path) -> set[str]:
    """The files an earlier build wrote into `out` (paths relative to it: only names a build writes); a non-empty
    folder that no build wrote is refused before anything is written."""
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
            if not isinstance(files, list):
                raise TypeError("its files are not a list")
        except (ValueError, KeyError, TypeError) as error:
            raise ReportError(f"{manifest}: unreadable ({error}); remove it, or give another folder") from error
        return {f for f in files if isinstance(f, str) and BUILT_FILE.match(f)}
    if out.is_dir() and any(out.iterdir()):
        raise ReportError(f"{out}: not empty, and no report was written there ({MANIFEST} is missing); give a new or "
                          "empty folder (or delete this one), so that no file of yours is overwritten or deleted")
    return set()


def write_manifest(out: Path, files: set[str]) -> None:
    (out / MANIFEST).write_text(json.dumps({"files": sorted(files)}, indent=1) + "\n")


# What each sample carries into the page (in this order; data.js holds rows of values, not objects, to stay small).
FIELDS = ("id", "quadrant", "status", "score", "threshold", "evaluation", "justification", "error", "model", "cam",
          "judge", "image_mode", "alpha", "beta", "setting", "predicted", "label", "confidence", "correct", "path",
          "original", "heatmap", "masked", "image_error", "human_mean", "ratings")


def thumbnail_name(kind: str, row: dict, side: int) -> str:
    """A thumbnail is named by what it shows, so samples that show the same picture share one file, and a report
    built again into the same folder renders only what is new."""
    parts = [kind, row["image_sha256"], row["preprocessing"], side]
    if kind != "original":
        parts.append(row["saliency_id"])
    if kind == "masked":
        parts += [float(a) for a in mask_parameters(row)]
    return f"{THUMBNAIL_DIR}/{content_key(*parts)[:24]}.jpg"


def mask_parameters(row: dict) -> tuple[float, float]:
    """alpha and beta of a sample's masked thumbnail: its judgment's, or the defaults where the judge saw a heatmap
    (which reads neither: its judgment holds none)."""
    if row["alpha"] is None:
        return DEFAULTS.alpha, DEFAULTS.beta
    return row["alpha"], row["beta"]


def setting_name(row: dict) -> str:
    """What a judge was shown and asked, in a few words: judgments of different settings are not comparable."""
    shaping = [] if row["alpha"] is None else [f"α {row['alpha']:g}, β {row['beta']:g}"]
    shaping.append("no prompt" if row["prompt_hash"] is None else f"prompt {row['prompt_hash'][:8]}")
    return f"{row['image_mode']}, {', '.join(shaping)}, {row['judge_image_size']} px"


def _label_text(row: dict, names: dict[str | None, tuple[str, ...] | None]) -> str:
    """The image's label as class names where the label list its prediction was made with knows them, else as
    given."""
    if row["label"] is None:
        return ""
    labels = names.get(row["predict_run_id"])
    indices = json.loads(row["label_indices"]) if row["label_indices"] else None
    if labels and indices:
        return "; ".join(labels[i] for i in indices if 0 <= i < len(labels))
    return row["label"]


def shown_model(row: dict) -> str:
    """A model's name as the page shows it: with "random weights" where its weights were a seeded random network."""
    note = weights_note(row["model_hash"])
    return f"{row['model']} ({note})" if note else row["model"]


def _render_image(out: Path, rows: list[dict], maps: dict[str, dict], side: int) -> str | None:
    """Every missing thumbnail of one image's samples; the reason the image cannot be shown, if it cannot."""
    wanted = {}
    for row in rows:
        for kind in THUMBNAIL_KINDS:
            name = row[kind]
            if not (out / name).is_file():
                wanted[name] = (kind, row)
    if not wanted:
        return None
    pictures: dict[str, object] = {}

    def picture_for(row: dict):
        """The photo as this row's prediction read it (its DICOM window, if any)."""
        window = json.loads(row["preprocessing"]).get("dicom_window")
        key = json.dumps(window)
        if key not in pictures:
            pictures[key] = load_verified(Path(row.get("file") or row["path"]), row["image_sha256"], window)
        return pictures[key]

    try:
        for _, row in wanted.values():
            picture_for(row)
    except ChangedImage as error:
        first = rows[0]
        return str(error).replace(first.get("file") or first["path"], first["path"])
    views = {}
    for name, (kind, row) in wanted.items():
        if row["preprocessing"] not in views:
            views[row["preprocessing"]] = model_view(picture_for(row), json.loads(row["preprocessing"]), side)
        stored = maps[row["saliency_id"]]
        saliency = unpack_array(stored["map"], (stored["height"], stored["width"]))
        image = thumbnail(kind, views[row["preprocessing"]], saliency, *mask_parameters(row))
        temporary = out / f"{name}.part"
        temporary.write_bytes(jpeg_bytes(image))
        temporary.replace(out / name)  # a report cut short never leaves half a file under a final name
    return None


def _localisation_summary(found: dict) -> dict:
    """A setting's localisation against its regions, maps beside each baseline, for the page."""
    metrics = {"pointing game": lambda t: t["pointing_game"]["mean"],
               "mass share": lambda t: t["energy_pointing_game"]["mean"],
               "rank accuracy": lambda t: t["rank_accuracy"]["mean"],
               "PxAP": lambda t: (t.get("pxap") or {}).get("mean"),
               "best IoU": lambda t: t.get("at_best_threshold", {}).get("iou", {}).get("mean")}
    columns = ("maps", "centre point", "centred gaussian", "uniform")
    return {"setting": f"{found['model']} {found['cam']} at {found['target_layer']}, beta {found['beta']:g}",
            "images": found["maps"]["images"], "columns": list(columns),
            "metrics": [[name, *[pick(found[c]) for c in columns]] for name, pick in metrics.items()]}


def _script_json(value) -> str:
    """JSON that is also safe inside a script: no character of it can end the script or start markup."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def build_report(store: Store, out: Path, threshold: int, thresholds: dict[str, int] | None = None,
                 side: int = THUMBNAIL_SIDE, workers: int = 4, locations: dict[str, str] | None = None,
                 **filters) -> dict:
    """Write the report of every judgment (matching `filters`) into `out`; returns what was written. `locations`
    maps redacted paths to the files (read for thumbnails only; the report shows the redacted path)."""
    started = time.perf_counter()
    out = Path(out)
    earlier = claimed_files(out)
    rows = read_samples(store, threshold, thresholds, **filters)
    found = findings(store, threshold, thresholds, filters)
    exemplars = exemplar_rows(store, found)  # the findings' cluster exemplars: thumbnails as the samples' are
    for row in rows + exemplars:
        row["file"] = (locations or {}).get(row["path"])
        for kind in THUMBNAIL_KINDS:
            row[kind] = thumbnail_name(kind, row, side)
    named = {row[kind] for row in rows + exemplars for kind in THUMBNAIL_KINDS}
    # listed before anything is written, so a build stopped half-way leaves a folder the next build may use and
    # clean; rewritten at the end with exactly what this build wrote
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, earlier | {"data.js", *ASSETS} | named)
    (out / THUMBNAIL_DIR).mkdir(exist_ok=True)

    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image_sha256"], []).append(row)
    pictures: dict[str, list[dict]] = {sha: list(group) for sha, group in by_image.items()}
    for row in exemplars:
        pictures.setdefault(row["image_sha256"], []).append(row)
    image_errors: dict[str, str] = {}
    local = threading.local()  # SQLite connections belong to their thread: each worker reads through its own

    def render(sha: str) -> None:
        if not hasattr(local, "store"):
            local.store = Store(store.path, create=False)
        group = pictures[sha]
        maps = {m["id"]: m for m in local.store.saliency_maps({r["saliency_id"] for r in group})}
        reason = _render_image(out, group, maps, side)
        if reason:
            image_errors[sha] = reason

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(render, pictures))

    names = label_names_of_runs(store, {row["predict_run_id"] for row in rows})
    random = sorted({row["model"] for row in rows if weights_note(row["model_hash"])})
    data_rows = []
    for row in rows:
        reason = image_errors.get(row["image_sha256"])
        data_rows.append([
            row["judgment_id"], row["quadrant"], row["status"], row["score"], row["threshold"], row["evaluation"],
            row["justification"], row["error"], shown_model(row), row["cam"], row["judge_model"], row["image_mode"],
            row["alpha"], row["beta"], setting_name(row), row["target_label"], _label_text(row, names), row["confidence"],
            row["correct"], row["path"],
            None if reason else row["original"], None if reason else row["heatmap"], None if reason else row["masked"],
            reason, row["human_mean"], len(row["ratings"]),
        ])
    meta = {"generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "database": store.path.name, "threshold": threshold, "calibrated": bool(thresholds),
            "samples": len(data_rows), "images": len(by_image), "thumbnail_side": side,
            "random_weights": random}
    cards = judge_cards(store)
    judges = {}
    for row in rows:  # every judge setting in the report, with its card's verdict
        card = card_of(cards, row["judge_model_hash"], row["decoding"])
        judges[(row["judge_model"], row["judge_model_hash"], row["decoding"])] = {
            "judge_model": row["judge_model"], "verdict": card["verdict"] if card else "not checked",
            "reasons": card["reasons"] if card else []}
    sample_errors = {sha: reason for sha, reason in image_errors.items() if sha in by_image}
    shown = {row["saliency_id"]: row for row in exemplars}
    for candidate in found["clusters"]["candidates"]:
        candidate["exemplars"] = [
            {"path": shown[sid]["path"], "error": image_errors.get(shown[sid]["image_sha256"]),
             **{kind: None if shown[sid]["image_sha256"] in image_errors else shown[sid][kind]
                for kind in THUMBNAIL_KINDS}}
            for sid in candidate["exemplars"] if sid in shown]
    failures = map_failures(store, filters.get("model"), filters.get("cam"))
    checks = sanity_checks(store, filters.get("model"), filters.get("cam"))
    localised = [_localisation_summary(found) for found in
                 localisation_by_setting(store, DEFAULTS.beta, filters.get("model"), filters.get("cam"))]
    (out / "data.js").write_text(
        "window.LOCALJUDGE_REPORT = " + _script_json({"meta": meta, "fields": FIELDS, "rows": data_rows,
                                                      "map_failures": failures, "sanity": checks,
                                                      "localisation": localised, "findings": found,
                                                      "judges": list(judges.values())}) + ";\n",
        encoding="utf-8")
    assets = resources.files(__package__) / "assets"
    for name in ASSETS:
        with resources.as_file(assets / name) as source:
            shutil.copyfile(source, out / name)
    # Files an earlier build wrote that this one does not show (other filters, samples since deleted) go; no other
    # (and nothing through a link).
    written = {"data.js", *ASSETS, *(name for name in named if (out / name).is_file())}
    for stale in sorted(earlier - written):
        if not (out / stale).is_symlink() and not (out / THUMBNAIL_DIR).is_symlink():
            (out / stale).unlink(missing_ok=True)
    write_manifest(out, written)
    thumbnails = sorted(out / name for name in written if name.startswith(f"{THUMBNAIL_DIR}/"))
    return {"out": str(out), "samples": len(data_rows), "images": len(by_image),
            "images_unavailable": len(sample_errors), "unavailable": sorted(sample_errors.values()),
            "map_failures": len(failures), "localisation_settings": len(localised),
            "judge_verdicts": sorted({(j["judge_model"], j["verdict"]) for j in judges.values()}),
            "sanity_flagged": sorted(c["method"] for c in checks if c["flagged"]),
            "findings": {name: part["ran"] for name, part in found.items()},
            "thumbnails": len(thumbnails), "thumbnail_bytes": sum(p.stat().st_size for p in thumbnails),
            "data_bytes": (out / "data.js").stat().st_size,
            "total_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
            "seconds": time.perf_counter() - started}
