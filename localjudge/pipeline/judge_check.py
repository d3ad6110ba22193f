"""`eval judge-check`: known-answer canaries for a judge, and its reliability card.

A judge is tested on the user's own stored maps (a seeded sample) with requests whose right answer is known:
- blank: a black and a mid-grey image asked about the predicted class: a valid judge scores low;
- full view: the unmasked model view of images whose target is among their labels (a correct prediction; a
  labelled finding): a valid judge scores high;
- absent class: the masked image asked about a class of another category (seeded choice): low;
- absent class is asked only of models with ImageNet-1k labels, whose categories (the recognizer's sibling groups)
  say which classes are another category's; for other label lists (two findings of one radiograph) no class is known
  to be absent, and the canary is n/a;
- inverse mask: the region the model ignored (the image times 1 - M), reported beside the masked image's score
  (their paired difference, with its interval); and the mask sensitivity, the share of maps whose two answers
  differ: a judge that gives the attended and the ignored region the same answer does not read the mask;
- paraphrase: the masked image under the three prompt styles: the scores of one image should agree (spread <= 1);
- batch invariance: the masked requests judged one at a time and inside one mixed batch give the same answer at
  temperature 0;
- test-retest (temperature > 0 only): three repeats of each masked request, the spread of their scores.
Low and high are as the matrix reads them: a score at or above the threshold (3) is high. An answer that cannot be
read, or a failed request, passes no canary: a judge that cannot answer cannot be trusted either.

The card gives each canary's pass rate with a bootstrap 95 % interval (the sampled maps resampled) and a verdict:
- `unusable` when the blank, absent-class or full-view rate is below 0.5 (a coin would do as well), or more than half
  of the answers failed;
- `usable` when blank >= 0.9, absent class >= 0.8, full view >= 0.7, paraphrase >= 0.7, mask sensitivity >= 0.5
  and (at temperature 0) batch invariance >= 0.95;
- `doubtful` otherwise.
Every canary answer is stored (`canary_judgments`, keyed by what was asked of which judge: a second check asks
nothing again) and so is the card (`judge_checks`)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ..config import JUDGE_CHECK_SAMPLE, JUDGE_CHECK_SEED
from ..judge import JudgeRequest, parse_answer
from ..judge.prompts import PROMPT_STYLES, render
from ..saliency.masking import judge_image, soft_mask, upsample
from ..store import content_key, now, unpack_array
from . import Stage

UNUSABLE_BELOW = 0.5
USABLE = {"blank": 0.9, "absent_class": 0.8, "full_view": 0.7, "paraphrase": 0.7, "mask_sensitivity": 0.5,
          "batch_invariance": 0.95}
RETESTS = 3


def inverse_masked_image(view: Image.Image, saliency: np.ndarray, alpha: float, beta: float) -> Image.Image:
    """The image times 1 - M: what the model did not attend to, its attended region blacked out."""
    mask = soft_mask(upsample(saliency, view.size), alpha, beta)
    pixels = np.asarray(view.convert("RGB"), dtype=np.float32) * (1.0 - mask)[..., None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def absent_class(predicted: int, names: list[str], siblings: dict[int, set[int]], rng) -> int:
    """A class outside the predicted class's category (its sibling group), chosen by `rng`."""
    own = siblings.get(predicted, {predicted})
    while True:
        candidate = int(rng.integers(0, len(names)))
        if candidate not in own and not (siblings.get(candidate, {candidate}) & own):
            return candidate


