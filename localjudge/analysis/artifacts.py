"""Artifact regions: places in an image where a shortcut may sit (a burned-in text box, a ruler's strip, the border)
and the share of a saliency map's mass that falls there. Pure functions over arrays.

A region is named by a spec:
- `border:PX`: a frame PX pixels wide along the edges of the model's view (what the model saw, at its input size);
- `corner:PX`: the four PX x PX squares at the corners of the model's view;
- a JSON file `{"regions": {"name": [x0, y0, x1, y1], ...}}`: boxes in fractions (0-1) of the original image's
  width and height, the same place on every image (a scanner's text box); each becomes the region of that name,
  cut and resized as the image was for the model.

The mass share of a map in a region is the sum of the map inside it over the map's sum (the energy-based pointing
game's figure, Wang et al. 2020). Its trivial baseline is the region's area fraction: the share a flat map puts
there. A share far above the area says the model looks there more than a flat map would."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIEW_SPEC = re.compile(r"^(border|corner):(\d+)$")


class ArtifactSpecError(ValueError):
    pass


@dataclass(frozen=True)
class ArtifactRegion:
    name: str  # "border:16", "corner:24", or a file's region name
    spec: str  # what the user gave (a built-in, or the file and its region's name)
    view_pixels: tuple[str, int] | None = None  # ("border" | "corner", PX) in the model's view
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in fractions of the image

    def digest(self) -> str:
        """What a stored score is keyed by: the region's name and its definition (two names for one box are two
        regions; a renamed box is scored under its new name)."""
        return json.dumps({"name": self.name, "view": self.view_pixels, "box": self.box}, sort_keys=True)


def parse_specs(specs: list[str]) -> list[ArtifactRegion]:
    """The regions named by `--artifact-regions` values (built-ins or JSON files), in order; a bad one is refused
    with its text and the reason."""
    regions: list[ArtifactRegion] = []
    for spec in specs:
        match = VIEW_SPEC.match(spec.strip())
        if match:
            pixels = int(match.group(2))
            if pixels < 1:
                raise ArtifactSpecError(f"{spec}: the width must be at least 1 pixel")
            regions.append(ArtifactRegion(spec.strip(), spec.strip(), (match.group(1), pixels)))
            continue
        path = Path(spec)
        if not path.is_file():
            raise ArtifactSpecError(f"{spec}: neither border:PX, corner:PX nor a JSON file of regions")
        try:
            document = json.loads(path.read_text())
            boxes = document["regions"]
            for name, box in boxes.items():
                x0, y0, x1, y1 = (float(v) for v in box)
                if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                    raise ValueError(f"region {name!r}: [x0, y0, x1, y1] must be fractions with x0 < x1, y0 < y1")
                regions.append(ArtifactRegion(str(name), f"{path}#{name}", box=(x0, y0, x1, y1)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ArtifactSpecError(f"{path}: not a regions file ({type(error).__name__}: {error}); expected "
                                    '{"regions": {"name": [x0, y0, x1, y1]}} in fractions of the image') from error
    names = [r.name for r in regions]
    if len(set(names)) != len(names):
        raise ArtifactSpecError(f"artifact regions named twice: {sorted({n for n in names if names.count(n) > 1})}")
    return regions


def view_region(kind: str, pixels: int, shape: tuple[int, int]) -> np.ndarray:
    """A frame (`border`) or the four corner squares (`corner`) of PX pixels in a map of `shape`."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    p = min(pixels, height, width)
    if kind == "border":
        mask[:p, :] = mask[-p:, :] = True
        mask[:, :p] = mask[:, -p:] = True
    elif kind == "corner":
        for rows in (slice(0, p), slice(height - p, height)):
            for columns in (slice(0, p), slice(width - p, width)):
                mask[rows, columns] = True
    else:
        raise ArtifactSpecError(f"unknown view region {kind!r}")
    return mask


def box_mask(box: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """A box in fractions of an image as a boolean mask of that image (pixels whose centre lies inside)."""
    x0, y0, x1, y1 = box
    columns = (np.arange(width) + 0.5) / width
    rows = (np.arange(height) + 0.5) / height
    return ((rows >= y0) & (rows < y1))[:, None] & ((columns >= x0) & (columns < x1))[None, :]


def mass_share(saliency: np.ndarray, region: np.ndarray) -> float | None:
    """The share of the map's mass inside the region; None for a map without mass."""
    values = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)
    total = values.sum()
    if total <= 0:
        return None
    return float(values[np.asarray(region, dtype=bool)].sum() / total)
