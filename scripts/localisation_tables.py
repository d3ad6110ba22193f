#!/usr/bin/env python
"""The localisation suite (`eval regions`) of EfficientNet-Lite0's maps, before and after the target-tensor change,
beside the trivial baselines on the same regions, as Markdown tables:

- the 70 seg-photos against their object masks, and the TBX11K radiographs against their boxes;
- Grad-CAM, Grad-CAM++, LayerCAM, ScoreCAM and EigenCAM;
- "before": the card's old target, `_bn1` (the BatchNorm output before the head's ReLU6), from a copy of the card
  without its target activation; "after": the registered card, `relu6(_bn1)`.

    python scripts/localisation_tables.py [--out localisation.md] [--cams gradcam,gradcam++,...]

Every number is `localjudge eval regions --json` output. ScoreCAM runs one forward pass per channel (1,280 for
Lite0): about 20 s an image on two CPU cores."""

from __future__ import annotations

import argparse
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
METRICS = (("pointing game", lambda t: t["pointing_game"]["mean"]),
           ("mass share", lambda t: t["energy_pointing_game"]["mean"]),
           ("rank acc.", lambda t: t["rank_accuracy"]["mean"]),
           ("PxAP", lambda t: (t.get("pxap") or {}).get("mean")),
           ("IoU@β", lambda t: t["at_beta"]["iou"]["mean"]),
           ("best IoU", lambda t: t["at_best_threshold"]["iou"]["mean"]))


def before_card(folder: Path) -> Path:
    """A copy of Lite0's card at its old target: `_bn1`, before the head's ReLU6."""
    card = load_card("efficientnet-lite0")
    fields = json.loads(Path(card.card_path).read_text())
    fields.update(name="efficientnet-lite0-bn1", target_activation=None, activation_module=None,
                  labels=str(Path(card.card_path).parent / card.labels))
    path = folder / "efficientnet-lite0-bn1.json"
    path.write_text(json.dumps(fields))
    return path


def tables(dataset: str, folder: Path, cams: list[str], model_cards: dict[str, str]) -> list[str]:
    if dataset == "seg-photos":
        source, columns = DATA / "seg-photos" / "labels.csv", ["--path-column", "file"]
        truth = ["--mask-column", "mask", "--manifest", source, "--path-column", "file"]
    else:
        source, columns = DATA / "chest-xray" / "labels.csv", ["--path-column", "file", "--label-column", "label"]
        truth = ["--boxes", DATA / "chest-xray" / "TBX11K_train.json"]
    lines = [f"\n### {dataset}\n", "| target | CAM | maps | " + " | ".join(m for m, _ in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    baselines = None
    for label, model in model_cards.items():
        db = folder / f"{dataset}-{label}.db"
        localjudge_json("predict", source, "--db", db, "--model", model, *columns)
        for cam in cams:
            started = time.perf_counter()
            localjudge_json("explain", "--db", db, "--model", model, "--cam", cam)
            found = localjudge_json("eval", "regions", "--db", db, "--model", model, "--cam", cam, *truth)
            table = found["localisation"]
            baselines = baselines or table
            cells = [("n/a" if (value := pick(table["maps"])) is None else f"{value:.3f}") for _, pick in METRICS]
            lines.append(f"| {label} | {cam} | {table['maps']['images']} | " + " | ".join(cells) + " |")
            print(f"{dataset} {label} {cam}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    for name in ("centre point", "centred gaussian", "uniform"):
        cells = [("n/a" if (value := pick(baselines[name])) is None else f"{value:.3f}") for _, pick in METRICS]
        lines.append(f"| baseline | {name} | {baselines[name]['images']} | " + " | ".join(cells) + " |")
    lines.append(f"\nMean region area in the model's view: {baselines['mean_region_area']:.1%}; β = "
                 f"{baselines['beta']}; pointing tolerance {baselines['pointing_tolerance']} px.")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("localisation.md"))
    parser.add_argument("--cams", default=",".join(CAMS))
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="localjudge-localisation-"))
    os.environ.setdefault("LOCALJUDGE_HOME", str(folder / "home"))
    cards = {"before: _bn1": str(before_card(folder)), "after: relu6(_bn1)": "efficientnet-lite0"}
    cams = [c for c in args.cams.split(",") if c]
    lines = ["## Localisation of EfficientNet-Lite0's maps, before and after the target-tensor change"]
    for dataset in ("seg-photos", "chest-xray"):
        lines += tables(dataset, folder, cams, cards)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