def check_judge(audit, sample: int = JUDGE_CHECK_SAMPLE, seed: int = JUDGE_CHECK_SEED) -> dict:
    """Run the canaries on a seeded sample of the audit's stored maps with its judge; the card (also stored)."""
    from ..judge.base import imagenet_labels
    from ..judge.recognizer import sibling_groups

    config, store = audit.config, audit.store
    map_ids = sorted(audit.judgeable(audit.stored_saliency_maps()))  # the seed draws the same maps in any row order
    if not map_ids:
        raise ValueError(f"no {config.cam} maps of {audit.card.name} in {store.path}: run `localjudge run` (or "
                         "`predict` and `explain`) first")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(map_ids), size=min(sample, len(map_ids)), replace=False).tolist())
    maps = store.saliency_maps([map_ids[i] for i in chosen])
    predictions = {p["id"]: p for p in store.predictions([m["prediction_id"] for m in maps])}
    pictures, maps = audit.load_images(maps, Stage())  # a file gone since: the sample goes on without it
    views = audit.judge_views([m["image_sha256"] for m in maps],
                              {m["image_sha256"]: p for m, p in zip(maps, pictures)})
    names = list(audit.card.label_list().names)
    siblings = sibling_groups()[0] if tuple(names) == imagenet_labels() else None
    labels = audit.card.label_list()
    template = audit.prompt("masked")[0]
    identity, (_, _, decoding) = audit.judge_identity(), audit.judgment_key_parts()
    kinds = {image["sha256"]: audit.image_kind(image.get("kind"))
             for image in store.images({m["image_sha256"] for m in maps})}

    def ask(template: str, label: str, index: int, image_sha256: str) -> str:
        return render(template, label, kinds[image_sha256], labels.description(index))

    asks: list[dict] = []  # what is asked, one request each
    for m in maps:
        prediction = predictions[m["prediction_id"]]
        index = m["target_index"] if m["target_index"] is not None else prediction["predicted_index"]
        label = names[index] if index < len(names) else prediction["predicted_label"]
        view = views[m["image_sha256"]]
        saliency = unpack_array(m["map"], (m["height"], m["width"]))
        masked = judge_image(view, saliency, "masked", config.alpha, config.beta)
        base = {"saliency_id": m["id"], "label": label, "index": index, "image": masked,
                "prompt": ask(template, label, index, m["image_sha256"]), "view": view,
                "mask": soft_mask(upsample(saliency, view.size), config.alpha, config.beta)}
        for shade, colour in (("black", (0, 0, 0)), ("grey", (128, 128, 128))):
            asks.append({**base, "kind": "blank", "variant": shade, "image": Image.new("RGB", view.size, colour),
                         "view": None, "mask": None})
        # the whole view of a target that is there: a correct prediction, a multilabel model's labelled finding
        # (found or missed: the object is in the view either way)
        labelled = json.loads(prediction["label_indices"]) if prediction["label_indices"] else []
        if index in labelled:
            asks.append({**base, "kind": "full_view", "variant": "", "image": view, "view": None, "mask": None})
        if siblings is not None:
            other = absent_class(index, names, siblings, rng)
            asks.append({**base, "kind": "absent_class", "variant": names[other], "label": names[other],
                         "index": other, "prompt": ask(template, names[other], other, m["image_sha256"])})
        inverse = inverse_masked_image(view, saliency, config.alpha, config.beta)
        asks.append({**base, "kind": "inverse_mask", "variant": "", "image": inverse,
                     "mask": None if base["mask"] is None else 1.0 - base["mask"]})
        for style in PROMPT_STYLES:
            asks.append({**base, "kind": "paraphrase", "variant": style,
                         "prompt": ask(audit.prompt("masked", style)[0], label, index, m["image_sha256"])})
        asks.append({**base, "kind": "alone", "variant": config.prompt_style})  # on its own: batch invariance
        for repeat in range(RETESTS if config.temperature > 0 else 0):
            asks.append({**base, "kind": "retest", "variant": str(repeat)})

    keys = [content_key("canary", identity.hash, decoding, a["kind"], a["variant"], a["saliency_id"], a["prompt"],
                        config.alpha, config.beta, config.judge_image_size) for a in asks]
    stored = {r["id"]: r for r in store.canary_judgments(keys)}
    missing = [n for n, key in enumerate(keys) if key not in stored]
    if missing:
        answers = _ask(audit, [asks[n] for n in missing])
        rows = [{"id": keys[n], "judge_model": identity.name, "judge_model_hash": identity.hash,
                 "decoding": json.dumps(decoding, sort_keys=True), "kind": asks[n]["kind"],
                 "variant": asks[n]["variant"], "saliency_id": asks[n]["saliency_id"], "label": asks[n]["label"],
                 "prompt": asks[n]["prompt"], **answer, "run_id": audit.run_id, "created_at": now()}
                for n, answer in zip(missing, answers)]
        store.insert_rows("canary_judgments", rows)
        stored.update({row["id"]: row for row in rows})
    answered = [{**a, **stored[key]} for a, key in zip(asks, keys)]
    card = reliability_card(answered, config.threshold, config.temperature, config.prompt_style)
    card.update({"judge_model": identity.name, "judge_model_hash": identity.hash, "decoding": decoding,
                 "model": audit.card.name, "cam": config.cam, "sample": len(maps), "seed": seed})
    store.insert_rows("judge_checks", [{
        # the card's rules are part of its key: a card read again under other rules is another card
        "id": content_key("judge-check", identity.hash, decoding, sorted(keys), config.threshold, USABLE,
                          UNUSABLE_BELOW),
        "judge_model": identity.name, "judge_model_hash": identity.hash,
        "decoding": json.dumps(decoding, sort_keys=True), "verdict": card["verdict"], "card": json.dumps(card),
        "run_id": audit.run_id, "created_at": now()}])
    return card


