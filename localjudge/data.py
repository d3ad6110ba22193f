"""Ingest: find the images of a dataset, read them once, and say plainly which ones cannot be read and why."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dicom import DICOM_SUFFIXES, DicomError, load_dicom, load_dicom_with_kind, looks_like_dicom
from .errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", *DICOM_SUFFIXES}


class IngestError(UserError):
    """The source itself (folder or manifest) cannot be used; single bad images are stored, not raised."""


class IngestWarning(UserWarning):
    pass


@dataclass(frozen=True)
class InputItem:
    path: Path
    label: str | None
    from_folder: bool = False  # the label is the name of the folder the file is in


@dataclass(frozen=True)
class ReadImage:
    path: Path
    sha256: str
    size_bytes: int
    width: int
    height: int
    mode: str
    format: str
    # The pixels the model sees (RGB, EXIF orientation applied), kept so a run reads and decodes each file once.
    picture: Image.Image | None = field(default=None, repr=False, compare=False)
    # What kind of image the judge is told it sees, where the file says (DICOM: "chest radiograph (CR)")
    kind: str | None = None


@dataclass(frozen=True)
class ReadFailure:
    path: Path
    size_bytes: int
    sha256: str | None
    reason: str


def discover(source: str | Path, path_column: str = "path", label_column: str = "label") -> list[InputItem]:
    """A folder of images, a folder with one sub-folder per class, or a CSV manifest."""
    source = Path(source)
    if not source.exists():
        raise IngestError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise IngestError(f"{source}: expected a folder of images or a .csv manifest")
        return read_manifest(source, path_column, label_column)
    return scan_folder(source)


def scan_folder(root: Path) -> list[InputItem]:
    items = []
    root = root.absolute()  # stored paths must not depend on the directory a command is run from
    # A folder named like an image (x.jpg/) is listed too: it is reported as unreadable rather than skipped quietly.
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(root)
        # A file inside a sub-folder takes the first-level folder's name as its class label.
        label = relative.parts[0] if len(relative.parts) > 1 else None
        items.append(InputItem(path=path, label=label, from_folder=label is not None))
    return items


def read_manifest(manifest: Path, path_column: str, label_column: str) -> list[InputItem]:
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if path_column not in columns:
            raise IngestError(f"{manifest}: no column {path_column!r} (columns: {', '.join(columns)}); "
                              "choose one with --path-column")
        has_labels = label_column in columns
        if not has_labels:
            warnings.warn(f"{manifest}: no column {label_column!r} (columns: {', '.join(columns)}); the images are "
                          "unlabelled, so no prediction can be called correct or wrong", IngestWarning, stacklevel=2)
        items = []
        for row in reader:
            raw_path = (row.get(path_column) or "").strip()
            if not raw_path:
                continue
            path = Path(raw_path)
            if not path.is_absolute():
                path = manifest.absolute().parent / path
            label = (row.get(label_column) or "").strip() if has_labels else ""
            items.append(InputItem(path=path, label=label or None))
    return items


def read_file(path: Path) -> bytes:
    """The bytes of an input file: every image localjudge reads comes through here (once per run)."""
    return Path(path).read_bytes()


def read_image(path: Path, window: tuple[float, float] | None = None) -> ReadImage | ReadFailure:
    """Read and fully decode one file, so a truncated image fails here and not in the middle of a batch; the
    result keeps the picture as the model sees it."""
    if path.is_dir():
        return ReadFailure(path, 0, None, "a folder, not an image file")
    try:
        data = read_file(path)
    except OSError as error:
        return ReadFailure(path, 0, None, f"cannot read file: {error.strerror or error}")
    size = len(data)
    if size == 0:
        return ReadFailure(path, 0, None, "empty file (0 bytes)")
    if looks_like_dicom(data, path.suffix):
        try:
            identity, picture, kind = load_dicom_with_kind(data, window)
        except DicomError as error:
            return ReadFailure(path, size, hashlib.sha256(data).hexdigest(), str(error))
        return ReadImage(path, identity, size, picture.width, picture.height, picture.mode, "DICOM", picture, kind)
    digest = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode(data)
        picture = model_picture(decoded)
    except UnidentifiedImageError:
        return ReadFailure(path, size, digest, "not an image (no known image format)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return ReadFailure(path, size, digest, f"refused: {error}")
    except (OSError, SyntaxError, ValueError) as error:
        return ReadFailure(path, size, digest, f"corrupt or truncated image: {error}")
    return ReadImage(path, digest, size, decoded.width, decoded.height, decoded.mode, decoded.format or "unknown",
                     picture)


def decode(data: bytes) -> Image.Image:
    """Fully decoded (the first frame of an animation): every picture localjudge decodes comes through here. An
    image of more pixels than Pillow's limit (a decompression bomb: a small file that unpacks to gigabytes) raises
    instead of being read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        image.load()
    return image


REDACTED_PREFIX = "redacted:"


def redacted_path(path: Path | str) -> str:
    """What --redact-paths stores instead of a path: the sha256 of the absolute path. A hash, not a secret: it
    tells files apart and matches a path given again, and whoever can guess a path can confirm it."""
    return REDACTED_PREFIX + hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:32]


def is_redacted(path: str) -> bool:
    return path.startswith(REDACTED_PREFIX)


def redacted_locations(source: str | Path, path_column: str = "path", label_column: str = "label") -> dict[str, str]:
    """For a store written with --redact-paths: each redacted path of the images in `source` (the folder or
    manifest the audit read), mapped to the real path, so a later command can open the files again."""
    return {redacted_path(item.path): str(item.path) for item in discover(source, path_column, label_column)}


