"""`eval canary`: the planted-shortcut canary (analysis.canary) on a seeded sample of the audit's stored predictions,
with its vision model and CAM method. Each image's result is stored (`canary_tests`, keyed by the prediction, the
artifact, its size, the seed, the method and the target tensor): a second run with the same settings computes
nothing again."""

from __future__ import annotations

import json

import numpy as np

from ..analysis.artifacts import mass_share
from ..analysis.canary import artifact_region, paste, place
from ..config import CANARY_DEFAULTS
from ..queries import canary_report
from ..store import content_key, now, pack_array
from ..vision.preprocess import model_view, view_tensor

CANARY_SAMPLE = CANARY_DEFAULTS["images"]
CANARY_SEED = CANARY_DEFAULTS["seed"]


def image_rng(seed: int, image_sha256: str, stream: int = 0) -> np.random.Generator:
    """Each image's own seeded generator, the same whatever else is sampled with it. Stream 0 ranks images for a
    sample; another stream draws what is done to a sampled image (the artifact's place: stream PLACEMENT). One stream
    for both would tie them: the images ranked first by their first draw would all get their tag near the top."""
    return np.random.default_rng([seed, int(image_sha256[:12], 16), stream])


PLACEMENT = 1


def run_canary(audit, artifact: str, sample: int = CANARY_SAMPLE, size: float = CANARY_DEFAULTS["size"],
               seed: int = CANARY_SEED, judge: bool = False) -> dict:
    """The canary on a seeded sample of stored predictions; with `judge`, also the audit's judge on each image's
    view before and after the artifact (its quadrant change)."""
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
    # "placement 2": results of the first version (whose places leaned to the top of the view) are not reused
    keys = {pid: content_key("canary", pid, artifact, size, seed, config.cam, card.target_tensor, "placement 2")
            for pid in chosen}
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
                    box = place(artifact, side, size, image_rng(seed, p["image_sha256"], PLACEMENT))
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
    names = list(card.label_list().names)
    quadrant_setting = judge_quadrants(audit, keys, artifact, size, seed, stage) if judge else None
    return {"stage": stage, **canary_report(store, stage.ids, names, quadrant_setting=quadrant_setting,
                                            threshold=config.threshold)}


def quadrant_key_setting(audit) -> str:
    """The judge setting a canary's quadrant scores are kept under: the judge, its decoding and prompt, the image
    mode, mask and image size (what its answers depend on)."""
    identity = audit.judge_identity()
    template, prompt_digest, decoding = audit.judgment_key_parts()
    config = audit.config
    return json.dumps({"judge_model_hash": identity.hash, "decoding": decoding, "prompt_hash": prompt_digest,
                       "image_mode": config.image_mode, "alpha": config.alpha, "beta": config.beta,
                       "judge_image_size": config.judge_image_size}, sort_keys=True)


def judge_quadrants(audit, keys: dict[str, str], artifact: str, size: float, seed: int, stage) -> str:
    """The judge's score of each sampled image's judge view, masked by its map (or overlaid, in heatmap mode), and of
    the same view with the artifact, masked by the tagged image's own map, each asked about its own predicted class;
    stored in `canary_quadrants`. The maps are computed again here (the canary stores their mass, not the maps).
    Returns the setting the scores are keyed by."""
    from ..judge.prompts import render
    from ..saliency.engine import CamEngine
    from ..saliency.masking import judge_image, soft_mask, upsample
    from .judge_check import _ask

    store, config, card = audit.store, audit.config, audit.card
    setting = quadrant_key_setting(audit)
    quadrant_ids = {pid: content_key("canary-quadrant", canary_id, setting) for pid, canary_id in keys.items()}
    existing = store.existing_ids("canary_quadrants", quadrant_ids.values())
    wanted = [pid for pid in sorted(keys) if quadrant_ids[pid] not in existing]
    if not wanted:
        return setting
    identity = audit.judge_identity()
    template = audit.prompt()[0]
    labels = card.label_list()
    names = list(labels.names)
    tests = {r["prediction_id"]: r for r in store.query(
        "select * from canary_tests where id in (select value from json_each(?))",
        [json.dumps([keys[pid] for pid in wanted])])}
    kinds = {image["sha256"]: audit.image_kind(image.get("kind")) for image in store.images(
        {tests[pid]["image_sha256"] for pid in wanted if pid in tests})}
    model = audit.vision_model()
    stage.model_loaded = True
    with CamEngine(config.cam, model) as cam:
        for start in range(0, len(wanted), config.batch_size):
            pictures, batch = audit.load_images(store.predictions(wanted[start:start + config.batch_size]), stage)
            if not batch:
                continue
            views, tagged, asks = [], [], []
            for picture, p in zip(pictures, batch):
                geometry = json.loads(p["preprocessing"])
                view = model_view(picture, geometry)
                box = json.loads(tests[p["id"]]["box"])
                views.append(view)
                tagged.append(paste(view, artifact, box, size))
            _, original_maps, _ = cam.predict_and_compute(view_tensor(views, card))
            tagged_scores, tagged_maps, _ = cam.predict_and_compute(view_tensor(tagged, card))
            for n, (picture, p) in enumerate(zip(pictures, batch)):
                test = tests[p["id"]]
                side = config.judge_image_size
                judge_view = model_view(picture, json.loads(p["preprocessing"]), side)
                scale = side / views[n].size[0]  # the artifact at the same place and size in the judge's view
                box = tuple(round(v * scale) for v in json.loads(test["box"]))
                tagged_view = paste(judge_view, artifact, box, size)
                for variant, shown, saliency, index in (
                        ("original", judge_view, original_maps[n], test["original_index"]),
                        ("tagged", tagged_view, tagged_maps[n], test["tagged_index"])):
                    label = names[index] if index < len(names) else str(index)
                    asks.append({"kind": variant, "image": judge_image(shown, saliency, config.image_mode,
                                                                        config.alpha, config.beta),
                                 "label": label, "index": index, "view": shown,
                                 "mask": soft_mask(upsample(saliency, shown.size), config.alpha, config.beta),
                                 "prompt": render(template, label, kinds[p["image_sha256"]],
                                                  labels.description(index))})
            answers = _ask(audit, asks)
            rows = []
            for n, p in enumerate(batch):
                before, after = answers[2 * n], answers[2 * n + 1]
                rows.append({"id": quadrant_ids[p["id"]], "canary_id": keys[p["id"]],
                             "judge_model": identity.name, "judge_model_hash": identity.hash, "setting": setting,
                             "original_status": before["status"], "original_score": before["score"],
                             "tagged_status": after["status"], "tagged_score": after["score"],
                             "errors": json.dumps([a["error"] for a in (before, after) if a["error"]]),
                             "run_id": audit.run_id, "created_at": now()})
            store.insert_rows("canary_quadrants", rows)
    return setting
