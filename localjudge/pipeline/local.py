"""The one-machine executor: a whole run on this machine's threads.

The vision thread reads each input file once (ingest), and on each batch of ingested images runs the vision stage
from the pictures it read (predict and explain) and renders the model's view of each picture still to be judged; it
hands the batch's maps and views to the judge through a bounded queue, so the judge is busy while CAMs are computed
and the vision stage never runs more than `queue_batches` batches ahead. A judge that takes requests while it writes
answers (`Judge.continuous()`: the transformers judge) gets each --judge-batch-size batch as soon as it is ready and
keeps decoding between them, so a batch's last rows never run alone while maps are waiting. Each thread has its own
connection to the store; every batch is stored in one transaction."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from ..progress import progress_bar
from ..store import Store
from . import Audit, Stage
from .continuous import ContinuousJudging

_NOTHING = object()  # no new maps yet
# A picture of at most this many views' pixels goes to the judge's thread as it is, its view drawn there; a larger one
# is drawn into its view on the vision stage's (_views_to_hand_over). Measured on the 2-core CPU, 500 imagenet-sample
# photos, scripts/bench_run.py (medians of 3): run / irreducible sum 1.34-1.36x with every view drawn on the vision
# thread, 1.28-1.31x with the photos (at most 512 px on the long side) handed over.
PICTURE_HANDED_OVER = 2


def run_local(audit: Audit, source: str | Path) -> dict[str, Stage]:
    """Ingest, predict, explain and judge every image of `source`; the stages' reports."""
    items = audit.discover(source)
    stages = {"ingest": Stage(), "predict": Stage(), "explain": Stage(), "judge": Stage()}
    judge_stage = stages["judge"]
    handoff: queue.Queue = queue.Queue(maxsize=audit.config.queue_batches)
    stop = threading.Event()
    worker = threading.Thread(target=_vision_worker, name="localjudge-vision", daemon=True,
                              args=(audit, items, handoff, stop, stages))
    started = time.perf_counter()
    bar = progress_bar(len(items), "run", "image", audit.show_progress, audit.config.progress_seconds)
    batch_size = audit.config.judge_batch_size
    judging: ContinuousJudging | None = None
    continuous = True  # until the judge, once opened, says it answers each call whole
    worker.start()
    stopped = True  # until the loop below ends of itself
    try:
        pending: list[str] = []
        views: dict = {}
        ended = False

        def hand_to_judge(batch: list[str]) -> None:
            nonlocal judging, continuous, views
            if continuous and judging is None:
                judging = ContinuousJudging.open_for(audit, judge_stage, bar.update)
                continuous = judging is not None
            if judging is not None:
                judging.submit(batch, views)
            else:
                audit.judge_batch(batch, judge_stage, views)
                bar.update(len(batch))
            views = _still_needed(audit, views, pending)

        while not ended or (judging is not None and judging.busy):
            # a judge writing answers looks for new maps only while fewer than a batch of its requests wait for a row
            # (so the vision stage stays at most `queue_batches` ahead: it blocks on the full queue); an idle one
            # waits for them
            busy = judging is not None and judging.busy
            if not ended and not (busy and judging.waiting >= batch_size):
                waiting = time.perf_counter()
                item = _poll(handoff) if busy else _next_from(handoff, worker)
                judge_stage.waited_seconds += 0.0 if busy else time.perf_counter() - waiting
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    ended = True
                    if pending:
                        batch, pending = pending, []
                        hand_to_judge(batch)
                elif item is not _NOTHING:
                    # maps to judge (degenerate ones are not), those to judge now, and their images' views: drawn, or
                    # to be drawn here from the picture (_views_to_hand_over)
                    maps, missing, chunk_views, pictures = item
                    keys = audit.judgment_keys(maps)
                    judge_stage.ids.extend(keys[m] for m in maps)
                    bar.update(len(maps) - len(missing))
                    pending.extend(missing)
                    views.update(chunk_views)
                    views.update(audit.judge_views(pictures, pictures))
                    while len(pending) >= batch_size:
                        batch, pending = pending[:batch_size], pending[batch_size:]
                        hand_to_judge(batch)
            if judging is not None and judging.busy:
                judging.step()
        stopped = False
    finally:
        stop.set()
        worker.join()
        bar.close(stopped)
    judge_stage.seconds = time.perf_counter() - started
    audit.warn_unmapped(stages["predict"])
    return stages


