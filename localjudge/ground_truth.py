"""Ground-truth object regions for ingested images: mask files in a folder (named by the image's stem), mask paths in
a manifest column (with their class in another, --mask-label-column), or COCO-style boxes (one region per category
besides their union). Each source yields, per (image, label), either a boolean mask of the image's size or the reason
it could not be read (the run goes on without it). The label '' is the image's object, whatever its class; a named
label is one finding's region, the one a multilabel model's map of that finding is measured against."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .analysis.regions import boxes_mask
from .data import IMAGE_SUFFIXES
from .errors import UserError


@dataclass(frozen=True)
class Region:
    mask: np.ndarray  # bool, (height, width) of the image
    source: str  # "masks", "mask-column" or "boxes"
    reference: str  # the mask file, or the boxes file and image entry
    label: str = ""  # the class whose region it is ('' the image's object)


@dataclass(frozen=True)
class RegionFailure:
    reference: str
    reason: str


class GroundTruthError(UserError):
    pass


def oriented_size(path: Path, width: int, height: int) -> tuple[int, int]:
    """The image's size as the model sees it: EXIF orientations 5-8 (quarter turns) swap width and height. Masks
    and boxes are read in that orientation, the one annotation tools show."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
    except OSError:
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def read_mask_file(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The object's pixels. A palette mask (VOC's class masks): every index but 0 (background) and 255 (VOC's
    "void" border). Otherwise a 0/1 mask: any non-zero value; a 0/255 mask: values of 128 or more (so the faint
    noise of a JPEG mask is not object)."""
    with Image.open(path) as image:
        image.load()
        if image.size != size:
            raise ValueError(f"mask is {image.size[0]}x{image.size[1]}, the image {size[0]}x{size[1]}")
        if image.mode == "P":
            indices = np.asarray(image)
            return (indices != 0) & (indices != 255)
        grey = np.asarray(image.convert("L"))
        return grey > 0 if grey.max() <= 1 else grey >= 128


Found = dict[tuple[str, str], "Region | RegionFailure"]  # (image sha256, label) -> region


def from_mask_folder(folder: Path, images: list[dict]) -> Found:
    """`images` are stored image rows (sha256, path, width, height); a mask is FOLDER/<image stem>.<image suffix>."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GroundTruthError(f"{folder}: not a folder of masks")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: (p.suffix.lower() != ".png", p.name)):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, path)  # a .png first when a stem has several files
    stems: dict[str, int] = {}
    for image in images:
        stems[Path(image["path"]).stem] = stems.get(Path(image["path"]).stem, 0) + 1
    found = {}
    for image in images:
        stem = Path(image["path"]).stem
        path = by_stem.get(stem)
        if path is None:
            continue
        if stems[stem] > 1:  # e.g. cat/001.jpg and dog/001.jpg: a mask named 001 cannot say whose it is
            found[(image["sha256"], "")] = RegionFailure(
                str(path), f"{stems[stem]} images are named {stem!r}; masks are matched by name, so use --mask-column "
                           "instead")
            continue
        found[(image["sha256"], "")] = _read(path, image, "masks")
    return found


def from_manifest_column(manifest: Path, column: str, path_column: str, images: list[dict],
                         label_column: str | None = None) -> Found:
    """Mask paths in `column` of the manifest the images came from; relative paths are read from its folder. With
    `label_column`, each mask is the region of the class that column names (an image may have a row per finding);
    without, the image's object."""
    manifest = Path(manifest)
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for needed in (column, path_column, label_column):
            if needed is not None and needed not in columns:
                raise GroundTruthError(f"{manifest}: no column {needed!r} (columns: {', '.join(columns)})")
        masks: dict[str, dict[str, str]] = {}
        for row in reader:
            image_path, mask_path = (row.get(path_column) or "").strip(), (row.get(column) or "").strip()
            label = (row.get(label_column) or "").strip() if label_column else ""
            if image_path and mask_path:
                masks.setdefault(_resolved(manifest, image_path), {})[label] = _resolved(manifest, mask_path)
    found = {}
    for image in images:
        for label, mask in masks.get(str(Path(image["path"]).resolve()), {}).items():
            found[(image["sha256"], label)] = _read(Path(mask), image, "mask-column", label)
    return found


