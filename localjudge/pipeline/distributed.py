"""`run --ray [ADDRESS]`: the vision stage and the judge stage as Ray Data `map_batches` steps over actor pools,
each actor loading its model once; the driver ingests, decides what is missing (the same keys as a local run) and
is the only writer of the store.

Inside an actor the existing stages run unchanged: each actor keeps an Audit over a private scratch store, puts
the rows it is handed into it, runs `vision_batch` (vision actors) or `judge_batch` (judge actors) there, and sends
back the rows those wrote; the driver plans with the same `Audit.plan` a local run uses. So a row made on the
cluster is the row a local run makes, key for key and value for value (a model's floats to their last bits, which
depend on the batch they were computed in).

What crosses the cluster: image rows (hash, path, label) to the vision actors, which read the files from the
shared storage they name; predictions, maps (float16, compressed) and judgments back. Maps already stored that only
need judging are read from the store a batch at a time by Ray Data read tasks on the driver's node (the store is a
file on its disk), a few batches at once. No image travels, and the driver writes every row in one transaction per
batch, so an interrupted run resumes from the store."""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..errors import UserError
from ..judge import JUDGES, JudgeError
from ..store import Store

LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
# Batches of judge-only work read from the store at once: one read while the judge pool takes the last, and one
# spare. Ray Data starts no further read while the batches read and waiting for the judge fill the read step's
# share of the object store (its backpressure): a large judge-only run never has all its batches there at once.
JUDGE_ONLY_READS_AT_ONCE = 2


class _Worker:
    """An Audit over a private scratch store, inside a Ray actor."""

    def __init__(self, config_json: str, run_id: str, threads: int):
        import torch

        from . import Audit

        torch.set_num_threads(max(1, threads))
        self.folder = tempfile.mkdtemp(prefix="localjudge-worker-")
        self.store = Store(Path(self.folder) / "scratch.db", any_thread=True)
        self.audit = Audit(self.store, RunConfig.from_json(config_json), show_progress=False)
        self.audit.run_id = run_id
        # the driver's run, so what the stages record about it (the execution provider) has a row to go to
        self.store.record_run({"id": run_id, "command": "run", "config": config_json, "model_hashes": "{}",
                               "package_versions": "{}", "inputs": None})

    def clear(self) -> None:
        """The scratch store holds one batch at a time: what was sent back is deleted (it grew with the dataset)."""
        self.store.clear_computed()

    def __del__(self):
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)

    def take(self, payload: dict) -> None:
        """The rows another step made, into the scratch store (images first, for their foreign keys)."""
        if payload.get("images"):
            self.store.add_images(payload["images"], [])
        for table in ("predictions", "saliency_maps"):
            self.store.insert_rows(table, payload.get(table) or [])
        self.audit.add_files(payload.get("files") or {})


class VisionWorker(_Worker):
    def __call__(self, batch: dict) -> dict:
        """Each input row is one vision batch of a local run (the same images, in the same order), so the model
        computes on the same batches and its outputs are the local run's."""
        return {"payload": np.array([self.vision_batch(json.loads(text)) for text in batch["chunk"]], dtype=object)}

    def vision_batch(self, items: list[dict]) -> bytes:
        from . import Stage

        images = [item["image"] for item in items]
        self.take({"images": images, "files": {item["image"]["sha256"]: item["file"] for item in items}})
        predict, explain = Stage(), Stage()
        self.audit.vision_batch([image["sha256"] for image in images], predict, explain)
        payload = {"images": images, "files": {item["image"]["sha256"]: item["file"] for item in items},
                   "predictions": self.store.predictions(predict.ids),
                   "saliency_maps": self.store.saliency_maps(explain.ids),
                   "errors": predict.errors + explain.errors}
        # fresh maps: all to be judged, but the degenerate ones (stored as map failures) and those the store had
        # judged before (an image made again for a finding added since)
        judged = {key for item in items for key in item.get("judged", [])}
        payload["to_judge"] = [m["id"] for m in payload["saliency_maps"] if not m.get("failure")
                               and m["id"] not in judged]
        if self.audit.execution_provider is not None:
            payload["execution_provider"] = self.audit.execution_provider
        self.clear()
        return pickle.dumps(payload)


