#!/usr/bin/env python
"""Judge throughput in one run: judgments/s, output tokens/s, and the share of time the judge waited on the vision
stage, for one backend and model, one-at-a-time versus batched.

1. Judge only: the vision stage is computed once into a template store; each setting judges a copy of it, so the
   judge is timed alone. judgments/s = judgments / the judge's busy seconds (the sum of its batch times).
   Anchor: one judgment at a time (the paper's code judges one image per call, and sleeps 7 s before each,
   <= 0.14 judgments/s; its sleep is left out here). Target on CPU with the tiny models: batched >= 3x.
   On the transformers backend "N at a time" is --max-num-seqs N: a row whose answer has ended leaves the batch and
   a waiting request of the same call takes its place (continuous batching), so long answers do not keep finished
   rows busy and the batch stays full.
2. Whole run: `localjudge run`'s executor from an empty store (vision and judge overlapped through a bounded
   queue) against the stages one after another, with the share of the judge stage spent waiting for maps.

    python scripts/bench_judge.py                                    # tiny Qwen2.5-VL and Gemma3, transformers
    python scripts/bench_judge.py --vlm DIR --device cuda --images 200
    python scripts/bench_judge.py --backend openai --base-url http://127.0.0.1:8000/v1 --vlm DIR
      (openai: one request at a time versus --batch requests in flight)
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
from localjudge.pipeline import Audit, open_audit  # noqa: E402
from localjudge.pipeline.local import run_local, run_vision  # noqa: E402


def judge_stats(db: Path, backend: str) -> dict:
    with sqlite3.connect(db) as conn:
        n, busy, tokens, failed = conn.execute(
            "select count(*), sum(batch_seconds * 1.0 / batch_size), sum(coalesce(output_tokens, 0)), "
            "sum(status = 'failed') from judgments where judge_backend = ?", [backend]).fetchone()
    return {"judgments": n, "busy": busy or 0.0, "tokens": tokens or 0, "failed": failed or 0}


def warm_up(audit: Audit) -> None:
    """One untimed request first, so neither setting pays for the first call's one-off costs."""
    from PIL import Image

    from localjudge.judge import JudgeRequest
    from localjudge.judge.prompts import render

    image = Image.new("RGB", (audit.config.judge_image_size,) * 2, (128, 128, 128))
    audit.judge_model().judge([JudgeRequest(image=image, label="dog",
                                            prompt=render(audit.prompt()[0], "dog"))])


def judge_only(template: Path, folder: Path, config, label: str) -> dict:
    db = folder / f"{label}.db"
    shutil.copy(template, db)
    audit = open_audit(db, None, ("judge",), show_progress=False, **config.as_dict())
    with audit.recorded("judge", None):
        warm_up(audit)
        audit.judge(audit.stored_saliency_maps())
    stats = judge_stats(db, config.judge)
    stats["per_s"] = stats["judgments"] / stats["busy"]
    stats["tokens_per_s"] = stats["tokens"] / stats["busy"]
    return stats


def whole_run(source: Path, folder: Path, config, overlapped: bool) -> dict:
    db = folder / f"whole-{'overlapped' if overlapped else 'sequential'}.db"
    audit = open_audit(db, source, ("ingest", "predict", "explain", "judge"), show_progress=False,
                       **config.as_dict())
    started = time.perf_counter()
    with audit.recorded("run", str(source)):
        if overlapped:
            stages = run_local(audit, source)
        else:
            stages = run_vision(audit, source, explain=True)
            stages["judge"] = audit.judge(stages["explain"].ids)
    seconds = time.perf_counter() - started
    judge = stages["judge"]
    waited = judge.waited_seconds / judge.seconds if overlapped and judge.seconds else None
    return {"seconds": seconds, "images_per_s": len(stages["ingest"].ids) / seconds, "waited": waited,
            "judgments": judge_stats(db, config.judge)["judgments"]}


