"""The planted-shortcut canary: paste a synthetic artifact into copies of images and measure what it changes.
Pure functions over arrays (the model runs in pipeline.canary).

Artifacts, drawn into the model's view (`side` x `side` pixels) at a seeded place:
- `tag`: a square of `size` x side pixels, magenta with a yellow centre (a sticker, a skin marker);
- `text`: white letters on a black box twice as wide as high (a burned-in label, "L 12");
- `border`: a yellow frame `size` x side / 4 pixels wide along the view's edges (a scanner's frame).

Per image: the change in the probability of the class the model predicted for the original (negative: the artifact
takes evidence away), whether the predicted class changes, and where the map of the tagged image's prediction puts
its mass: its share on the artifact, beside the share the original image's map put on the same pixels (the
artifact's place before it was there) and the artifact's area (a flat map's share).

Across images: the means of those with bootstrap intervals, the flip rate, and the class the artifact pulls toward:
the class whose probability rises most on average, with its rise and an interval of the largest mean rise of any
class (the class chosen again in each resample, so the choice does not bias the interval upward). A model that
ignores the artifact shows a pull near 0 and mass near the original's share. The artifact is flagged as a shortcut
when the lower end of the pull's interval reaches PULL_FLAG (the artifact alone adds that much probability to one
class, on average over images of every class) or the lower end of the interval of the mass moved onto it (tagged
share minus original share) reaches MASS_FLAG.

With a judge (quadrant_changes): each image's quadrant before and after the artifact (its prediction right or
wrong, the judge's score of its view masked by its own map high or low), the share that changes quadrant with its
interval, and the transitions: a model that ignores the artifact keeps its quadrants."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..config import CANARY_DEFAULTS
from .bootstrap import mean_interval, percentile_interval, resample_indices

QUADRANTS = ("CH", "CL", "WH", "WL")

ARTIFACTS = ("tag", "text", "border")
DEFAULT_SIZE = CANARY_DEFAULTS["size"]  # of the view's side
PULL_FLAG = 0.05  # five points of probability, on average over images of every class
MASS_FLAG = 0.10
MAGENTA, YELLOW = (255, 0, 255), (255, 230, 0)


def place(kind: str, side: int, size: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The artifact's box (x0, y0, x1, y1) in view pixels; the border's is the whole view."""
    if kind == "border":
        return 0, 0, side, side
    height = max(2, round(size * side))
    width = height if kind == "tag" else 2 * height
    width, height = min(width, side), min(height, side)
    x0 = int(rng.integers(0, side - width + 1))
    y0 = int(rng.integers(0, side - height + 1))
    return x0, y0, x0 + width, y0 + height


def artifact_region(kind: str, box: tuple[int, int, int, int], side: int, size: float) -> np.ndarray:
    """The pixels the artifact covers in a view of `side` pixels."""
    region = np.zeros((side, side), dtype=bool)
    if kind == "border":
        width = max(1, round(size * side / 4))
        region[:width, :] = region[-width:, :] = region[:, :width] = region[:, -width:] = True
        return region
    x0, y0, x1, y1 = box
    region[y0:y1, x0:x1] = True
    return region


def paste(view: Image.Image, kind: str, box: tuple[int, int, int, int], size: float) -> Image.Image:
    """A copy of the view with the artifact drawn in."""
    tagged = view.convert("RGB").copy()
    draw = ImageDraw.Draw(tagged)
    x0, y0, x1, y1 = box
    if kind == "tag":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=MAGENTA)
        inset = max(1, (x1 - x0) // 4)
        draw.rectangle((x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset), fill=YELLOW)
    elif kind == "text":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(0, 0, 0))
        draw.text((x0 + 2, y0 + 1), "L 12", fill=(255, 255, 255), font_size=max(6, (y1 - y0) - 4))
    elif kind == "border":
        width = max(1, round(size * tagged.size[0] / 4))
        for step in range(width):
            draw.rectangle((step, step, tagged.size[0] - 1 - step, tagged.size[1] - 1 - step), outline=YELLOW)
    else:
        raise ValueError(f"unknown artifact {kind!r}; use one of {', '.join(ARTIFACTS)}")
    return tagged


