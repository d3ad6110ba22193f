#!/usr/bin/env python
"""Faithfulness metrics (deletion and insertion AUC, AOPC, Average Drop, Increase in Confidence) on the same real
images, maps and step counts, timed three ways, in one run:

1. ours (`Audit.faithfulness`) on the ONNX Runtime backend, and on the torch backend: all perturbed inputs of a
   few images per forward pass (64 inputs);
2. anchor: torchcam's `DeletionInsertionMetric(steps, batch_size=32)`, already batched (deletion and insertion
   only: it does less than we do);
3. anchor: one image and one perturbed input at a time, as the paper's code scores images.

Targets: ours on ONNX Runtime >= 1.5x torchcam, >= 10x one at a time. The maps are a run's stored Grad-CAM maps of
EfficientNet-Lite0 (real weights) on imagenet-sample; model loading and ONNX export are outside the timings.

    python scripts/bench_faithfulness.py [--images 20] [--steps 20]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sample_data import imagenet_manifest

from localjudge.analysis.faithfulness import area, curves, perturbed_inputs, relevance_ranks, step_counts
from localjudge.data import load_rgb
from localjudge.pipeline import open_audit
from localjudge.pipeline.local import run_vision
from localjudge.store import Store, unpack_array
from localjudge.testing.torchcam_reference import StoredMaps
from localjudge.vision.preprocess import to_tensor


def build_maps(folder: Path, count: int) -> Path:
    manifest = imagenet_manifest(folder / "images.csv", count)
    db = folder / "maps.db"
    audit = open_audit(db, manifest, ("ingest", "predict", "explain"), show_progress=False, device="cpu")
    with audit.recorded("bench", str(manifest)):
        run_vision(audit, manifest, explain=True)
    audit.store.close()
    return db


def ours(template: Path, folder: Path, backend: str, steps: int) -> tuple[float, list[dict]]:
    db = folder / f"{backend}.db"
    shutil.copy(template, db)
    audit = open_audit(db, None, ("faithfulness",), show_progress=False, device="cpu", backend=backend,
                       faithfulness_steps=steps)
    ids = [row["id"] for row in audit.store.query("select id from saliency_maps order by id")]
    model = audit.vision_model()  # loaded (and for ONNX exported) before the clock starts
    model.predict(torch.zeros(2, 3, audit.card.crop, audit.card.crop))
    with audit.recorded("bench", None):
        started = time.perf_counter()
        audit.faithfulness(ids)
        seconds = time.perf_counter() - started
    rows = list(audit.store.query("select * from faithfulness order by saliency_id"))
    audit.store.close()
    return seconds, rows


def inputs_and_maps(template: Path):
    store = Store(template)
    maps = list(store.query("select * from saliency_maps order by id"))
    paths = {i["sha256"]: i["path"] for i in store.images([m["image_sha256"] for m in maps])}
    store.close()
    audit = open_audit(template, None, (), show_progress=False, device="cpu")
    card, module = audit.card, audit.vision_model().module.eval()
    audit.store.close()
    images = to_tensor([load_rgb(Path(paths[m["image_sha256"]])) for m in maps], card)
    saliency = torch.stack([torch.from_numpy(unpack_array(m["map"], (m["height"], m["width"]))) for m in maps])
    return module, images, saliency, [m["target_index"] for m in maps]


def torchcam_metric(module, images, saliency, targets, steps: int) -> tuple[float, np.ndarray]:
    from torchcam.metrics import DeletionInsertionMetric

    deletion = []
    started = time.perf_counter()
    metric = DeletionInsertionMetric(StoredMaps(module, saliency), partial(torch.softmax, dim=-1), steps=steps,
                                     batch_size=32)
    metric.update(images, class_idx=targets)
    seconds = time.perf_counter() - started
    for index in range(len(targets)):  # per-image values for the agreement check (not timed)
        one = DeletionInsertionMetric(StoredMaps(module, saliency[index:index + 1]), partial(torch.softmax, dim=-1),
                                      steps=steps)
        one.update(images[index:index + 1], class_idx=[targets[index]])
        deletion.append(one.deletion)
    return seconds, np.asarray(deletion)


@torch.inference_mode()
def one_at_a_time(module, images, saliency, targets, steps: int) -> float:
    """Each perturbed input scored by its own forward pass (batch of one), as the paper's code scores images."""
    started = time.perf_counter()
    counts = step_counts(images.shape[2] * images.shape[3], steps)
    ranks = relevance_ranks(saliency)
    for index, target in enumerate(targets):
        image = images[index]
        batch = torch.cat([image.unsqueeze(0), (image * saliency[index]).unsqueeze(0),
                           perturbed_inputs(image, torch.zeros_like(image), ranks[index], counts)])
        scores = np.array([float(torch.softmax(module(x.unsqueeze(0)), dim=-1)[0, target]) for x in batch])
        deletion, insertion = curves(scores[0], scores[2:], len(counts))
        area(deletion, counts), area(insertion, counts)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-faithfulness-"))
    try:
        template = build_maps(folder, args.images)
        onnx_seconds, onnx_rows = ours(template, folder, "onnx", args.steps)
        torch_seconds, torch_rows = ours(template, folder, "torch", args.steps)
        module, images, saliency, targets = inputs_and_maps(template)
        torchcam_seconds, torchcam_deletion = torchcam_metric(module, images, saliency, targets, args.steps)
        single_seconds = one_at_a_time(module, images, saliency, targets, args.steps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    n = args.images
    forwards = 2 * (len(step_counts(224 * 224, args.steps)) - 2) + 3
    print(f"\nfaithfulness of {n} Grad-CAM maps (EfficientNet-Lite0, imagenet-sample), {args.steps} steps, "
          f"{forwards} model inputs per image (deletion + insertion + AD/IC)")
    print(f"  {'method':52}{'seconds':>9}{'images/s':>10}")
    for name, seconds in [("ours, ONNX Runtime backend", onnx_seconds), ("ours, torch backend", torch_seconds),
                          ("torchcam DeletionInsertionMetric (batch 32; D/I only)", torchcam_seconds),
                          ("one input at a time (the paper's way), torch", single_seconds)]:
        print(f"  {name:52}{seconds:>9.2f}{n / seconds:>10.2f}")
    print(f"  ours (ONNX Runtime) vs torchcam: {torchcam_seconds / onnx_seconds:.2f}x (target >= 1.5)")
    print(f"  ours (ONNX Runtime) vs one at a time: {single_seconds / onnx_seconds:.2f}x (target >= 10)")
    onnx_deletion = np.array([r["deletion_auc"] for r in onnx_rows])
    torch_deletion = np.array([r["deletion_auc"] for r in torch_rows])
    print(f"  agreement: |ours torch - torchcam| deletion AUC max {np.abs(torch_deletion - torchcam_deletion).max():.2e}"
          f"; |ours ONNX - ours torch| max {np.abs(onnx_deletion - torch_deletion).max():.2e}")


if __name__ == "__main__":
    main()
