#!/usr/bin/env python
"""The localisation suite (`eval regions`) of EfficientNet-Lite0's maps, before and after the target-tensor change,
beside the trivial baselines on the same regions, as Markdown tables:

- the 70 seg-photos against their object masks, and the TBX11K radiographs against their boxes;
- Grad-CAM, Grad-CAM++, LayerCAM, ScoreCAM and EigenCAM;
- "before": the card's old target, `_bn1` (the BatchNorm output before the head's ReLU6), from a copy of the card
  without its target activation; "after": the registered card, `relu6(_bn1)`.

    python scripts/localisation_tables.py [--out localisation.md] [--cams gradcam,gradcam++,...] [--scorecam-images N]
                                          [--backend torch|onnx]

Every number is `localjudge eval regions --json` output. ScoreCAM runs one forward pass per channel (1,280 for
Lite0): about a minute an image on two CPU cores with the torch backend and 15 s with ONNX Runtime (`--backend
onnx`, whose depthwise convolutions are about four times faster on CPU), so --scorecam-images can run it on the
first N images of each set, beside the baselines of those images."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from localjudge.vision import load_card  # noqa: E402
from sample_data import DATA, localjudge_json  # noqa: E402

CAMS = ("gradcam", "gradcam++", "layercam", "scorecam", "eigencam")
METRICS = (("pointing game", lambda t: t["pointing_game"]),
           ("mass share", lambda t: t["energy_pointing_game"]),
           ("rank acc.", lambda t: t["rank_accuracy"]),
           ("PxAP", lambda t: t.get("pxap") or {}),
           ("IoU@β", lambda t: t.get("at_beta", {}).get("iou", {})),  # absent where no map was scored
           ("best IoU", lambda t: t.get("at_best_threshold", {}).get("iou", {})))


def before_card(folder: Path) -> Path:
    """A copy of Lite0's card at its old target: `_bn1`, before the head's ReLU6."""
    card = load_card("efficientnet-lite0")
    fields = json.loads(Path(card.card_path).read_text())
    fields.update(name="efficientnet-lite0-bn1", target_activation=None, activation_module=None,
                  labels=str(Path(card.card_path).parent / card.labels))
    path = folder / "efficientnet-lite0-bn1.json"
    path.write_text(json.dumps(fields))
    return path


def cell(found: dict) -> str:
    if found.get("mean") is None:
        return "n/a"
    return f"{found['mean']:.3f}" + ("" if found.get("ci_low") is None else
                                     f" [{found['ci_low']:.2f}, {found['ci_high']:.2f}]")


def subset(source: Path, columns: tuple[str, ...], count: int, out: Path) -> Path:
    """The first `count` rows of a manifest that can have a region (the radiographs: TBX11K's, which have boxes), its
    path columns made absolute (the copy lives elsewhere)."""
    with open(source, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("source_dataset", "TBX11K") == "TBX11K"][:count]
    for row in rows:
        for column in columns:
            row[column] = str(source.parent / row[column])
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def tables(dataset: str, folder: Path, cams: list[str], model_cards: dict[str, str], slow_images: int,
           backend: str) -> list[str]:
    """One table per image set: the CAMs on every image, and ScoreCAM (a forward pass per channel) on the first
    `slow_images` that can have a region; each with the trivial baselines on its own images and regions."""
    if dataset == "seg-photos":
        source, columns = DATA / "seg-photos" / "labels.csv", ["--path-column", "file"]
        truth = ["--mask-column", "mask", "--manifest", source, "--path-column", "file"]
        paths = ("file", "mask")
    else:
        source, columns = DATA / "chest-xray" / "labels.csv", ["--path-column", "file", "--label-column", "label"]
        truth = ["--boxes", DATA / "chest-xray" / "TBX11K_train.json"]
        paths = ("file",)
    fast, slow = [c for c in cams if c != "scorecam"], [c for c in cams if c == "scorecam"]
    runs = [(source, fast, "")] if fast else []
    if slow:
        runs.append((subset(source, paths, slow_images, folder / f"{dataset}-first.csv"), slow,
                     f" (first {slow_images})"))
    lines = [f"\n### {dataset}\n"]
    for manifest, chosen, suffix in runs:
        lines += ["| target | CAM | maps | " + " | ".join(m for m, _ in METRICS) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
        baselines = None
        for label, model in model_cards.items():
            db = folder / f"{dataset}-{label}{'-first' if suffix else ''}.db"
            localjudge_json("predict", manifest, "--db", db, "--model", model, "--backend", backend, *columns)
            for cam in chosen:
                started = time.perf_counter()
                localjudge_json("explain", "--db", db, "--model", model, "--cam", cam, "--backend", backend)
                table = localjudge_json("eval", "regions", "--db", db, "--model", model, "--cam", cam,
                                        "--backend", backend, *truth)["localisation"]
                # the baselines on the regions of the most maps (a method whose every map was degenerate has none)
                if baselines is None or table["maps"]["images"] > baselines["maps"]["images"]:
                    baselines = table
                cells = [cell(pick(table["maps"])) for _, pick in METRICS]
                lines.append(f"| {label} | {cam}{suffix} | {table['maps']['images']} | " + " | ".join(cells) + " |")
                print(f"{dataset} {label} {cam}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for name in ("centre point", "centred gaussian", "uniform"):
            cells = [cell(pick(baselines[name])) for _, pick in METRICS]
            lines.append(f"| baseline | {name}{suffix} | {baselines[name]['images']} | " + " | ".join(cells) + " |")
        area = baselines["mean_region_area"]
        lines.append(f"\nMean region area in the model's view{suffix}: {'n/a' if area is None else f'{area:.1%}'}; β = "
                     f"{baselines['beta']}; pointing tolerance {baselines['pointing_tolerance']} px. A map that is "
                     "all zero or flat is no finding and is left out (the maps column counts the rest).\n")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("localisation.md"))
    parser.add_argument("--cams", default=",".join(CAMS))
    parser.add_argument("--folder", type=Path, help="an earlier run's folder: its stored maps are used again")
    parser.add_argument("--scorecam-images", type=int, default=70,
                        help="ScoreCAM on the first N images of each set (it takes a minute an image on two cores)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="localjudge-localisation-"))
    os.environ.setdefault("LOCALJUDGE_HOME", str(folder / "home"))
    cards = {"before: _bn1": str(before_card(folder)), "after: relu6(_bn1)": "efficientnet-lite0"}
    cams = [c for c in args.cams.split(",") if c]
    lines = ["## Localisation of EfficientNet-Lite0's maps, before and after the target-tensor change",
             f"\nBackend: {args.backend}."]
    for dataset in ("seg-photos", "chest-xray"):
        lines += tables(dataset, folder, cams, cards, args.scorecam_images, args.backend)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
