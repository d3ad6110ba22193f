#!/usr/bin/env python
"""Every table of the paper's evaluation, in its shape, on ../shared/data with the models available here, written to
one Markdown file. Each number comes from a `localjudge` command's --json output (the same numbers the command
prints).

- Table 1 (agreement with ground truth and faithfulness): seg-photos (70 photos with object masks), correlation of
  the judge score with IoU, Dice, pixel accuracy, F1, deletion, insertion, Average Drop and AOPC.
- Table 2 (mask hyper-parameters): seg-photos judged under alpha x beta.
- Table 3 (prompt styles): needs a VLM judge (--vlm DIR): the recognizer reads no prompt.
- Table 4 (models side by side): imagenet-sample, EfficientNet-Lite0 and -Lite2 (the real weights available here)
  with Grad-CAM and Grad-CAM++.
- Tables 5-6 (label issues): the ImageNet experiment (labels = Lite0's own predictions), judge vs cleanlab.

The judge is the recognizer (EfficientNet-Lite2 on the attended region, its default design) unless --vlm DIR is
given.

    python scripts/reproduce_tables.py [--out tables.md] [--vlm DIR] [--images 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sample_data import DATA, imagenet_manifest, localjudge_json, seg_manifest  # noqa: E402


def number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def with_interval(c: dict) -> str:
    if c["r"] is None:
        return "n/a"
    return number(c["r"]) + ("" if c["low"] is None else f" [{c['low']:.2f}, {c['high']:.2f}]")


def bootstrap_interval(c: dict) -> str:
    return "n/a" if c.get("ci_low") is None else f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]"


def with_ci(value, interval: dict | None, digits: int) -> str:
    """A figure with its bootstrap 95 % interval."""
    if value is None:
        return "n/a"
    if not interval or interval.get("ci_low") is None:
        return number(value, digits)
    return f"{value:.{digits}f} [{interval['ci_low']:.{digits}f}, {interval['ci_high']:.{digits}f}]"


def quadrants(setting: dict) -> str:
    """judgments | CH % | CL % | WH % | WL % | average score, of one `eval sweep` or `compare` setting, each with its
    bootstrap 95 % interval."""
    percent = setting.get("percent") or {q: setting.get(q) for q in ("CH", "CL", "WH", "WL")}
    intervals = setting.get("intervals") or {}
    return " | ".join([str(setting["judgments"]),
                       *(with_ci(percent.get(q), intervals.get(q), 1) for q in ("CH", "CL", "WH", "WL")),
                       with_ci(setting["average_score"], intervals.get("average_score"), 2)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tables.md")
    parser.add_argument("--vlm", help="Judge with this Gemma-3 / Qwen2.5-VL directory instead of the recognizer.")
    parser.add_argument("--images", type=int, default=500, help="imagenet-sample images for Tables 4-6.")
    args = parser.parse_args()
    judge = ["--vlm", args.vlm] if args.vlm else []
    started = time.perf_counter()
    lines = ["# localjudge: the paper's tables on this machine's data", "",
             "Judge: " + (f"VLM {args.vlm}" if args.vlm else "the recognizer (EfficientNet-Lite2 on the attended "
                                                              "region, crop design)") + "."
             " Every number below comes from a `localjudge` command's `--json` output.", ""]
    with tempfile.TemporaryDirectory(prefix="tables-") as tmp:
        folder = Path(tmp)
        seg, seg_db = seg_manifest(folder / "seg-photos.csv"), folder / "seg.db"
        localjudge_json("run", seg, "--db", seg_db, *judge, "--masks", DATA / "seg-photos" / "masks")
        localjudge_json("eval", "faithfulness", "--db", seg_db)
        table = localjudge_json("eval", "correlate", "--db", seg_db)
        lines += ["## Table 1: the judge score against ground truth and faithfulness (seg-photos, 70 photos)", "",
                  f"Correlation with `{table['target']}`; Fisher 95 % intervals, then bootstrap ones; attention "
                  "mask = map >= 0.6.", "",
                  "| signal | n | Pearson r | bootstrap | Spearman rho | bootstrap |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['signal']} | {r['pearson']['n']} | {with_interval(r['pearson'])} | "
                  f"{bootstrap_interval(r['pearson'])} | {with_interval(r['spearman'])} | "
                  f"{bootstrap_interval(r['spearman'])} |" for r in table["correlations"]]
        regions = localjudge_json("eval", "regions", "--db", seg_db, "--masks", DATA / "seg-photos" / "masks")
        localisation = regions["localisation"]
        lines += ["", "Localisation of the maps against the masks, beside trivial baselines on the same regions "
                  f"(mean region area {localisation['mean_region_area']:.1%}):", "",
                  "| map | pointing game | mass share | rank accuracy | PxAP | IoU at beta |",
                  "|---|---|---|---|---|---|"]
        for name in ("maps", "centre point", "centred gaussian", "uniform"):
            found = localisation[name]
            lines.append(f"| {name} | {with_ci(found['pointing_game']['mean'], found['pointing_game'], 3)} | "
                         f"{with_ci(found['energy_pointing_game']['mean'], found['energy_pointing_game'], 3)} | "
                         f"{with_ci(found['rank_accuracy']['mean'], found['rank_accuracy'], 3)} | "
                         f"{with_ci(found['pxap']['mean'], found['pxap'], 3)} | "
                         f"{with_ci(found['at_beta']['iou']['mean'], found['at_beta']['iou'], 3)} |")

        sweep = localjudge_json("eval", "sweep", "--db", seg_db, *judge, "--alpha", "15,25", "--beta", "0.4,0.6,0.7")
        lines += ["", "## Table 2: mask steepness alpha and threshold beta (seg-photos)", "",
                  "| alpha | beta | judgments | CH % | CL % | WH % | WL % | average score |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['alpha']:g} | {s['beta']:g} | {quadrants(s)} |" for s in sweep["settings"]]
        lines += ["", "## Table 3: prompt styles", ""]
        if args.vlm:
            styles = localjudge_json("eval", "sweep", "--db", seg_db, *judge, "--prompt-style",
                                     "original,concise,extended")
            lines += ["| prompt style | judgments | CH % | CL % | WH % | WL % | average score |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {s['prompt_style']} | {quadrants(s)} |" for s in styles["settings"]]
        else:
            lines.append("Not applicable here: the recognizer reads no prompt. Run with `--vlm DIR`.")

        imagenet, compare_db = imagenet_manifest(folder / "imagenet.csv", args.images), folder / "compare.db"
        for model in ("efficientnet-lite0", "efficientnet-lite2"):
            for cam in ("gradcam", "gradcam++"):
                localjudge_json("run", imagenet, "--db", compare_db, "--model", model, "--cam", cam, *judge)
        compare = localjudge_json("compare", "--db", compare_db)
        lines += ["", f"## Table 4: models and CAM methods side by side (imagenet-sample, {args.images} images)", "",
                  "Bootstrap 95 % intervals (images resampled). The recognizer is EfficientNet-Lite2, and "
                  "EfficientNet-Lite1 for the Lite2 rows (a judge never grades its own weights).", "",
                  "| model | CAM | target | judge | judgments | CH % | CL % | WH % | WL % | average score |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['model']} | {s['cam']} | {s['target_layer']} | {s['judge_model']} | {quadrants(s)} |"
                  for s in compare["settings"]]

        experiment = subprocess.run([sys.executable, Path(__file__).with_name("label_issues_imagenet.py"), "--images",
                                     str(args.images), "--json", *judge], capture_output=True, text=True, check=True)
        issues = json.loads(experiment.stdout)
        lines += ["", "## Tables 5-6: label issues (imagenet-sample; labels = EfficientNet-Lite0's own predictions)",
                  "", f"{issues['samples']} images, {issues['labels_wrong']} wrong labels. Positive class: the label "
                  "is right (kept), as in the paper's Table 6. cleanlab reads "
                  f"{issues['cleanlab_probabilities']}'s probabilities (out of sample: Lite0's own cannot contradict "
                  "labels that are their argmax).", "",
                  "| method | accuracy | precision | recall | F1 | flagged |", "|---|---|---|---|---|---|"]
        lines += [f"| {m['method']} | {number(m['accuracy'])} | {number(m['precision'])} | {number(m['recall'])} | "
                  f"{number(m['f1'])} | {m['flagged']} |" for m in issues["methods"]]
    lines += ["", f"Built in {time.perf_counter() - started:.0f} s."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