def jpeg_bytes(image: Image.Image, quality: int = 82) -> bytes:
    """A picture as JPEG (the report's thumbnails, the rating page's views)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


class ChangedImage(Exception):
    """A stored image's file is gone or no longer holds the picture that was ingested."""


def load_verified(path: Path, sha256: str, window: tuple[float, float] | None = None) -> Image.Image:
    """The stored image, only if its file still holds the same picture: a map or a judgment must never be computed
    from another picture than the one its prediction was made on. (A DICOM file is its pixel data: its header may
    change.)"""
    try:
        data = read_file(path)
    except OSError as error:
        raise ChangedImage(f"{path}: cannot read the stored image any more ({error.strerror or error})") from error
    if looks_like_dicom(data, Path(path).suffix):
        try:
            identity, picture = load_dicom(data, window)
        except DicomError as error:
            raise ChangedImage(f"{path}: cannot read the stored image any more ({error})") from error
        if identity != sha256:
            raise ChangedImage(f"{path}: the file has changed since it was ingested; ingest it again")
        return picture
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ChangedImage(f"{path}: the file has changed since it was ingested; ingest it again")
    return model_picture(decode(data))


def load_rgb(path) -> Image.Image:
    """The pixels a model sees of an image file (for tools and tests; a run reads through `read_image`)."""
    return model_picture(decode(read_file(path)))


def model_picture(image: Image.Image) -> Image.Image:
    """The pixels a model sees: EXIF orientation applied, greyscale, palette and alpha images as RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float greyscale (common for radiographs): stretch to 8 bits instead of clipping at 255.
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        image = Image.fromarray(pixels.astype(np.uint8))
    return image.convert("RGB")


_WNID = re.compile(r"^n\d{8}$")


def normalise_class_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def resolve_label(raw: str | None, labels: "LabelList") -> list[int] | None:
    """Map a stored label to class indices of the model's label list.

    A label is an index, a WordNet id or a class name; several may be joined with ';' (any of them counts as
    correct, as in our seg-photos manifest). Returns None when nothing in it maps to the model's classes."""
    if raw is None or raw == "":
        return None
    indices: list[int] = []
    for token in (t.strip() for t in raw.split(";")):
        if not token:
            continue
        if token.isdigit():
            index = int(token)
            if 0 <= index < len(labels.names):
                indices.append(index)
        elif _WNID.match(token) and token in labels.by_wnid:
            indices.append(labels.by_wnid[token])
        elif normalise_class_name(token) in labels.by_name:
            indices.extend(labels.by_name[normalise_class_name(token)])  # ImageNet has two cranes, two maillots
    return sorted(set(indices)) or None


class LabelsError(UserError):
    pass


@dataclass(frozen=True)
class LabelList:
    names: tuple[str, ...]
    wnids: tuple[str, ...]
    # What a class looks like, in words the judge is given with its name ("Cardiomegaly: an enlarged cardiac
    # silhouette"); "" where a class has none.
    descriptions: tuple[str, ...] = ()

    @cached_property
    def by_wnid(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.wnids) if w}

    @cached_property
    def by_name(self) -> dict[str, list[int]]:
        table: dict[str, list[int]] = {}
        for index, name in enumerate(self.names):
            table.setdefault(normalise_class_name(name), []).append(index)
        return table

    def description(self, index: int) -> str:
        return self.descriptions[index] if index < len(self.descriptions) else ""

    @classmethod
    def from_csv(cls, path: Path) -> "LabelList":
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: Path) -> "LabelList":
        """A label list: a CSV with a header naming `index` and `name` (and optionally `description` and `wnid`), or
        plain text with one class name per line, in index order."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise LabelsError(f"{path}: cannot read the label list ({error})") from error
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise LabelsError(f"{path}: the label list is empty")
        header = [c.strip().lower() for c in next(csv.reader([lines[0]]))]
        if "index" in header and "name" in header:
            rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
            try:
                indices = [int(row["index"]) for row in rows]
            except (TypeError, ValueError):
                raise LabelsError(f"{path}: every row needs an integer index") from None
            if sorted(indices) != list(range(len(rows))):
                raise LabelsError(f"{path}: the indices must be 0 to {len(rows) - 1}, each once")
            rows = [row for _, row in sorted(zip(indices, rows), key=lambda pair: pair[0])]
            names = [(row.get("name") or "").strip() for row in rows]
            wnids = tuple((row.get("wnid") or "").strip() for row in rows)
            descriptions = tuple((row.get("description") or "").strip() for row in rows)
        elif "name" in header or all(re.match(r"\s*\d+\s*,", line) for line in lines):
            raise LabelsError(f"{path}: a CSV label list needs a header naming its columns: index,name[,description]")
        else:
            names, wnids, descriptions = [line.strip() for line in lines], ("",) * len(lines), ()
        empty = [i for i, name in enumerate(names) if not name]
        if empty:
            raise LabelsError(f"{path}: class {empty[0]} has no name")
        return cls(tuple(names), wnids, descriptions if any(descriptions) else ())

    def names_digest(self) -> str:
        """The class names in order, as a short hash: what decides a prediction's labels and correctness (the
        descriptions decide only the judge's prompt, which is hashed with them)."""
        return hashlib.sha256(json.dumps(self.names).encode()).hexdigest()[:16]