class JudgeWorker(_Worker):
    def __call__(self, batch: dict) -> dict:
        from . import Stage

        payloads = [pickle.loads(blob) for blob in batch["payload"]]
        maps = []
        for payload in payloads:
            self.take(payload)
            wanted = set(payload["to_judge"])
            maps += [m["id"] for m in payload.get("saliency_maps") or [] if m["id"] in wanted]
        stage = Stage()
        stopped = None
        try:
            self.audit.judge_batch(maps, stage)  # the call's maps together: --judge-batch-size of them
        except JudgeError as error:  # a server that stopped: its failures are stored, then the run stops
            stopped = str(error)
        keys = self.audit.judgment_keys(maps)
        judgments = self.store.judgments([keys[m] for m in maps])
        prompts = self.store.prompts()
        answers = []
        for number, payload in enumerate(payloads):
            mine = {keys[m["id"]] for m in payload.get("saliency_maps") or [] if m["id"] in keys}
            payload["judgments"] = [row for row in judgments if row["id"] in mine]
            payload["prompts"] = prompts
            payload["errors"] = (payload.get("errors") or []) + (stage.errors if number == 0 else [])
            payload["stopped"] = stopped
            answers.append(pickle.dumps(payload))
        self.clear()
        return {"payload": np.array(answers, dtype=object)}


def judge_payload(store, saliency_ids: list[str], images: dict, files: dict) -> bytes:
    """One batch of the judge-only work of a Ray run, pickled: its maps and their predictions as the store holds
    them now, with the rows and files of their images (`images`, `files`: by sha256; no picture travels)."""
    chunk = store.saliency_maps(saliency_ids)
    predictions = {p["id"]: p for p in store.predictions({m["prediction_id"] for m in chunk})}
    shas = {m["image_sha256"] for m in chunk}
    return pickle.dumps({
        "images": [images[sha] for sha in shas], "files": {sha: files[sha] for sha in shas},
        "predictions": [predictions[m["prediction_id"]] for m in chunk], "saliency_maps": chunk,
        "to_judge": [m["id"] for m in chunk], "errors": []})


def read_judge_payload(store_path: Path, saliency_ids: list[str], images: dict, files: dict) -> list:
    """A judge-only read task's output: one block of one row, its batch's payload (`judge_payload`), read when Ray
    Data runs the task."""
    from ray.data.block import BlockAccessor

    store = Store.read_only(store_path)
    try:
        payload = judge_payload(store, saliency_ids, images, files)
    finally:
        store.close()
    # the block a numpy batch makes, as a vision actor's payloads are: the two streams are judged together
    return [BlockAccessor.batch_to_block({"payload": np.array([payload], dtype=object)})]


def judge_only_datasource(store_path: Path, batches: list[tuple[list[str], dict, dict]]):
    """The judge-only work of a Ray run as a Ray Data source: one read task per batch (its map ids, and the rows
    and files of their images, by sha256), which reads the batch's maps from the store file on the driver's node."""
    import ray.data
    from ray.data.block import BlockMetadata

    # Ray is an optional extra: its Datasource is subclassed only when a Ray run reads one
    class JudgeOnlyDatasource(ray.data.Datasource):
        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context=None) -> list:
            # a task per batch whatever the parallelism asked: a batch is what the judge is handed (a payload); no
            # row limit applies (nothing limits this dataset)
            return [ray.data.ReadTask(functools.partial(read_judge_payload, store_path, ids, images, files),
                                      BlockMetadata(num_rows=1, size_bytes=None, exec_stats=None))
                    for ids, images, files in batches]

        def estimate_inmemory_data_size(self) -> None:
            return None  # known once the maps are read

        @property
        def supports_distributed_reads(self) -> bool:
            return False  # the store is a file on the driver's disk: Ray Data runs the reads on the driver's node

    return JudgeOnlyDatasource()


def actor_resources(gpus: int, cpus: float, workers: int, local: bool, reserves_gpu: bool,
                    tensor_parallel_size: int = 1) -> tuple[dict, dict]:
    """What each vision and each judge actor asks of the cluster. The two pools share it: a judge that reserves its
    GPU memory up front (vLLM) takes 0.9 of a GPU and leaves 0.1 to a vision actor, or whole GPUs for tensor
    parallelism (the vision actors then on CPUs); other judges split each GPU with the vision actors; without GPUs,
    the CPUs are split."""
    if gpus and reserves_gpu:
        if tensor_parallel_size > 1:
            return {"num_cpus": 1}, {"num_gpus": tensor_parallel_size, "num_cpus": 0}
        return {"num_gpus": 0.1, "num_cpus": 0}, {"num_gpus": 0.9, "num_cpus": 0}
    if gpus:
        share = {"num_gpus": gpus / (2 * workers), "num_cpus": 0}
        return share, dict(share)
    usable = cpus - 1 if local else cpus  # a local cluster keeps one CPU for Ray Data's own tasks
    share = {"num_cpus": max(0.01, usable / (2 * workers))}
    return share, dict(share)