def from_coco_boxes(boxes_file: Path, images: list[dict]) -> Found:
    """COCO-style JSON: `images` (id, file_name) and `annotations` (image_id, bbox as x, y, width, height, and
    category_id where the file has `categories`). An image matches an entry whose file_name its path ends with; the
    union of its boxes is its region (label ''), and the union of each category's boxes that category's region,
    named by the category's name. An entry without annotations is an image with no object: an empty region. When no
    file_name is a suffix of the path, a file name that is unique in the boxes file matches by its base name (boxes
    files name images by their own folders)."""
    boxes_file = Path(boxes_file)
    try:
        document = json.loads(boxes_file.read_text())
        entries = {entry["id"]: entry for entry in document["images"]}
        categories = {c["id"]: str(c["name"]) for c in document.get("categories", [])}
        boxes: dict[int, list] = {image_id: [] for image_id in entries}
        by_category: dict[int, dict[str, list]] = {}
        for annotation in document.get("annotations", []):
            box = tuple(annotation["bbox"])
            boxes.setdefault(annotation["image_id"], []).append(box)
            if annotation.get("category_id") in categories:
                by_category.setdefault(annotation["image_id"], {}).setdefault(
                    categories[annotation["category_id"]], []).append(box)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GroundTruthError(f"{boxes_file}: not a COCO-style boxes file ({type(error).__name__}: {error})") from error
    by_name = {Path(entry["file_name"]).as_posix(): image_id for image_id, entry in entries.items()}
    by_base: dict[str, list[int]] = {}
    for name, image_id in by_name.items():
        by_base.setdefault(Path(name).name, []).append(image_id)
    found = {}
    for image in images:
        posix = Path(image["path"]).as_posix()
        image_id = next((i for name, i in by_name.items() if posix == name or posix.endswith("/" + name)), None)
        if image_id is None and len(by_base.get(Path(posix).name, [])) == 1:
            image_id = by_base[Path(posix).name][0]
        if image_id is None:
            continue
        reference = f"{boxes_file}#{entries[image_id]['file_name']}"
        entry = entries[image_id]
        oriented = oriented_size(Path(image["path"]), image["width"], image["height"])
        size = (int(entry.get("width") or oriented[0]), int(entry.get("height") or oriented[1]))
        if size != oriented:
            found[(image["sha256"], "")] = RegionFailure(reference, f"boxes are for a {size[0]}x{size[1]} image, "
                                                                    f"the image is {oriented[0]}x{oriented[1]}")
            continue
        found[(image["sha256"], "")] = Region(boxes_mask(boxes[image_id], *size), "boxes", reference)
        for name, category_boxes in by_category.get(image_id, {}).items():
            found[(image["sha256"], name)] = Region(boxes_mask(category_boxes, *size), "boxes", reference, name)
    return found


def _read(path: Path, image: dict, source: str, label: str = "") -> Region | RegionFailure:
    try:
        size = oriented_size(Path(image["path"]), image["width"], image["height"])
        return Region(read_mask_file(path, size), source, str(path), label)
    except (OSError, ValueError) as error:
        return RegionFailure(str(path), f"{type(error).__name__}: {error}" if isinstance(error, OSError) else str(error))


def _resolved(manifest: Path, value: str) -> str:
    path = Path(value)
    return str((path if path.is_absolute() else manifest.absolute().parent / path).resolve())


def region_of_map(regions: dict[str, dict], saliency_map: dict, label_indices: list[int] | None) -> dict | None:
    """The stored region (of an image's `regions`, by label) a map is measured against: its target's own (labels
    compare without case), else the image's object region ('') where that is the target's: a single-label model's
    map (its prediction's class) or a finding that is the image's only label. None where the image has none."""
    target = saliency_map.get("target_label")
    if target is not None:
        named = {label.casefold(): row for label, row in regions.items() if label}
        if target.casefold() in named:
            return named[target.casefold()]
    single_label = saliency_map.get("finding") is None  # NULL: a single-label model's map, or one stored before
    if single_label or label_indices == [saliency_map["target_index"]]:
        return regions.get("")
    return None


def region_in_view(truth: dict, geometry: dict, saliency_shape: tuple[int, int]) -> np.ndarray:
    """A stored region (a `ground_truth` row) in the model's view of its image, at a map's size: cut and resized as
    the image was (the prediction's preprocessing `geometry`), nearest neighbour."""
    from .store import unpack_array
    from .vision.preprocess import mask_view

    region = unpack_array(truth["mask"], (truth["height"], truth["width"]), dtype=np.uint8) > 0.5
    height, width = saliency_shape
    view = mask_view(region, geometry, width)
    if view.shape != (height, width):  # a non-square map: compare at the map's own size
        view = np.asarray(Image.fromarray(view).resize((width, height), Image.NEAREST))
    return view
