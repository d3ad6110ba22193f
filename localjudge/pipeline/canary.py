"""`eval canary`: the planted-shortcut canary (analysis.canary) on a seeded sample of the audit's stored predictions,
with its vision model and CAM method. Each image's result is stored (`canary_tests`, keyed by the prediction, the
artifact, its size, the seed, the method and the target tensor): a second run with the same settings computes
nothing again."""

from __future__ import annotations

import json

import numpy as np

from ..analysis.artifacts import mass_share
from ..analysis.canary import artifact_region, canary_summary, paste, place
from ..store import content_key, now, pack_array, unpack_array
from ..vision.preprocess import model_view, view_tensor

CANARY_SAMPLE = 50
CANARY_SEED = 0


def image_rng(seed: int, image_sha256: str) -> np.random.Generator:
    """Each image's own draw of the artifact's place: the same whatever else is sampled with it."""
    return np.random.default_rng([seed, int(image_sha256[:12], 16)])


def run_canary(audit, artifact: str, sample: int = CANARY_SAMPLE, size: float = 0.15, seed: int = CANARY_SEED) -> dict:
    from ..saliency.engine import CamEngine
    from . import Stage

    store, config, card = audit.store, audit.config, audit.card
    predictions = store.predictions(audit.stored_predictions())
    if not predictions:
        raise ValueError(f"no stored predictions of {card.name} in {store.path}: run `localjudge predict` first")
    # each image's own seeded draw ranks it: the sample of a store that gains images keeps the images it had
    # (those still ranked among the first `sample`)
    ranked = sorted(predictions, key=lambda p: (image_rng(seed, p["image_sha256"]).random(), p["id"]))
    chosen = sorted(p["id"] for p in ranked[:sample])
    keys = {pid: content_key("canary", pid, artifact, size, seed, config.cam, card.target_tensor) for pid in chosen}
    existing = store.existing_ids("canary_tests", keys.values())
    stage = Stage(ids=list(keys.values()))
    missing = [p for p in store.predictions([pid for pid in chosen if keys[pid] not in existing])]
    if missing:
        model = audit.vision_model()
        stage.model_loaded = True
        with CamEngine(config.cam, model) as cam:
            for start in range(0, len(missing), config.batch_size):
                pictures, batch = audit.load_images(missing[start:start + config.batch_size], stage)
                if not batch:
                    continue
                views, tagged, boxes, regions = [], [], [], []
                for picture, p in zip(pictures, batch):
                    view = model_view(picture, json.loads(p["preprocessing"]))
                    side = view.size[0]
                    box = place(artifact, side, size, image_rng(seed, p["image_sha256"]))
                    views.append(view)
                    tagged.append(paste(view, artifact, box, size))
                    boxes.append(box)
                    regions.append(artifact_region(artifact, box, side, size))
                original_scores, original_maps, _ = cam.predict_and_compute(view_tensor(views, card))
                tagged_scores, tagged_maps, _ = cam.predict_and_compute(view_tensor(tagged, card))
                rows = []
                for n, p in enumerate(batch):
                    region = regions[n]
                    if original_maps[n].shape != region.shape:  # a map at another size than the view: scaled
                        from PIL import Image

                        region = np.asarray(Image.fromarray(region).resize(original_maps[n].shape[::-1],
                                                                           Image.NEAREST))
                    rows.append({
                        "id": keys[p["id"]], "prediction_id": p["id"], "image_sha256": p["image_sha256"],
                        "artifact": artifact, "size": size, "seed": seed, "box": json.dumps(boxes[n]),
                        "cam": config.cam, "target_layer": card.target_tensor,
                        "original_index": int(np.argmax(original_scores[n])),
                        "tagged_index": int(np.argmax(tagged_scores[n])),
                        "original_probs": pack_array(np.asarray(original_scores[n], dtype=np.float32), np.float32),
                        "tagged_probs": pack_array(np.asarray(tagged_scores[n], dtype=np.float32), np.float32),
                        "mass_tagged": mass_share(tagged_maps[n], region),
                        "mass_original": mass_share(original_maps[n], region),
                        "area_fraction": float(region.mean()), "run_id": audit.run_id, "created_at": now()})
                store.insert_rows("canary_tests", rows)
                stage.computed += len(rows)
    return {"stage": stage, **canary_report(store, stage.ids, list(card.label_list().names))}


def canary_report(store, ids: list[str], names: list[str], top: int = 10) -> dict:
    """The canary's figures over the stored results `ids` (analysis.canary.canary_summary), per class (the original
    prediction's) and the images whose tagged maps put most mass on the artifact."""
    rows = list(store.query("select c.*, i.path from canary_tests c join images i on i.sha256 = c.image_sha256 "
                            "where c.id in (select value from json_each(?)) order by c.id", [json.dumps(ids)]))
    if not rows:
        return {"summary": None, "by_class": [], "top_images": []}
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
                        "flip_rate": float(np.mean([rows[m]["tagged_index"] != index for m in members])),
                        "probability_change": float(np.mean(tagged[members, index] - original[members, index])),
                        "mass_on_artifact": float(np.nanmean(column("mass_tagged")[members]))
                        if not np.isnan(column("mass_tagged")[members]).all() else None})
    classes.sort(key=lambda c: (-c["images"], c["class"]))
    ranked = sorted(range(len(rows)), key=lambda n: (-(rows[n]["mass_tagged"] or 0.0), rows[n]["path"]))
    return {"summary": summary, "by_class": classes,
            "top_images": [{"path": rows[n]["path"], "mass_on_artifact": rows[n]["mass_tagged"],
                            "original": names[rows[n]["original_index"]], "tagged": names[rows[n]["tagged_index"]],
                            "box": json.loads(rows[n]["box"])} for n in ranked[:top]]}
