"""Model bundles: the files an audit needs (a vision model's card, labels and weights; a VLM directory), packed on
a connected machine with a sha256 manifest, carried to the air-gapped one, verified there file by file, and named
by the hash of their manifest in every run that uses them.

Layout of a bundle folder:
    manifest.json          format, what the bundle is for, and every other file with its size and sha256
    vision/<name>.json     the card (labels path and weights rewritten to the bundle's own files)
    vision/labels/…        the card's label list
    vision/<weights file>  the weights (a state dict, or the ONNX graph for an ONNX card)
    vlm/<dir name>/…       the judge's model directory, as given"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

from . import __version__
from .errors import UserError
from .store import sha256_file

FORMAT = "localjudge-bundle/1"
MANIFEST = "manifest.json"


class BundleError(UserError):
    pass


def manifest_hash(folder: Path) -> str:
    return "sha256:" + hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def create_bundle(out: Path, model: str, weights: Path | None = None, vlm: Path | None = None,
                  card: str | None = None) -> dict:
    """Pack `model` (a registered name, a card file, or an ONNX file with its card; its embedded weights or
    `weights`) and `vlm` into `out`."""
    from .vision import resolve_card
    from .vision.cards import _resolve, embedded_weights_path

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out}: not empty; a bundle is written into a new folder")
    card = resolve_card(model, card)
    fields = {k: v for k, v in card.__dict__.items() if k != "card_path"}
    (out / "vision" / "labels").mkdir(parents=True)
    labels = _resolve(card.card_path, card.labels)
    shutil.copyfile(labels, out / "vision" / "labels" / labels.name)
    fields["labels"] = f"labels/{labels.name}"
    vision = {"card": f"vision/{card.name}.json", "weights": None}
    if card.framework == "onnx":
        graph = _resolve(card.card_path, card.onnx_file)
        shutil.copyfile(graph, out / "vision" / graph.name)
        fields["onnx_file"] = graph.name
    else:
        source = Path(weights) if weights else embedded_weights_path(card)
        if source is None:
            raise BundleError(f"{card.name}: no weights to pack; pass --weights FILE (a state dict)")
        if not source.is_file():
            raise BundleError(f"{source}: weights file not found")
        shutil.copyfile(source, out / "vision" / source.name)
        vision["weights"] = f"vision/{source.name}"
        # In the bundle the weights are a file given with the card, checked by the manifest.
        fields["weights"] = "bundle"
        fields["weights_sha256"] = None
    fields["mean"], fields["std"] = list(card.mean), list(card.std)
    (out / vision["card"]).write_text(json.dumps(fields, indent=2) + "\n")
    judge = None
    if vlm is not None:
        vlm = Path(vlm)
        if not (vlm / "config.json").is_file():
            raise BundleError(f"{vlm}: not a model directory (no config.json)")
        shutil.copytree(vlm, out / "vlm" / vlm.name)
        judge = f"vlm/{vlm.name}"
    files = [{"path": p.relative_to(out).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(out.rglob("*")) if p.is_file()]
    manifest = {"format": FORMAT, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "localjudge": __version__, "model": card.name, "vision": vision, "vlm": judge, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return {"out": str(out), "manifest_hash": manifest_hash(out), "files": len(files),
            "bytes": sum(f["size"] for f in files)}


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder}: not a bundle (no {MANIFEST})") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"{path}: damaged manifest ({error})") from error
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: unknown bundle format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def verify_bundle(folder: Path, hash_file=sha256_file) -> dict:
    """Every file of the manifest present with its size and sha256, and no other file: problems listed by file."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    listed = set()
    for entry in manifest["files"]:
        path = folder / entry["path"]
        listed.add(entry["path"])
        if ".." in Path(entry["path"]).parts or Path(entry["path"]).is_absolute():
            problems.append({"file": entry["path"], "problem": "points outside the bundle"})
        elif not path.is_file():
            problems.append({"file": entry["path"], "problem": "missing"})
        elif path.stat().st_size != entry["size"]:
            problems.append({"file": entry["path"], "problem": f"size {path.stat().st_size}, expected {entry['size']}"})
        elif hash_file(path) != entry["sha256"]:
            problems.append({"file": entry["path"], "problem": "sha256 differs: the file has changed"})
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != MANIFEST and relative not in listed:
            problems.append({"file": relative, "problem": "not in the manifest"})
    return {"bundle": str(folder), "manifest_hash": manifest_hash(folder), "files": len(manifest["files"]),
            "ok": not problems, "problems": problems}


def bundle_options(folder: Path, hash_file=sha256_file) -> dict:
    """The run options a verified bundle gives: its card, weights and VLM directory, and its manifest hash."""
    result = verify_bundle(folder, hash_file)
    if not result["ok"]:
        listed = "; ".join(f"{p['file']}: {p['problem']}" for p in result["problems"][:5])
        raise BundleError(f"{folder}: the bundle does not verify ({listed})")
    manifest = read_manifest(folder)
    folder = Path(folder).absolute()
    options = {"model": str(folder / manifest["vision"]["card"]), "bundle_hash": result["manifest_hash"]}
    if manifest["vision"].get("weights"):
        options["weights"] = str(folder / manifest["vision"]["weights"])
    if manifest.get("vlm"):
        options["vlm"] = str(folder / manifest["vlm"])
    return options