def _ask(audit, asks: list[dict]) -> list[dict]:
    """The judge's answers: everything but the 'alone' requests in mixed batches of --judge-batch-size, each 'alone'
    request in a call of its own."""
    judge = audit.judge_model()
    reads_maps = audit.judge_spec.reads_maps
    size = audit.config.judge_batch_size
    answers: dict[int, dict] = {}
    together = [n for n, a in enumerate(asks) if a["kind"] != "alone"]
    alone = [n for n, a in enumerate(asks) if a["kind"] == "alone"]
    calls = [together[i:i + size] for i in range(0, len(together), size)] + [[n] for n in alone]
    for call in calls:
        requests = [JudgeRequest(image=asks[n]["image"], label=asks[n]["label"], prompt=asks[n]["prompt"],
                                 label_index=asks[n]["index"],
                                 **({"view": asks[n]["view"], "mask": asks[n]["mask"]} if reads_maps else {}))
                    for n in call]
        try:
            outputs = judge.judge(requests)
            failure = None
        except Exception as error:  # noqa: BLE001 -- a crashed call is an answer too: failed
            outputs, failure = [None] * len(call), f"{type(error).__name__}: {error}"
        for n, output in zip(call, outputs):
            if output is None or output.error:
                answers[n] = {"status": "failed", "score": None, "raw_text": output.raw_text if output else None,
                              "error": failure or output.error}
                continue
            parsed = parse_answer(output.raw_text)
            answers[n] = {"status": "ok" if parsed.ok else "failed", "score": parsed.score if parsed.ok else None,
                          "raw_text": output.raw_text, "error": None if parsed.ok else parsed.error}
    return [answers[n] for n in range(len(asks))]


