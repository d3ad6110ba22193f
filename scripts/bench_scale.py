#!/usr/bin/env python
"""Memory and time of `localjudge run` as the dataset grows: peak RSS and images/s at 1k, 5k and 10k images.

What it does:
1. Writes N distinct images (default 10,000) to a temporary folder: seeded variants of the 500 imagenet-sample photos
   (../shared/data, read in place), each a random crop (60-100 % of each side), a horizontal flip with p 0.5 and a
   colour jitter (brightness, contrast, saturation x0.8-1.2), saved as JPEG quality 90. The store keys images by
   sha256, so the files are checked to differ byte for byte. A manifest (path,label) gives each variant its source
   photo's ImageNet index.
2. Runs the main job on them in a subprocess, so the memory measured is the job's own:
       python -m localjudge run MANIFEST --db DB      (default judge: the recognizer; default backend)
   Every ~0.5 s it samples the job's RSS (with its children's) and reads the store (read-only) for how many images
   are done: judged, or with a degenerate map that is never judged. When that first reaches a checkpoint (default
   1000, 5000, 10000; N/10, N/2, N for another N) it notes the elapsed time and the RSS, current and peak so far.
3. Prints a table per checkpoint and two verdicts:
   - memory: RSS after the last checkpoint within 10 % of RSS after the first (target <= +10 %). RSS swings by about
     a gigabyte within each judge batch (its batch of activations comes and goes), so "RSS after n" is the median of
     the samples over the last N/20 images before n (500 of 10,000; at least 128); the window's max and the peak so
     far are printed too. Work held per image for the whole run (ids, paths, views) would show as growth here. With
     a few hundred images the first window holds one sample (the count moves 64 judged images at a time): a smoke
     test, not a measurement.
   - time: linear in n. Judged by the seconds per image of the last segment (5k->10k) over the middle one (1k->5k);
     both are steady-state, whereas the first segment also pays for process start and model loading. Target <= 1.15.
     The R^2 of a straight line through every (images done, elapsed) sample after the first checkpoint is printed too.

Run (10k images: minutes to write, then the job; nothing else heavy on the machine):
    python scripts/bench_scale.py
    python scripts/bench_scale.py --images 300                  # a quick check (checkpoints 30/150/300)
    python scripts/bench_scale.py --backend torch --batch-size 32 --json --keep
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sample_data import imagenet_rows

try:
    import psutil
except ImportError:  # RSS is then read from /proc (Linux only)
    psutil = None

REPO = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.5
RSS_TARGET = 0.10  # RSS after the last checkpoint at most 10 % above RSS after the first
LINEAR_TARGET = 1.15  # seconds per image of the last segment at most 15 % above the middle segment's


# --- 1. the images -------------------------------------------------------------------------------------------------
def variant(picture, rng):
    """One seeded variant of a picture: crop, maybe flip, colour jitter."""
    from PIL import Image, ImageEnhance

    width, height = picture.size
    crop_w = max(1, round(width * rng.uniform(0.6, 1.0)))
    crop_h = max(1, round(height * rng.uniform(0.6, 1.0)))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    out = picture.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(rng.uniform(0.8, 1.2))
    return out


def write_variants(task: tuple) -> list[tuple[int, str, str]]:
    """All variants of one source photo (it is decoded once): (index, file, sha256) each. The seed of a variant is
    (seed, index, attempt), so the set of files depends on neither the worker count nor the order they finish."""
    import io

    import numpy as np
    from PIL import Image

    source, indices, stem, folder, seed = task
    with Image.open(source) as handle:
        picture = handle.convert("RGB")
    written = []
    for index in indices:
        rng = np.random.default_rng([seed, index])
        data = io.BytesIO()
        variant(picture, rng).save(data, "JPEG", quality=90)
        path = Path(folder) / f"{index:05d}_{stem}.jpg"
        path.write_bytes(data.getvalue())
        written.append((index, str(path), hashlib.sha256(data.getvalue()).hexdigest()))
    return written


def write_images(count: int, folder: Path, seed: int, workers: int) -> Path:
    """`count` distinct variants of the 500 photos (image i from photo i mod 500) and their manifest."""
    sources = imagenet_rows()
    images = folder / "images"
    images.mkdir()
    # one task per source photo, so each photo is decoded once however many variants it has
    by_source: dict[int, list[int]] = {}
    for index in range(count):
        by_source.setdefault(index % len(sources), []).append(index)
    tasks = [(sources[s]["path"], indices, Path(sources[s]["file"]).stem, str(images), seed)
             for s, indices in by_source.items()]
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:  # JPEG encoding is CPU-bound: processes, not threads
            results = [row for chunk in pool.imap_unordered(write_variants, tasks, chunksize=4) for row in chunk]
    else:
        results = [row for task in tasks for row in write_variants(task)]
    results.sort()
    seen: dict[str, str] = {}
    for index, path, sha in results:
        if sha in seen:  # the store would ingest it once: fewer images than asked, and rates off
            sys.exit(f"duplicate image: {path} has the bytes of {seen[sha]}; try another --seed")
        seen[sha] = path
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        # path relative to the manifest, as localjudge reads it; the label is the source photo's ImageNet index
        writer.writerows((Path(path).relative_to(folder).as_posix(), sources[index % len(sources)]["imagenet_index"])
                         for index, path, _ in results)
    return manifest


# --- 2. the job and its measurements -------------------------------------------------------------------------------
def rss_bytes(pid: int) -> tuple[int, int]:
    """The job's resident memory now (with its children's) and its kernel-recorded peak (VmHWM, the main process
    only: it also catches spikes between two samples)."""
    hwm = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        hwm = int(fields.get("VmHWM", "0 kB").split()[0]) * 1024
        current = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    except (OSError, ValueError):
        current = 0
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            current = parent.memory_info().rss
            for child in parent.children(recursive=True):
                try:
                    current += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return current, hwm


class Progress:
    """Images done so far, from the store the job writes (read-only, so it never holds the write lock)."""

    def __init__(self, db: Path):
        self.db = db
        self.conn: sqlite3.Connection | None = None
        self.maps_seen = 0  # rowid of the last saliency_maps row counted
        self.degenerate = 0

    def done(self) -> int | None:
        try:
            if self.conn is None:
                if not self.db.exists():
                    return None
                self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.2)
            # count(*) reads the smallest index of judgments: a few bytes a row, cheap however many rows
            judged = self.conn.execute("select count(*) from judgments").fetchall()[0][0]
            # A degenerate map is stored but never judged: its image is done too. Only the maps stored since the
            # last poll are read (maps are only inserted, their failure with them), so a poll costs the same at 10k
            # images as at 1k and the monitor's share of the CPU does not grow with n.
            last, new = self.conn.execute("select max(rowid), sum(failure is not null) from saliency_maps "
                                          "where rowid > ?", (self.maps_seen,)).fetchall()[0]
            if last is not None:
                self.maps_seen, self.degenerate = last, self.degenerate + (new or 0)
            return judged + self.degenerate
        except sqlite3.Error:  # the store is still being created or migrated
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def window_size(checkpoints: list[int]) -> int:
    """Half the first checkpoint's images (500 of 10,000), and at least two judge batches (64 images each by
    default): the store's count of judged images moves a judge batch at a time."""
    return max(checkpoints[0] // 2, 128)


def rss_window(trace: list[dict], checkpoint: int, images: int) -> list[float]:
    """The RSS samples (MB) of the last `images` images before a checkpoint (the latest sample at least). RSS at one
    instant swings by a gigabyte within each judge batch (the judge's batch of activations comes and goes), so one
    sample says little; the median over a window is the level, its max the steady-state top."""
    window = [s["rss_mb"] for s in trace if s["done"] and s["done"] > checkpoint - images]
    return window or [trace[-1]["rss_mb"]]


def run_job(manifest: Path, db: Path, checkpoints: list[int], passthrough: list[str], log: Path) -> dict:
    """Run the job, sampling RSS and progress; what it was like at each checkpoint, and every sample."""
    window_images = window_size(checkpoints)
    command = [sys.executable, "-m", "localjudge", "run", str(manifest), "--db", str(db), *passthrough]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    reached: list[dict] = []
    samples: list[tuple[int, float]] = []  # (images done, elapsed s) at each poll once the store exists
    trace: list[dict] = []  # the RSS over time, to see when the peak happened (start-up or steady state)
    peak, peak_at, current = 0, 0.0, 0
    progress = Progress(db)
    started = time.perf_counter()
    cpu_started = time.process_time()  # this process only samples and polls: its CPU time is the overhead
    with open(log, "w") as output:
        job = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            while True:
                finished = job.poll() is not None
                elapsed = time.perf_counter() - started
                if not finished:
                    current, hwm = rss_bytes(job.pid)
                    if max(current, hwm) > peak:
                        peak, peak_at = max(current, hwm), elapsed
                done = progress.done()
                if not finished:
                    trace.append({"elapsed_s": round(elapsed, 2), "done": done, "rss_mb": round(current / 2**20, 1)})
                elif not trace:
                    trace.append({"elapsed_s": round(elapsed, 2), "done": done, "rss_mb": 0.0})
                if done is not None:
                    samples.append((done, elapsed))
                    while len(reached) < len(checkpoints) and done >= checkpoints[len(reached)]:
                        checkpoint = checkpoints[len(reached)]
                        window = rss_window(trace, checkpoint, window_images)
                        reached.append({"checkpoint": checkpoint, "done": done, "elapsed_s": elapsed,
                                        "rss_mb": current / 2**20, "window_median_mb": statistics.median(window),
                                        "window_max_mb": max(window), "peak_mb": peak / 2**20})
                if finished:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            if job.poll() is None:  # interrupted: leave no job behind
                job.terminate()
                job.wait()
            progress.close()
    total = time.perf_counter() - started
    monitor_cpu = time.process_time() - cpu_started
    first_done = next((t for d, t in samples if d > 0), None)
    return {"returncode": job.returncode, "seconds": total, "reached": reached, "samples": samples, "trace": trace,
            "peak_mb": peak / 2**20, "peak_at_s": peak_at, "first_done_s": first_done, "monitor_cpu_s": monitor_cpu,
            "done": samples[-1][0] if samples else 0, "command": command}


# --- 3. the verdicts -----------------------------------------------------------------------------------------------
def segments(reached: list[dict]) -> list[dict]:
    """Each checkpoint with images/s over its segment (from the previous checkpoint, or the start) and cumulative."""
    rows, before_done, before_s = [], 0, 0.0
    for point in reached:
        span = point["elapsed_s"] - before_s
        rows.append({**point, "segment_ips": (point["done"] - before_done) / span if span > 0 else None,
                     "cumulative_ips": point["done"] / point["elapsed_s"] if point["elapsed_s"] > 0 else None,
                     "segment_s_per_image": span / (point["done"] - before_done) if point["done"] > before_done
                     else None})
        before_done, before_s = point["done"], point["elapsed_s"]
    return rows


def r_squared(samples: list[tuple[int, float]]) -> float | None:
    n = len(samples)
    if n < 3:
        return None
    xs, ys = [float(d) for d, _ in samples], [t for _, t in samples]
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    syy = sum((y - mean_y) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return sxy * sxy / (sxx * syy)


def verdicts(rows: list[dict], samples: list[tuple[int, float]], first: int) -> dict:
    result: dict = {"rss_growth": None, "rss_ok": None, "window_max_growth": None, "peak_growth": None,
                    "time_ratio": None, "time_ok": None, "r_squared": None}
    if len(rows) == 3:
        # the level (median over the window before each checkpoint), not one sample of a sawtooth
        result["rss_growth"] = rows[2]["window_median_mb"] / rows[0]["window_median_mb"] - 1
        result["rss_ok"] = result["rss_growth"] <= RSS_TARGET
        result["window_max_growth"] = rows[2]["window_max_mb"] / rows[0]["window_max_mb"] - 1
        result["peak_growth"] = rows[2]["peak_mb"] / rows[0]["peak_mb"] - 1
        middle, last = rows[1]["segment_s_per_image"], rows[2]["segment_s_per_image"]
        if middle and last:
            result["time_ratio"] = last / middle
            result["time_ok"] = result["time_ratio"] <= LINEAR_TARGET
    # steady state only: samples before the first checkpoint include start-up and model loading
    steady = [(d, t) for d, t in samples if d >= first]
    # one sample per count, the first to see it: the count moves a judge batch at a time and sits still in between
    first_seen: dict[int, float] = {}
    for d, t in steady:
        first_seen.setdefault(d, t)
    result["r_squared"] = r_squared(list(first_seen.items()))
    return result


def show(report: dict) -> None:
    print(f"images: {report['images']} written in {report['write_seconds']:.1f} s ({report['folder']})")
    print(f"job: {' '.join(report['command'][1:])}")
    print(f"job: exit {report['returncode']}, {report['done']} images done in {report['job_seconds']:.1f} s "
          f"(first ones stored after {report['first_done_s'] or 0:.1f} s: start-up, model loading, a first batch)")
    print(f"job: peak RSS {report['peak_mb']:.0f} MB, reached {report['peak_at_s']:.1f} s in ({report['rss_source']})")
    print(f"monitor: {report['monitor_cpu_s']:.1f} s CPU sampling RSS and polling the store")
    print()
    print(f"{'checkpoint':>10} {'done':>7} {'elapsed s':>10} {'seg img/s':>10} {'cum img/s':>10} "
          f"{'RSS MB':>8} {'win med':>8} {'win max':>8} {'peak MB':>8}")
    for row in report["checkpoints"]:
        print(f"{row['checkpoint']:>10} {row['done']:>7} {row['elapsed_s']:>10.1f} "
              f"{row['segment_ips'] or 0:>10.2f} {row['cumulative_ips'] or 0:>10.2f} "
              f"{row['rss_mb']:>8.0f} {row['window_median_mb']:>8.0f} {row['window_max_mb']:>8.0f} "
              f"{row['peak_mb']:>8.0f}")
    print(f"(RSS MB: the sample when the checkpoint was reached; win med / win max: over the last "
          f"{report['window_images']} images before it; peak MB: highest so far, start-up included)")
    missed = [c for c in report["checkpoints_asked"] if c not in {r["checkpoint"] for r in report["checkpoints"]}]
    if missed:
        print(f"not reached: {missed}")
    print()
    v = report["verdicts"]
    first, middle, last = report["checkpoints_asked"]
    if v["rss_growth"] is not None:
        print(f"memory: RSS (window median) {v['rss_growth']:+.1%} from {first} to {last} images (window max "
              f"{v['window_max_growth']:+.1%}, peak so far {v['peak_growth']:+.1%}); target <= +{RSS_TARGET:.0%}: "
              f"{'PASS' if v['rss_ok'] else 'FAIL'}")
    if v["time_ratio"] is not None:
        print(f"time: s/image of {middle}->{last} over {first}->{middle}: {v['time_ratio']:.2f} "
              f"(1.00 = linear); target <= {LINEAR_TARGET}: {'PASS' if v['time_ok'] else 'FAIL'}")
    if v["r_squared"] is not None:
        print(f"time: R^2 of elapsed vs images done after {first} images: {v['r_squared']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="images to write and run (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes writing the images")
    parser.add_argument("--backend", help="passed to `localjudge run`")
    parser.add_argument("--batch-size", type=int, help="passed to `localjudge run`")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (images, manifest, store, log)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.images < 10:
        parser.error("--images: at least 10")
    checkpoints = [args.images // 10, args.images // 2, args.images]
    passthrough = [*(["--backend", args.backend] if args.backend else []),
                   *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]

    folder = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    try:
        started = time.perf_counter()
        manifest = write_images(args.images, folder, args.seed, args.workers)
        write_seconds = time.perf_counter() - started
        log = folder / "run.log"
        job = run_job(manifest, folder / "audit.db", checkpoints, passthrough, log)
        if job["returncode"] != 0:
            tail = log.read_text()[-4000:]
            sys.exit(f"localjudge run failed (exit {job['returncode']}):\n{tail}")
        rows = segments(job["reached"])
        report = {"images": args.images, "folder": str(folder), "write_seconds": write_seconds,
                  "command": job["command"], "returncode": job["returncode"], "job_seconds": job["seconds"],
                  "done": job["done"], "first_done_s": job["first_done_s"], "peak_mb": job["peak_mb"],
                  "peak_at_s": job["peak_at_s"], "monitor_cpu_s": job["monitor_cpu_s"],
                  "checkpoints_asked": checkpoints, "window_images": window_size(checkpoints),
                  "checkpoints": rows, "verdicts": verdicts(rows, job["samples"], checkpoints[0]),
                  "rss_source": "psutil, process and children" if psutil else "/proc VmRSS, main process",
                  "trace": job["trace"] if args.json else None}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            show(report)
        sys.stdout.flush()  # before the stderr line below
    finally:
        if args.keep:
            print(f"kept: {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