def refuse_client_address(address: str) -> None:
    """A Ray Client driver (any address with a scheme, as Ray reads it: ray://, and $RAY_ADDRESS for "auto") runs off
    the cluster, where the judge-only read tasks, pinned to the driver's node, could not reach the store: refused."""
    resolved = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if "://" in resolved:
        raise UserError(f"--ray {address}{f' ($RAY_ADDRESS={resolved})' if resolved != address else ''}: a Ray Client "
                        "address is not supported: run the driver on a node of the cluster (ray start there, then "
                        "--ray auto or the head's host:port); the judge-only maps are read from the store on the "
                        "driver's node")


def connect(address: str, workers: int | None, config: RunConfig) -> dict:
    """Join the cluster at `address`, or start a local one ("local") on this machine's loopback address. Returns
    the pool size and the resources each vision and each judge actor asks for."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report from the cluster either
    local = address == "local"
    if not ray.is_initialized():
        if local:
            workers = workers or 2
            # one CPU more than the actors take, for Ray Data's own tasks
            ray.init(num_cpus=workers + 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    workers = workers or (gpus // max(1, config.tensor_parallel_size) if gpus else max(1, int(cpus) // 2)) or 1
    vision, judge = actor_resources(gpus, cpus, workers, local, JUDGES[config.judge].reserves_gpu,
                                    config.tensor_parallel_size)
    return {"workers": workers, "vision": vision, "judge": judge, "gpus": gpus, "cpus": cpus, "local": local}


def run_on_ray(audit, source: str | Path, address: str = "local", workers: int | None = None) -> dict:
    """All stages of `audit` on `source`, the vision and judge stages on a Ray cluster; the stages' reports."""
    import ray
    import ray.data

    from . import Stage

    refuse_client_address(address)  # before any work
    stages = {"ingest": audit.ingest(source), "predict": Stage(), "explain": Stage(), "judge": Stage()}
    store, config = audit.store, audit.config
    image_ids = stages["ingest"].ids
    plan = audit.plan(image_ids)
    need_vision = plan.need_vision
    judge_only = audit.judgments_missing(plan.ready_maps, stages["judge"])
    # An image with some maps stored but not all (a finding added since: another threshold, --targets labelled) is
    # made again whole by a vision worker, which judges its fresh maps: its maps not yet judged are judged there
    # only, and those judged before not again.
    remade = set(need_vision)
    image_of = {key: sha for sha, keys in plan.maps.items() for key in keys}
    judged_before = {}
    for key in set(plan.ready_maps) - set(judge_only):
        if image_of[key] in remade:
            judged_before.setdefault(image_of[key], []).append(key)
    judge_only = [key for key in judge_only if image_of[key] not in remade]
    # Claimed before they are sent, as a local run claims a batch before judging it: those another live run on this
    # store holds are left to it (counted as elsewhere), and the audit's end frees what was not judged. The claims
    # are renewed as batches come back, so they hold while the run works (another run started meanwhile finds the
    # whole backlog taken; it judges what this one leaves). The maps the vision actors make are not claimed: their
    # judgment keys are known only once the model has predicted their class.
    judge_only = audit.claim(judge_only, stages["judge"])
    stages["predict"].ids = list(plan.predictions.values())
    stages["explain"].ids = plan.ready_maps  # maps made before (a killed run's) count as a local run counts them
    if not need_vision and not judge_only:
        return stages

    cluster = connect(address, workers, config)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    config_json = config.to_json()
    # A local cluster's actors compute with the threads this process would (the same kernels, the same bits);
    # on a cluster, with the CPUs each actor asked for.
    threads = torch_threads() if cluster["local"] else max(1, int(cluster["vision"].get("num_cpus") or 1))
    pool = ray.data.ActorPoolStrategy(size=cluster["workers"])
    arguments = (config_json, audit.run_id, threads)
    images = {row["sha256"]: row for row in store.images(image_ids)}
    files = {sha: audit.file_of(sha, images[sha]["path"]) for sha in images}

    parts = []
    if need_vision:
        # the batches a local run computes: its images in ingest order, batch_size at a time
        chunks = [{"chunk": json.dumps([{"image": images[sha], "file": files[sha],
                                         "judged": judged_before.get(sha, [])} for sha in chunk])}
                  for chunk in (need_vision[i:i + config.batch_size]
                                for i in range(0, len(need_vision), config.batch_size))]
        vision = ray.data.from_items(chunks).map_batches(
            VisionWorker, batch_size=1, compute=pool, fn_constructor_args=arguments, batch_format="numpy",
            **cluster["vision"])
        parts.append(vision)
    if judge_only:
        # a batch of maps per read task, read from the store when Ray Data runs it, JUDGE_ONLY_READS_AT_ONCE at a
        # time: neither the driver nor the object store holds every map of a large judge-only run. A read takes no
        # CPU of the cluster: it is light, and the actors may hold every CPU (a CPU cluster's are split among them).
        batches = []
        for start in range(0, len(judge_only), config.batch_size):
            ids = judge_only[start:start + config.batch_size]
            shas = {image_of[key] for key in ids}
            batches.append((ids, {sha: images[sha] for sha in shas}, {sha: files[sha] for sha in shas}))
        parts.append(ray.data.read_datasource(
            judge_only_datasource(store.path.resolve(), batches), concurrency=JUDGE_ONLY_READS_AT_ONCE, num_cpus=0,
            override_num_blocks=len(batches)))  # a block per batch: none split into more
    dataset = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    judge_calls = max(1, config.judge_batch_size // config.batch_size)
    judged = dataset.map_batches(JudgeWorker, batch_size=judge_calls, compute=ray.data.ActorPoolStrategy(
        size=cluster["workers"]), fn_constructor_args=arguments, batch_format="numpy", **cluster["judge"])

    started = time.perf_counter()
    stopped = provider = None
    audit.renew_claims()  # from now, not from the claim: starting the cluster and its actors took time
    try:
        for batch in judged.iter_batches(batch_size=1, batch_format="numpy"):
            for blob in batch["payload"]:
                payload = pickle.loads(blob)
                if payload.get("execution_provider") and provider is None:
                    provider = payload["execution_provider"]
                    store.set_run_provider(audit.run_id, provider)
                _write(store, payload, stages)
                stopped = stopped or payload.get("stopped")
            audit.renew_claims()  # the judge-only maps still out stay this run's while batches come back
            if stopped:
                break
    except Exception as error:  # an actor that failed: what was written stays, and a new run redoes the rest
        raise JudgeError(f"the cluster failed ({type(error).__name__}: {str(error).splitlines()[0][:500]}); what "
                         "was stored stays, run the same command again to go on") from error
    finally:
        if cluster["local"]:
            ray.shutdown()  # the local cluster ends with the run
    if stopped:
        raise JudgeError(stopped)
    stages["judge"].seconds = time.perf_counter() - started
    for stage in stages.values():
        stage.ids = list(dict.fromkeys(stage.ids))
    return stages


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _write(store: Store, payload: dict, stages: dict) -> None:
    """One batch's rows, in one transaction, as a local run writes them; the stages' counts (of rows the store did
    not hold: an image made again whole for a finding added since brings its stored prediction and maps too)."""
    predictions, maps = payload.get("predictions") or [], payload.get("saliency_maps") or []
    held = {table: store.existing_ids(table, [row["id"] for row in rows])
            for table, rows in (("predictions", predictions), ("saliency_maps", maps))}
    store.add_computed(predictions, maps, payload.get("prompts") or [], payload.get("judgments") or [])
    stages["predict"].computed += sum(row["id"] not in held["predictions"] for row in predictions)
    stages["explain"].computed += sum(row["id"] not in held["saliency_maps"] for row in maps)
    stages["explain"].ids.extend(m["id"] for m in payload.get("saliency_maps") or [])
    judgments = payload.get("judgments") or []
    stages["judge"].computed += len(judgments)
    stages["judge"].failed += sum(j["status"] == "failed" for j in judgments)
    stages["judge"].ids.extend(j["id"] for j in judgments)
    for error in payload.get("errors") or []:
        stages["predict"].failed += 1
        stages["predict"].errors.append(error)