def bench(vlm: str | None, args, folder: Path) -> float:
    base = DEFAULTS.replace(judge=args.backend, vlm=vlm, device=args.device, base_url=args.base_url,
                            api_model=args.api_model, max_new_tokens=args.max_new_tokens,
                            batch_size=args.vision_batch)
    name = Path(vlm).name if vlm else args.api_model or args.base_url
    source = imagenet_manifest(folder / "images.csv", args.images)
    template = folder / "vision.db"
    vision = open_audit(template, source, ("ingest", "predict", "explain"), show_progress=False, **base.as_dict())
    with vision.recorded("predict", str(source)):
        run_vision(vision, source, explain=True)
    vision.store.close()  # the last connection checkpoints the WAL, so a plain copy holds everything

    def setting(size: int):
        if args.backend == "openai":  # a server batches the requests it has in flight
            return base.replace(judge_batch_size=size, api_concurrency=size)
        # `size` answers written at once; the judge is handed --judge-batch requests per call (one at a
        # time: one request per call).
        return base.replace(max_num_seqs=size, judge_batch_size=1 if size == 1 else args.judge_batch)

    single = judge_only(template, folder, setting(1), "one")
    results = {size: judge_only(template, folder, setting(size), f"batch{size}") for size in args.batch}
    print(f"\n{name} on {args.backend} ({args.device}), {args.images} images, --max-new-tokens {args.max_new_tokens}")
    print(f"  {'setting':34}{'judgments/s':>12}{'tokens/s':>10}{'failed':>8}{'vs one':>9}")
    print(f"  {'one at a time (anchor)':34}{single['per_s']:>12.2f}{single['tokens_per_s']:>10.1f}{single['failed']:>8}")
    for size, stats in results.items():
        print(f"  {f'batched ({size} at a time)':34}{stats['per_s']:>12.2f}{stats['tokens_per_s']:>10.1f}"
              f"{stats['failed']:>8}{stats['per_s'] / single['per_s']:>8.2f}x")
    ratio = max(stats["per_s"] for stats in results.values()) / single["per_s"]
    target = " (target on CPU with the tiny models: >= 3)" if args.backend == "transformers" else ""
    print(f"  best batched / one-at-a-time: {ratio:.2f}x judgments/s{target}")

    many = setting(args.batch[-1])
    run_config = many
    sequential = whole_run(source, folder, run_config, overlapped=False)
    overlapped = whole_run(source, folder, run_config, overlapped=True)
    print(f"  whole run, stages one after another: {sequential['seconds']:.1f} s ({sequential['images_per_s']:.2f} img/s)")
    print(f"  whole run, vision and judge overlapped: {overlapped['seconds']:.1f} s "
          f"({overlapped['images_per_s']:.2f} img/s, {sequential['seconds'] / overlapped['seconds']:.2f}x); "
          f"the judge waited on the vision stage {overlapped['waited']:.0%} of its time")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["transformers", "openai"], default="transformers")
    parser.add_argument("--vlm", action="append", help="Model directory (repeatable; default: both tiny VLMs).")
    parser.add_argument("--base-url")
    parser.add_argument("--api-model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=lambda text: [int(v) for v in text.split(",")], default=[8, 16, 32],
                        help="Answers written at once (transformers) or requests in flight (openai) to compare "
                             "with one at a time, comma-separated; the whole-run comparison uses the last.")
    parser.add_argument("--vision-batch", type=int, default=16)
    parser.add_argument("--judge-batch", type=int, default=DEFAULTS.judge_batch_size,
                        help="Requests per judge call in the batched settings (transformers).")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    args = parser.parse_args()
    if args.backend == "openai" and not args.base_url:
        parser.error("--backend openai needs --base-url")
    folder = Path(tempfile.mkdtemp(prefix="bench-judge-"))
    vlms = args.vlm
    if not vlms and args.backend == "transformers":
        from localjudge.testing.tiny_vlms import build_tiny_vlms

        vlms = [str(p) for p in build_tiny_vlms(folder / "tiny-vlms").values()]
    ratios = {}
    for index, vlm in enumerate(vlms or [None]):
        sub = folder / str(index)
        sub.mkdir()
        ratios[Path(vlm).name if vlm else args.base_url] = bench(vlm, args, sub)
    print("\nbest batched / one-at-a-time judgments/s: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
