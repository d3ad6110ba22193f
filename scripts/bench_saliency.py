#!/usr/bin/env python
"""Saliency throughput in one run: same model, same real images, batch 16.

Prints img/s of pytorch-grad-cam (the anchor), a plain ONNX Runtime forward, and our CAM engine on ONNX Runtime and
on torch for each method, with the ratios the ONNX Runtime issue asks for:
  speedup = our ONNX Runtime GradCAM img/s / pytorch-grad-cam GradCAM img/s   (target >= 3)
  overhead = our ONNX Runtime GradCAM time / plain ONNX Runtime forward time  (target <= 1.3)

    python scripts/bench_saliency.py --model efficientnet-lite0 --model resnet18 [--images 64] [--scorecam]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from localjudge.data import load_rgb
from localjudge.saliency.engine import CamEngine
from localjudge.saliency.methods import METHODS
from localjudge.testing.gradcam_reference import REFERENCE_CLASSES, PytorchGradCam
from localjudge.vision import load_card, open_model
from localjudge.vision.preprocess import to_tensor

DATA = Path(os.environ.get("LOCALJUDGE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BATCH = 16


def images(count: int) -> list:
    with open(DATA / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [load_rgb(DATA / "imagenet-sample" / r["file"]) for r in rows]


def timed(fn, batches, repeats: int = 2) -> float:
    """Best of `repeats` passes over all batches (after one warm-up batch), in images per second."""
    fn(batches[0])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            fn(batch)
        best = min(best, time.perf_counter() - started)
    return sum(len(b[0]) for b in batches) / best


def bench(model_name: str, pictures: list, scorecam: bool) -> None:
    card = load_card(model_name)
    torch_model = open_model(card, None, "cpu", "torch")
    onnx_model = open_model(card, None, "cpu", "onnx")
    tensor = to_tensor(pictures, card)
    targets = torch_model.predict(tensor).argmax(axis=1).tolist()
    batches = [(tensor[i:i + BATCH], targets[i:i + BATCH]) for i in range(0, len(targets), BATCH)]
    print(f"\n{card.name}: {len(targets)} images, batch {BATCH}, {torch.get_num_threads()} torch threads, "
          f"ONNX Runtime on {onnx_model.execution_provider}")
    forward = timed(lambda b: onnx_model.forward_outputs(b[0]), batches)
    print(f"  {'ONNX Runtime forward (plain)':44} {forward:8.1f} img/s")
    results = {}
    methods = [m for m in METHODS if (m != "scorecam" or scorecam) and (m != "cam" or card.linear_head)]
    for method in methods:
        few = batches[:1] if method == "scorecam" else batches
        if method in REFERENCE_CLASSES:
            with PytorchGradCam(method, torch_model) as reference:
                results[(method, "pytorch-grad-cam")] = timed(lambda b: reference.compute(*b), few, repeats=1)
        for label, model in (("ours, ONNX Runtime", onnx_model), ("ours, torch", torch_model)):
            engine = CamEngine(method, model)
            results[(method, label)] = timed(lambda b: engine.compute(*b), few, repeats=1 if method == "scorecam" else 2)
        line = "  ".join(f"{label} {results[(method, label)]:7.1f}" for label in
                         ("pytorch-grad-cam", "ours, ONNX Runtime", "ours, torch") if (method, label) in results)
        print(f"  {method:12} img/s  {line}")
    ours, anchor = results[("gradcam", "ours, ONNX Runtime")], results[("gradcam", "pytorch-grad-cam")]
    print(f"  GradCAM speedup, ONNX Runtime engine vs pytorch-grad-cam: {ours / anchor:.2f}x (target >= 3)")
    print(f"  GradCAM time / plain ONNX Runtime forward time:          {forward / ours:.2f}x (target <= 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="registered model (repeatable)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--scorecam", action="store_true", help="also ScoreCAM (slow: one forward per channel)")
    args = parser.parse_args()
    os.environ.setdefault("LOCALJUDGE_HOME", tempfile.mkdtemp(prefix="localjudge-bench-"))
    warnings.simplefilter("ignore")
    pictures = images(args.images)
    for name in args.model or ["efficientnet-lite0", "resnet18"]:
        bench(name, pictures, args.scorecam)


if __name__ == "__main__":
    main()