def reliability_card(answered: list[dict], threshold: int, temperature: float, prompt_style: str = "original") -> dict:
    """Each canary's pass rate over the sampled maps with its bootstrap interval, and the verdict (see the module's
    docstring)."""
    from ..analysis.bootstrap import LEVEL, RESAMPLES, SEED, mean_interval, paired_difference_interval

    by_map: dict[str, dict[str, list[dict]]] = {}
    for a in answered:
        by_map.setdefault(a["saliency_id"], {}).setdefault(a["kind"], []).append(a)

    def low(a: dict) -> bool:
        return a["status"] == "ok" and a["score"] < threshold

    def high(a: dict) -> bool:
        return a["status"] == "ok" and a["score"] >= threshold

    def rate(per_map) -> dict:
        values = np.array([v for v in (per_map(kinds) for kinds in by_map.values()) if v is not None], dtype=float)
        low_ci, high_ci = mean_interval(values)
        return {"rate": float(values.mean()) if len(values) else None, "ci_low": low_ci, "ci_high": high_ci,
                "maps": int(len(values))}

    def share(kind: str, passes):
        return lambda kinds: (float(np.mean([passes(a) for a in kinds[kind]])) if kinds.get(kind) else None)

    def paraphrase(kinds):
        answers = kinds.get("paraphrase") or []
        if not answers:
            return None
        if any(a["status"] != "ok" for a in answers):
            return 0.0
        scores = [a["score"] for a in answers]
        return float(max(scores) - min(scores) <= 1)

    def batch(kinds):
        alone = kinds.get("alone")
        together = [a for a in kinds.get("paraphrase") or [] if alone and a["variant"] == alone[0]["variant"]]
        if not alone or not together:
            return None
        return float(alone[0]["status"] == "ok" and alone[0]["raw_text"] == together[0]["raw_text"])

    def masked_and_inverse(kinds):  # the masked answer in the run's prompt style and the inverse mask's, both ok
        masked = [a for a in kinds.get("paraphrase") or [] if a["variant"] == prompt_style and a["status"] == "ok"]
        inverse = [a for a in kinds.get("inverse_mask") or [] if a["status"] == "ok"]
        return (masked[0]["score"], inverse[0]["score"]) if masked and inverse else None

    def sensitivity(kinds):
        pair = masked_and_inverse(kinds)
        return None if pair is None else float(pair[0] != pair[1])

    canaries = {"blank": rate(share("blank", low)), "full_view": rate(share("full_view", high)),
                "absent_class": rate(share("absent_class", low)), "paraphrase": rate(paraphrase),
                "mask_sensitivity": rate(sensitivity)}
    if temperature == 0:
        canaries["batch_invariance"] = rate(batch)
    pairs = np.array([p for p in (masked_and_inverse(kinds) for kinds in by_map.values()) if p is not None],
                     dtype=float).reshape(-1, 2)
    inverse_gap = paired_difference_interval(pairs[:, 1], pairs[:, 0], np.mean)  # masked minus inverse
    retest = {}
    for kinds in by_map.values():
        scores = [a["score"] for a in kinds.get("retest") or [] if a["status"] == "ok"]
        if len(scores) > 1:
            retest.setdefault("spreads", []).append(float(np.std(scores)))
    failed = sum(a["status"] != "ok" for a in answered) / len(answered) if answered else 0.0
    rates = {name: found["rate"] for name, found in canaries.items()}
    decisive = [rates[name] for name in ("blank", "absent_class", "full_view") if rates.get(name) is not None]
    if failed > 0.5 or any(r < UNUSABLE_BELOW for r in decisive):
        verdict = "unusable"
    elif all(rates.get(name) is None or rates[name] >= bar for name, bar in USABLE.items()):
        verdict = "usable"
    else:
        verdict = "doubtful"
    decisive_names = ("blank", "absent_class", "full_view")
    reasons = [f"{name} {rates[name]:.2f} < {UNUSABLE_BELOW}" for name in decisive_names
               if rates.get(name) is not None and rates[name] < UNUSABLE_BELOW]
    reasons += [f"{name} {rates[name]:.2f} < {bar}" for name, bar in USABLE.items() if rates.get(name) is not None
                and rates[name] < bar and not (name in decisive_names and rates[name] < UNUSABLE_BELOW)]
    if failed > 0.5:
        reasons.append(f"{failed:.0%} of the answers failed")
    return {"verdict": verdict, "reasons": reasons, "threshold": threshold, "canaries": canaries,
            "inverse_mask": {"masked_mean": float(pairs[:, 0].mean()) if len(pairs) else None,
                             "inverse_mean": float(pairs[:, 1].mean()) if len(pairs) else None,
                             "masked_minus_inverse": inverse_gap["difference"], "ci_low": inverse_gap["ci_low"],
                             "ci_high": inverse_gap["ci_high"], "maps": int(len(pairs))},
            "test_retest": ({"mean_std": float(np.mean(retest["spreads"])), "maps": len(retest["spreads"])}
                            if retest else None),
            "failed_share": failed, "answers": len(answered),
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL}}