def mean_with_interval(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    low, high = mean_interval(values)
    return {"mean": float(values.mean()) if len(values) else None, "ci_low": low, "ci_high": high,
            "n": int(len(values))}


def canary_summary(original: np.ndarray, tagged: np.ndarray, mass_tagged: np.ndarray, mass_original: np.ndarray,
                   area: np.ndarray, names: list[str] | None = None) -> dict:
    """Dataset figures of a canary from per-image arrays: `original` and `tagged` class probabilities (n, classes),
    the tagged map's mass share on the artifact, the original map's share on the same pixels, the artifact's area."""
    original, tagged = np.asarray(original, dtype=np.float64), np.asarray(tagged, dtype=np.float64)
    rows = np.arange(len(original))
    predicted = original.argmax(axis=1)
    drop = tagged[rows, predicted] - original[rows, predicted]
    flips = (tagged.argmax(axis=1) != predicted).astype(float)
    rise = tagged - original
    pulled = int(rise.mean(axis=0).argmax()) if len(rise) else None
    # the pulled class is chosen on the same images: its interval is the largest mean rise of any class in each
    # resample (the choice made again each time), not the chosen class's own, which would lean upward
    pull_low = pull_high = None
    if len(rise):
        low_high = percentile_interval(np.array([rise[rows_].mean(axis=0).max()
                                                 for rows_ in resample_indices(len(rise))]))
        pull_low, pull_high = low_high
    moved = np.asarray(mass_tagged, dtype=np.float64) - np.asarray(mass_original, dtype=np.float64)
    result = {
        "images": int(len(original)),
        "probability_change": mean_with_interval(drop),
        "flip_rate": mean_with_interval(flips),
        "pull": {"class_index": pulled, "class": None if pulled is None or names is None else names[pulled],
                 "mean": None if pulled is None else float(rise[:, pulled].mean()), "ci_low": pull_low,
                 "ci_high": pull_high, "n": int(len(rise))},
        "mass_on_artifact": mean_with_interval(mass_tagged),
        "mass_there_before": mean_with_interval(mass_original),
        "mass_moved": mean_with_interval(moved),
        "area": mean_with_interval(area),
    }
    pull_low, moved_low = result["pull"]["ci_low"], result["mass_moved"]["ci_low"]
    result["flagged"] = bool((pull_low is not None and pull_low >= PULL_FLAG)
                             or (moved_low is not None and moved_low >= MASS_FLAG))
    result["flag_rule"] = (f"flagged when the lower end of the pull's interval reaches {PULL_FLAG} or that of the "
                           f"mass moved onto the artifact reaches {MASS_FLAG}")
    return result


def quadrant_changes(original: np.ndarray, tagged: np.ndarray) -> dict:
    """How the artifact moves images between the matrix's quadrants: `original` and `tagged` are each image's
    quadrant (CH/CL/WH/WL) before and after; images with a failed judgment or no label ("unlabelled", None) are left
    out. The share that changes quadrant with its interval, the shares whose score crosses the threshold (high <->
    low) and whose correctness changes, and the transition counts (from -> to)."""
    original, tagged = np.asarray(original, dtype=object), np.asarray(tagged, dtype=object)
    placed = np.array([a in QUADRANTS and b in QUADRANTS for a, b in zip(original, tagged)], dtype=bool)
    before, after = original[placed], tagged[placed]
    changed = (before != after).astype(float)
    level = np.array([a[1] != b[1] for a, b in zip(before, after)], dtype=float)
    correctness = np.array([a[0] != b[0] for a, b in zip(before, after)], dtype=float)
    transitions: dict[str, int] = {}
    for a, b in zip(before, after):
        if a != b:
            transitions[f"{a}->{b}"] = transitions.get(f"{a}->{b}", 0) + 1
    return {"images": int(placed.sum()), "changed": mean_with_interval(changed),
            "score_level_changed": mean_with_interval(level), "correctness_changed": mean_with_interval(correctness),
            "before": {q: int((before == q).sum()) for q in QUADRANTS},
            "after": {q: int((after == q).sum()) for q in QUADRANTS},
            "transitions": dict(sorted(transitions.items(), key=lambda t: (-t[1], t[0])))}