def run_vision(audit: Audit, source: str | Path, explain: bool = False) -> dict[str, Stage]:
    """Ingest and predict (and with `explain`, explain) every image of `source`, each file read once; no judge
    (`localjudge predict`, and benchmarks that time the stages one after another)."""
    stages = {"ingest": Stage(), "predict": Stage(), **({"explain": Stage()} if explain else {})}
    for chunk in audit.read_chunks(audit.discover(source), stages["ingest"]):
        audit.vision_batch(chunk.ids, stages["predict"], stages.get("explain"), pictures=chunk.pictures)
    audit.warn_unmapped(stages["predict"])
    return stages


def _still_needed(audit: Audit, views: dict, pending: list[str]) -> dict:
    """The views the pending maps still need (a judged image's view is let go)."""
    if not views:
        return views
    wanted = {m["image_sha256"] for m in audit.store.saliency_maps(pending)}
    return {sha: view for sha, view in views.items() if sha in wanted}


def _views_to_hand_over(vision: Audit, image_ids: set[str], pictures: dict) -> tuple[dict, dict]:
    """What the judge's thread is handed to draw each image's view from: the view drawn here (the vision stage's
    thread) where the picture is larger than PICTURE_HANDED_OVER views, else the picture itself, drawn into its view on
    the judge's thread. The vision stage is the run's longer path on a CPU (decoding, resizing the model's input,
    its forward and gradient, packing maps), so the view's resampling moves off it where that costs little memory: a
    large scan never waits in the queue at full size. The view is the same either way (Audit.judge_views)."""
    side = vision.config.judge_image_size
    small = {sha: pictures[sha] for sha in image_ids
             if sha in pictures and pictures[sha].width * pictures[sha].height <= PICTURE_HANDED_OVER * side * side}
    return vision.judge_views(set(image_ids) - set(small), pictures), small


def _poll(handoff: queue.Queue):
    try:
        return handoff.get_nowait()
    except queue.Empty:
        return _NOTHING


def _next_from(handoff: queue.Queue, worker: threading.Thread):
    while True:
        try:
            return handoff.get(timeout=1.0)
        except queue.Empty:
            if not worker.is_alive() and handoff.empty():
                raise RuntimeError("the vision stage ended without a word")  # never expected; never hang


def _vision_worker(audit: Audit, items: list, handoff: queue.Queue, stop: threading.Event,
                   stages: dict[str, Stage]) -> None:
    """The ingest and vision stages of an overlapped run, on their own thread and connection to the store."""
    def hand_over(item) -> None:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    store = None
    try:
        store = Store(audit.store.path)
        vision = audit.on_store(store)
        explain = stages["explain"]
        for chunk in vision.read_chunks(items, stages["ingest"]):
            first_map = len(explain.ids)
            vision.vision_batch(chunk.ids, stages["predict"], explain, pictures=chunk.pictures)
            maps = vision.judgeable(explain.ids[first_map:])
            missing = vision.judgments_missing(maps)
            to_view = {m["image_sha256"] for m in store.saliency_maps(missing)}
            views, pictures = _views_to_hand_over(vision, to_view, chunk.pictures)
            hand_over((maps, missing, views, pictures))
            chunk.pictures.clear()  # the full-size pictures not handed over: let them go before the next batch is read
            if stop.is_set():  # the judge side failed: read nothing more
                return
        hand_over(None)
    except BaseException as error:  # the judge side raises it, so the run fails with the real reason
        hand_over(error)
    finally:
        if store is not None:
            store.close()
