#!/usr/bin/env python
"""The paper's ImageNet label-noise experiment (its Table 6) on ../shared/data/imagenet-sample, offline.

1. EfficientNet-Lite0 predicts every image; its predictions become the images' "noisy" labels (automatic
   relabelling), and the truth is whether each prediction matches the real label.
2. `localjudge run` on the relabelled images: Grad-CAM maps, judged (default: the recognizer, EfficientNet-Lite2 on
   the attended region; or --vlm DIR).
3. `localjudge eval label-issues`: the judge's verdicts against cleanlab's filters (CL, PNR, LSC, LNM), and keep-all
   (Lite0's labels taken as they are). cleanlab is given EfficientNet-Lite2's probabilities on the whole images: it
   expects out-of-sample probabilities, and Lite0's own cannot contradict labels that are their argmax (with them
   every filter flags nothing; --cleanlab-on-lite0 shows it).

    python scripts/label_issues_imagenet.py [--images 500] [--db label-issues.db] [--vlm DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from localjudge.cli import cli  # noqa: E402
from sample_data import label_noise  # noqa: E402


def localjudge(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        sys.exit(f"localjudge {' '.join(map(str, args))} failed:\n{result.output}")
    return result.stdout


def experiment(folder: Path, db: Path, images: int, vlm: str | None, own_probabilities: bool = False) -> dict:
    noisy, truth = label_noise(folder, images, db)
    localjudge("run", noisy, "--db", db, *(["--vlm", vlm] if vlm else []), "--json")
    if own_probabilities:
        return json.loads(localjudge("eval", "label-issues", "--db", db, "--truth", truth, "--json"))
    localjudge("predict", noisy, "--db", db, "--model", "efficientnet-lite2", "--json")
    return json.loads(localjudge("eval", "label-issues", "--db", db, "--truth", truth, "--probs-model",
                                 "efficientnet-lite2", "--json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--db", help="Keep the audit in this file (default: a temporary one).")
    parser.add_argument("--vlm", help="Judge with this VLM directory instead of the recognizer.")
    parser.add_argument("--cleanlab-on-lite0", action="store_true",
                        help="Give cleanlab Lite0's own probabilities (the labels' source) instead of Lite2's.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="label-issues-") as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "audit.db"
        table = experiment(Path(tmp), db, args.images, args.vlm, args.cleanlab_on_lite0)
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"\nImageNet label noise from EfficientNet-Lite0's own predictions: {table['samples']} images, "
          f"{table['labels_wrong']} wrong labels; judge {table['judge']['judge_model']}; cleanlab on "
          f"{table['cleanlab_probabilities']}'s probabilities")
    print("| method | accuracy | precision | recall | F1 | flagged |\n|---|---|---|---|---|---|")
    for m in table["methods"]:
        print(f"| {m['method']} | {m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
              f"| {m['flagged']} |")


if __name__ == "__main__":
    main()
