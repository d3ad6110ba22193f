"""`eval background`: how much the model's decisions rest on the background, as the ImageNet-9 backgrounds test (Xiao
et al., 2021) measures it, on the audit's own images with ground-truth regions. Variants of each image's model view,
made in memory in the normalised input space (0 there is the normalisation mean):
- original;
- only object: the background replaced by the mean;
- no object: the object replaced by the mean;
- mixed same: the object on the background of another image of the same labelled class (that image's own object
  replaced by the mean), seeded;
- mixed rand: the same with an image of another class.
Each variant's prediction is right where its class is among the image's labels. Per class and overall: each
variant's accuracy with its interval, and the background gap, mixed same minus mixed rand (IN-9's BG-Gap), with its
paired interval over the images that have both. Results are stored (`background_tests`)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..queries import BACKGROUND_VARIANTS as VARIANTS, background_table
from ..store import content_key, now, pack_array, unpack_array



def pair_rank(seed: int, image: str, candidate: str) -> int:
    """A seeded rank of `candidate` as the partner of `image`, from their hashes alone."""
    return int(hashlib.sha256(f"{seed}:{image}:{candidate}".encode()).hexdigest()[:16], 16)


def choose_partners(shas: list[str], labels: list, seed: int) -> dict[int, dict[str, int | None]]:
    """Each image's mixed-same partner (another image of its label) and mixed-rand partner (an image of another
    label): the candidate that ranks first by a seeded hash of the pair. An image added to the store takes over
    another image's partner only where it ranks first for it (a draw by position in a growing list would move
    many); a partner (and its region) is part of the result's key."""
    partners: dict[int, dict[str, int | None]] = {}
    for n, sha in enumerate(shas):
        same = [m for m in range(len(shas)) if m != n and labels[m] == labels[n]]
        other = [m for m in range(len(shas)) if labels[m] != labels[n]]

        def first(candidates: list[int]) -> int | None:
            return min(candidates, key=lambda m: pair_rank(seed, sha, shas[m]), default=None)

        partners[n] = {"mixed_same": first(same), "mixed_rand": first(other)}
    return partners


def run_background(audit, seed: int = 0) -> dict:
    from ..ground_truth import region_of_map
    from . import Stage

    store, config, card = audit.store, audit.config, audit.card
    predictions = [p for p in store.predictions(audit.stored_predictions()) if p["label_indices"]]
    regions: dict[str, dict[str, dict]] = {}
    for t in store.ground_truth({p["image_sha256"] for p in predictions}):
        regions.setdefault(t["image_sha256"], {})[t["label"]] = t
    chosen = []
    for p in predictions:
        labels = json.loads(p["label_indices"])
        truth = region_of_map(regions.get(p["image_sha256"], {}),  # a region named by its class, else the object's
                              {"target_label": p["predicted_label"], "finding": None,
                               "target_index": p["predicted_index"]}, labels)
        if truth is not None and truth["area_fraction"] > 0:
            chosen.append((p, truth, labels))
    stage = Stage()
    if len(chosen) < 2:
        raise ValueError("eval background needs two or more labelled images with ground-truth regions and stored "
                         "predictions of this model: give regions with `eval regions --masks/--boxes/--mask-column`")
    chosen.sort(key=lambda c: c[0]["image_sha256"])
    label_of = [c[2][0] for c in chosen]
    partners = choose_partners([c[0]["image_sha256"] for c in chosen], label_of, seed)

    def key(n: int, variant: str) -> str:
        partner = partners[n].get(variant)
        return content_key("background", chosen[n][0]["id"], variant, seed, chosen[n][1]["mask_sha256"],
                           None if partner is None else [chosen[partner][0]["image_sha256"],
                                                         chosen[partner][1]["mask_sha256"]])

    wanted = [(n, variant) for n in range(len(chosen)) for variant in VARIANTS
              if variant in ("original", "only_object", "no_object") or partners[n][variant] is not None]
    keys = {item: key(*item) for item in wanted}
    stage.ids = list(keys.values())
    existing = store.existing_ids("background_tests", keys.values())
    missing = [item for item in wanted if keys[item] not in existing]
    size = config.batch_size
    for start in range(0, len(missing), size):  # a batch at a time: views are made for it and let go
        batch = missing[start:start + size]
        needed = sorted({n for n, _ in batch} | {partners[n][v] for n, v in batch if v.startswith("mixed")})
        views = _views(audit, [chosen[m] for m in needed], stage)
        made, done = [], []
        for n, variant in batch:
            if chosen[n][0]["id"] not in views:
                continue
            x, m = views[chosen[n][0]["id"]]
            if variant == "original":
                made.append(x)
            elif variant == "only_object":
                made.append(x * m)
            elif variant == "no_object":
                made.append(x * (1 - m))
            else:
                partner = chosen[partners[n][variant]][0]["id"]
                if partner not in views:
                    continue
                other, other_mask = views[partner]
                made.append(x * m + other * (1 - other_mask) * (1 - m))  # its own object blanked to the mean
            done.append((n, variant))
        if not made:
            continue
        import torch

        model = audit.vision_model()
        stage.model_loaded = True
        scores = model.predict(torch.from_numpy(np.stack(made).astype(np.float32)))
        rows = []
        for (n, variant), probs in zip(done, scores):
            p, _, labels = chosen[n]
            partner = partners[n].get(variant)
            predicted = int(np.argmax(probs))
            rows.append({"id": keys[(n, variant)], "prediction_id": p["id"], "image_sha256": p["image_sha256"],
                         "variant": variant, "seed": seed,
                         "partner_sha256": None if partner is None else chosen[partner][0]["image_sha256"],
                         "predicted_index": predicted, "correct": int(predicted in labels),
                         "probs": pack_array(np.asarray(probs, dtype=np.float32), np.float32),
                         "run_id": audit.run_id, "created_at": now()})
        store.insert_rows("background_tests", rows)
        stage.computed += len(rows)
    names = list(card.label_list().names)
    return {"stage": stage, **background_table(store, stage.ids, names)}


def _views(audit, items: list[tuple], stage) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each readable prediction's view as a normalised input (C, H, W) and its region in the view (1, H, W)."""
    from ..vision.preprocess import mask_view, model_view, view_tensor

    pictures, kept = audit.load_images([item[0] for item in items], stage)
    truths = {item[0]["id"]: item[1] for item in items}
    found = {}
    for picture, p in zip(pictures, kept):
        geometry = json.loads(p["preprocessing"])
        view = model_view(picture, geometry)
        truth = truths[p["id"]]
        region = unpack_array(truth["mask"], (truth["height"], truth["width"]), dtype=np.uint8) > 0.5
        found[p["id"]] = (view_tensor([view], audit.card)[0].numpy(),
                          np.asarray(mask_view(region, geometry, view.size[0]), dtype=np.float32)[None])
    return found
