"""The recognizer judge: a second, independent classifier (EfficientNet-Lite2, real ImageNet-1k weights) looks at
what the model attended to and says how much of its probability falls on the predicted class and its siblings. No
VLM, no text generation: the audit still has a real judge where no vision-language model is available. A judge must
not grade itself: when the audited model's weights are Lite2's own, EfficientNet-Lite1 judges instead (its identity,
and so every judgment's key, says which).

Score (0-5) from that probability mass m, by fixed thresholds: m >= 0.50 -> 5, >= 0.25 -> 4, >= 0.10 -> 3,
>= 0.03 -> 2, >= 0.01 -> 1, else 0. So a score of 3 or more (high) means the visible region alone still makes the
class at least a 1-in-10 guess among 1000. Siblings are the ImageNet classes that share a VOC or COCO category with
the predicted class (models/labels/imagenet-1k-groups.json; e.g. all dog breeds for a dog): a Lite0 "beagle" whose
visible region Lite2 reads as "basset" is still attention on a dog. The evaluation and justification are built from
these measured facts and say so ("templated").

What it looks at is its design (--recognizer-design), measured by scripts/recognizer_designs.py on the same maps:
- crop (the default: the best measured): the model's view cropped to the bounding square of the attended region
  (M >= 0.5), unmasked. A classifier reads a whole object; with all else black it reads "spotlight".
- black: the masked image A = I * M, as a VLM judge sees it;
- mean: the masked image with hidden pixels at the normalisation mean (what the network reads as "nothing");
- relative: the masked image's class mass over the whole view's (where the whole view holds at least
  RELATIVE_FLOOR of it), so the score means the same for classes with one sibling and with a hundred.

torch is imported where it is used, so the judge registry loads without it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..saliency.masking import masked_image
from ..store import content_key, sha256_remembered
from ..config import DEFAULTS
from ..errors import OptionError
from .base import Judge, JudgeIdentity, JudgeOutput, JudgeRequest, JudgeSpec

if TYPE_CHECKING:
    import torch

DESIGNS = ("black", "mean", "crop", "relative")
RECOGNIZER_MODEL = "efficientnet-lite2"
INDEPENDENT_MODEL = "efficientnet-lite1"  # the recognizer when the audited model is RECOGNIZER_MODEL itself
# What each design's scores were measured to be worth (scripts/recognizer_designs.py, Lite2 judging EfficientNet-Lite0's
# Grad-CAM maps; the README has the whole table): printed under every matrix the recognizer made.
MEASURED = {
    "black": "on the 70 seg-photos its score does not track where the object is (Pearson 0.03 [-0.24, 0.34] with "
             "the attention mask's IoU; the paper's best VLM judge: 0.37), and as a label-issue filter it is worse "
             "than keeping every label (F1 0.69 against 0.87)",
    "mean": "on the 70 seg-photos its score does not track where the object is (Pearson 0.05 [-0.19, 0.33] with the "
            "attention mask's IoU; the paper's best VLM judge: 0.37), and as a label-issue filter it is worse than "
            "keeping every label (F1 0.79 against 0.87)",
    "crop": "on the 70 seg-photos its score tracks where the object is only weakly (Pearson 0.29 [0.06, 0.51] with "
            "the attention mask's IoU; the paper's best VLM judge: 0.37); as a label-issue filter it beats keeping "
            "every label (F1 0.91 [0.89, 0.93] against 0.87)",
    "relative": "on the 70 seg-photos its score does not track where the object is (Pearson 0.07 [-0.23, 0.37] with "
                "the attention mask's IoU; the paper's best VLM judge: 0.37), and as a label-issue filter it is "
                "worse than keeping every label (F1 0.73 against 0.87)",
}
# What each design shows the classifier, in its templated evaluation.
SHOWN = {"black": "With only the attended regions visible", "relative": "With only the attended regions visible",
         "mean": "With only the attended regions visible (the rest at the mean colour)",
         "crop": "In the bounding square of the attended region"}
RELATIVE_FLOOR = 0.10  # the relative design divides only by a whole-view class mass at least this large
SCORE_THRESHOLDS = ((0.50, 5), (0.25, 4), (0.10, 3), (0.03, 2), (0.01, 1))
GROUPS_FILE = "labels/imagenet-1k-groups.json"


def score_for(mass: float) -> int:
    return next((score for threshold, score in SCORE_THRESHOLDS if mass >= threshold), 0)


def sibling_groups() -> tuple[dict[int, set[int]], dict[int, list[str]], str]:
    """For each class index in a group: its siblings (itself included), the names of its groups, and the hash of
    the groups file (part of the judge's identity)."""
    from ..vision.cards import cards_dir

    text = (cards_dir() / GROUPS_FILE).read_text()
    groups = json.loads(text)["groups"]
    siblings: dict[int, set[int]] = {}
    names: dict[int, list[str]] = {}
    for name, members in groups.items():
        for index in members:
            siblings.setdefault(index, {index}).update(members)
            names.setdefault(index, []).append(name.split(":", 1)[1])
    return siblings, names, hashlib.sha256(text.encode()).hexdigest()[:16]


def recognizer_params(model: str, design: str) -> dict:
    """What decides a recognizer judgment besides its weights: part of a judgment's key (the first design, black,
    unnamed, as judgments were keyed before there were others)."""
    return {"backend": "recognizer", "model": model, "thresholds": [list(t) for t in SCORE_THRESHOLDS],
            "siblings": sibling_groups()[2], **({"design": design} if design != "black" else {}),
            **({"relative_floor": RELATIVE_FLOOR} if design == "relative" else {})}


def recognizer_for(config) -> str:
    """The recognizer's model for an audit: EfficientNet-Lite2, or Lite1 where the audited model's weights are Lite2's
    (compared by the weights' sha256: the same weights under another card's name are still the same judge)."""
    from ..vision import model_hash, resolve_card

    audited = resolve_card(config.model, config.card)
    judge = model_hash(resolve_card(RECOGNIZER_MODEL), None, sha256_remembered, "torch")
    if audited.framework == "onnx":  # a graph says which weights it was exported from
        return INDEPENDENT_MODEL if f"sha256:{audited.source_weights_sha256}" == judge else RECOGNIZER_MODEL
    if audited.framework != "efficientnet-lite-pytorch":
        return RECOGNIZER_MODEL  # no other architecture can hold Lite2's weights
    own = model_hash(audited, Path(config.weights) if config.weights else None, sha256_remembered, "torch")
    return INDEPENDENT_MODEL if own == judge else RECOGNIZER_MODEL


class RecognizerSpec(JudgeSpec):
    name = "recognizer"
    needs_vlm = False
    reads_heatmaps = False  # a heatmap overlay would only mislead a classifier
    needs_imagenet_labels = True
    structured_output = "templated"
    reads_maps = True  # the designs but the first need the view and the soft mask
    reads_prompt = False  # a classifier: no prompt reaches it, so none is in its judgments' key

    def reads_image(self, config) -> bool:  # crop and mean draw their own from the view and the mask
        return config.recognizer_design in ("black", "relative")

    def caveat(self, decoding: dict) -> str:
        design = decoding.get("design", "black")  # the first design is unnamed in its judgments' key
        return (f"the recognizer ({design} design) is a classifier standing in for a VLM judge, a proxy: "
                f"{MEASURED.get(design, 'not measured')} (measured with Lite2 judging EfficientNet-Lite0's Grad-CAM "
                "maps). Read its matrix as a floor, not a verdict; give --vlm DIR for the paper's judge")

    def check(self, config, labels) -> None:
        super().check(config, labels)
        if config.recognizer_design not in DESIGNS:
            raise OptionError(f"--recognizer-design {config.recognizer_design!r}: use one of {', '.join(DESIGNS)}")

    def identity(self, config, hash_file) -> JudgeIdentity:
        from ..vision import model_hash, resolve_card

        model = recognizer_for(config)
        # on ONNX Runtime the same weights are another judge for the store, as for the vision model (numerics differ
        # slightly); on torch the hash is the one judgments were keyed by before the recognizer ran on either
        weights = model_hash(resolve_card(model), None, hash_file, recognizer_backend(config))
        return JudgeIdentity(f"recognizer:{model}", content_key("recognizer", weights))

    def decoding(self, config) -> dict:  # no decoding: its design, thresholds and sibling groups decide
        return recognizer_params(recognizer_for(config), config.recognizer_design)

    def open(self, config, identity: JudgeIdentity) -> Judge:
        return RecognizerJudge(device=config.device, model=recognizer_for(config), design=config.recognizer_design,
                               vision_backend=recognizer_backend(config))


def recognizer_backend(config) -> str:
    """The recognizer runs on the audit's vision backend (settled by open_audit: ONNX Runtime where it is installed),
    torch where none is settled yet."""
    from ..vision import BACKENDS

    return config.backend if config.backend in BACKENDS else "torch"


class RecognizerJudge(Judge):
    backend = "recognizer"

    def __init__(self, device: str = "auto", model: str = RECOGNIZER_MODEL, design: str = DEFAULTS.recognizer_design,
                 vision_backend: str = "torch"):
        from ..vision import open_model, resolve_card

        self.name = model
        self.design = design
        self.card = resolve_card(model)
        self.model = open_model(self.card, None, device, vision_backend)
        self.labels = self.card.label_list().names
        self.siblings, self.group_names, _ = sibling_groups()

    def _inputs(self, images: list[Image.Image]) -> torch.Tensor:
        """The judge's image is already the vision model's view (its centre crop); it is only resized to the
        recognizer's input and normalised, not cropped again."""
        from ..vision.preprocess import normalised_batch

        side = self.card.crop
        pixels = np.stack([np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR)) for image in images])
        return normalised_batch(pixels, self.card.mean, self.card.std)

    def _design_image(self, request: JudgeRequest) -> Image.Image:
        """What the design classifies (a request without a view, a canary's blank image, is classified as it is)."""
        if request.view is None or request.mask is None or self.design in ("black", "relative"):
            return request.image
        if self.design == "mean":  # hidden pixels take the colour the model's normalisation maps to zero
            view = np.asarray(request.view.convert("RGB"), dtype=np.float32)
            mask = np.asarray(request.mask, dtype=np.float32)[..., None]
            fill = np.asarray(self.card.mean, dtype=np.float32) * 255.0
            return Image.fromarray(np.clip(view * mask + fill * (1 - mask) + 0.5, 0, 255).astype(np.uint8))
        # crop: the attended region's bounding square (mask >= 0.5), unmasked, the rest of the view left out
        attended = np.asarray(request.mask) >= 0.5
        rows, cols = np.flatnonzero(attended.any(axis=1)), np.flatnonzero(attended.any(axis=0))
        if len(rows) == 0:  # nothing attended above one half: the masked image (A = I * M), as the black design
            return request.image if request.image is not None else masked_image(request.view, None, 0, 0, request.mask)
        height, width = attended.shape
        side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        top = int(min(max(0, (rows[0] + rows[-1] + 1 - side) // 2), height - side))
        left = int(min(max(0, (cols[0] + cols[-1] + 1 - side) // 2), width - side))
        return request.view.crop((left, top, left + side, top + side))

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        probabilities = self.model.predict(self._inputs([self._design_image(r) for r in requests]))
        if self.design == "relative":  # the class's mass on the masked image over its mass on the whole view
            # (a request without a view, a canary's blank image, has nothing to be relative to: scored as it is)
            viewed = [n for n, r in enumerate(requests) if r.view is not None]
            whole = dict(zip(viewed, self.model.predict(self._inputs([requests[n].view for n in viewed])))
                         if viewed else [])
            return [self._judgment(r, p, whole.get(n)) for n, (r, p) in enumerate(zip(requests, probabilities))]
        return [self._judgment(r, p) for r, p in zip(requests, probabilities)]

    def _judgment(self, request: JudgeRequest, probabilities: np.ndarray,
                  whole: np.ndarray | None = None) -> JudgeOutput:
        target = request.label_index
        if target is None or not 0 <= target < len(self.labels):
            return JudgeOutput(raw_text="", input_tokens=None, output_tokens=None,
                               error=f"the recognizer judge needs an ImageNet-1k class index, got {target!r}")
        label = self.labels[target].replace("_", " ")
        group = sorted(self.siblings.get(target, {target}))
        own = float(probabilities[target])
        mass = absolute = float(probabilities[group].sum())
        top = int(np.argmax(probabilities))
        relative = ""
        if whole is not None and float(whole[group].sum()) >= RELATIVE_FLOOR:
            # relative: how much of the class's evidence in the whole view the masked one keeps. Where the whole view
            # holds little of it (an absent class: two near-zero masses divide to about 1), the mass as it is.
            mass = min(1.0, absolute / float(whole[group].sum()))
            relative = f" That is {mass:.1%} of what the whole view gives {'them' if len(group) > 1 else 'it'}."
        score = score_for(mass)
        with_group = (f", and the classes of its group ({', '.join(self.group_names[target])}: {len(group)} classes) "
                      f"{absolute:.1%} together" if len(group) > 1 else "")
        evaluation = (f"[templated by the recognizer judge] {SHOWN[self.design]}, {self.name} gives \"{label}\" a "
                      f"probability of {own:.1%}{with_group}.{relative} Its most likely class for the visible region "
                      f"is \"{self.labels[top].replace('_', ' ')}\" ({float(probabilities[top]):.1%}).")
        reached = next((t for t, s in SCORE_THRESHOLDS if s == score), None)
        siblings = " and its siblings" if len(group) > 1 else ""
        justification = (f"{'Share' if relative else 'Probability mass'} {mass:.3f} on \"{label}\"{siblings}"
                         + (f" reaches {reached}, so the score is {score}" if reached is not None
                            else f" is below {SCORE_THRESHOLDS[-1][0]}, so the score is 0")
                         + " (thresholds 0.50, 0.25, 0.10, 0.03, 0.01 for 5, 4, 3, 2, 1).")
        answer = {"evaluation": evaluation, "justification": justification, "score": score}
        return JudgeOutput(raw_text=json.dumps(answer), input_tokens=None, output_tokens=None)


SPEC = RecognizerSpec()
