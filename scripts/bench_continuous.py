#!/usr/bin/env python
"""One continuous batch across judge calls against the per-call drain, in one run, on the transformers judge.

The vision stage is computed once (200 imagenet-sample photos by default) into a template store; each setting
judges a copy of it with the same judge settings (--max-num-seqs rows written at once, --judge-batch-size maps
handed over at a time):
- per-call drain (the anchor: the judge before this change): each batch is one `Judge.judge` call, which returns
  once its last answer has ended, so the batch's last rows are written alone while the next batch waits;
- continuous: the next batch is handed to the same decoder as soon as the last one's requests all have rows
  (`Audit.judge`, `Judge.continuous()`), so rows of two batches are written together.
Prints judging wall time and judgments/s of each, their ratio, and checks that both stored the same answers.

    python scripts/bench_continuous.py                          # both tiny models (released vocabularies), CPU
    python scripts/bench_continuous.py --vlm DIR --device cuda --images 500
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sample_data import imagenet_manifest  # noqa: E402

from localjudge.config import DEFAULTS  # noqa: E402
from localjudge.pipeline import Stage, open_audit  # noqa: E402
from localjudge.pipeline.local import run_vision  # noqa: E402


def answers(db: Path) -> dict:
    with sqlite3.connect(db) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "select saliency_id, raw_text, output_tokens, input_tokens, status from judgments")}


def judge_copy(template: Path, db: Path, config, continuous: bool) -> dict:
    shutil.copy(template, db)
    audit = open_audit(db, None, ("judge",), show_progress=False, **config.as_dict())
    with audit.recorded("judge", None):
        maps = audit.stored_saliency_maps()
        audit.judge_model()  # loaded before the clock starts, for both
        started = time.perf_counter()
        if continuous:
            stage = audit.judge(maps)
        else:
            stage = Stage()
            missing = audit.judgments_missing(maps, stage)
            size = config.judge_batch_size
            for start in range(0, len(missing), size):
                audit.judge_batch(missing[start:start + size], stage)
        seconds = time.perf_counter() - started
    audit.store.close()
    return {"seconds": seconds, "judgments": stage.computed, "per_s": stage.computed / seconds}


def bench(vlm: str, args, folder: Path) -> float:
    config = DEFAULTS.replace(judge="transformers", vlm=vlm, device=args.device, max_new_tokens=args.max_new_tokens,
                              max_num_seqs=args.max_num_seqs, judge_batch_size=args.judge_batch_size,
                              backend=args.backend)
    source = imagenet_manifest(folder / "images.csv", args.images)
    template = folder / "vision.db"
    vision = open_audit(template, source, ("ingest", "predict", "explain"), show_progress=False, **config.as_dict())
    with vision.recorded("predict", str(source)):
        run_vision(vision, source, explain=True)
    vision.store.close()
    drain = judge_copy(template, folder / "drain.db", config, continuous=False)
    queue = judge_copy(template, folder / "continuous.db", config, continuous=True)
    same = answers(folder / "drain.db") == answers(folder / "continuous.db")
    ratio = queue["per_s"] / drain["per_s"]
    print(f"\n{Path(vlm).name} ({args.device}), {drain['judgments']} judgments, --max-num-seqs {args.max_num_seqs}, "
          f"--judge-batch-size {args.judge_batch_size}, --max-new-tokens {args.max_new_tokens}")
    print(f"  {'setting':30}{'seconds':>9}{'judgments/s':>13}")
    print(f"  {'per-call drain (anchor)':30}{drain['seconds']:>9.1f}{drain['per_s']:>13.2f}")
    print(f"  {'continuous across calls':30}{queue['seconds']:>9.1f}{queue['per_s']:>13.2f}")
    print(f"  continuous / per-call: {ratio:.2f}x judgments/s; the same answers stored: {same}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlm", action="append", help="Model directory (repeatable; default: both tiny VLMs).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", help="the vision backend of the template store")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--judge-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-continuous-"))
    try:
        vlms = args.vlm
        if not vlms:
            from localjudge.testing.tiny_vlms import build_tiny_vlms

            vlms = [str(p) for p in build_tiny_vlms(folder / "tiny-vlms", "real").values()]
        ratios = {}
        for index, vlm in enumerate(vlms):
            sub = folder / str(index)
            sub.mkdir()
            ratios[Path(vlm).name] = bench(vlm, args, sub)
        print("\ncontinuous / per-call drain, judgments/s: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
