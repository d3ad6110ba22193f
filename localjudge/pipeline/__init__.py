"""The stages of an audit. Each reads its inputs from the store, works out the keys of what it would write, and
loads its model only when some of those rows are missing; each batch is written in one transaction.

`open_audit` is the one place a run's configuration is settled. An `Audit` holds the stages; the executors that
drive them over a whole dataset live beside it: `local` (this machine's threads) and `distributed` (a Ray cluster),
both through the public `plan` and `vision_batch`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import secrets
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import DEFAULTS, RunConfig
from ..data import (IMAGE_SUFFIXES, ChangedImage, IngestError, InputItem, ReadFailure, discover, is_redacted,
                    load_verified, read_image, redacted_path, resolve_label)
from ..errors import OptionError, UserError
from ..judge import (AUTO, JUDGES, Judge, JudgeError, JudgeIdentity, JudgeOutput, JudgeRequest, JudgeStopped,
                     auto_judge, parse_answer)
from ..judge.prompts import PHOTO, fill_kind, prompt_hash, prompt_template, prompt_text, render
from ..progress import progress
from ..saliency.masking import FIRST_RENDER_VERSION, RENDER_VERSION, judge_image, soft_mask, upsample
from ..store import Store, content_key, now, pack_array, sha256_file, sha256_remembered, unpack_array
from ..vision import (BACKENDS, ModelCard, auto_backend, backend_of, main_class, model_hash, open_model,
                      require_weights, resolve_card)
from ..vision.preprocess import model_view, to_tensor

PACKAGES = ("localjudge", "torch", "torchvision", "transformers", "xgrammar", "grad-cam", "numpy", "pillow",
            "sqlite-utils", "click")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@functools.lru_cache(maxsize=None)  # asked once per image
def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) as (K, N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: give K/N, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: K must be between 1 and N")
    return k, n


def relabelled(prediction: dict, labels) -> dict | None:
    """A prediction's label indices and correctness under its image's current label (`prediction["label"]`) and the
    label list `labels`; None where they are what is stored."""
    label_indices = resolve_label(prediction["label"], labels)
    encoded = json.dumps(label_indices) if label_indices is not None else None
    if encoded == prediction["label_indices"]:
        return None
    correct = None if label_indices is None else int(prediction["predicted_index"] in label_indices)
    return {"id": prediction["id"], "label_indices": encoded, "correct": correct}


def lease_holder_alive(lease: dict) -> bool:
    """Whether the run holding a judgment's lease may still be judging it: a process of this machine that is gone
    holds nothing (a killed run's claims are free at once); another machine's run holds it until the lease ends."""
    if lease["host"] != socket.gethostname():
        return True
    if int(lease["pid"]) == os.getpid():  # an earlier audit of this process (a sweep's): done with, whatever it left
        return False
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):  # it exists (another user's), or cannot be told: still held
        return True
    return True


@dataclass
class Stage:
    """What a stage did: ids it covers, how many it computed now, and whether it had to load a model."""

    ids: list[str] = field(default_factory=list)
    computed: int = 0
    model_loaded: bool = False
    failed: int = 0
    errors: list[dict] = field(default_factory=list)  # unreadable inputs: path and reason
    unmapped_labels: set[str] = field(default_factory=set)  # labels that name no class of the model
    seconds: float = 0.0  # wall time (the judge stage of an overlapped run)
    elsewhere: int = 0  # judgments another run on the same store was making (or had made), left to it
    waited_seconds: float = 0.0  # of which the judge sat idle waiting for the vision stage


@dataclass
class Chunk:
    """Ingested images (up to a vision batch of them, in input order) with the pictures read at ingest."""

    ids: list[str]
    pictures: dict[str, Image.Image]


@dataclass
class JudgeBatch:
    """A batch's maps to show the judge (stored rows), what the judge is told each image is, and its requests."""

    maps: list[dict]
    kinds: dict[str, str]
    requests: list[JudgeRequest]


@dataclass
class Plan:
    """What the vision and judge stages must compute for some stored images (in their order): each image's
    prediction key, the predictions and maps already stored, and so what is missing. An image has one map per
    target: its main class, or each finding of a multilabel model."""

    image_ids: list[str]
    predictions: dict[str, str]  # image -> prediction key
    stored: dict[str, dict]  # image -> its stored prediction
    maps: dict[str, list[str]]  # image -> its maps' keys, where its prediction is stored
    stored_maps: set[str]

    @property
    def ready_maps(self) -> list[str]:
        return [key for sha in self.image_ids for key in self.maps.get(sha, []) if key in self.stored_maps]

    @property
    def need_prediction(self) -> list[str]:
        return [sha for sha in self.image_ids if sha not in self.stored]

    @property
    def need_map(self) -> list[str]:
        """Images whose prediction is stored but not all its maps."""
        return [sha for sha in self.image_ids if sha in self.stored and
                any(key not in self.stored_maps for key in self.maps[sha])]

    @property
    def need_vision(self) -> list[str]:
        need_map = set(self.need_map)
        return [sha for sha in self.image_ids if sha not in self.stored or sha in need_map]


def open_audit(db_path: str | Path, source: str | Path | None = None, stages: Iterable[str] = (),
               show_progress: bool = True, **given) -> "Audit":
    """The one place a run's configuration is settled, from the options given (None: not given), for the `stages`
    that will run (ingest, predict, explain, judge, regions, faithfulness):
    - data-parallel copies of the judge of a whole run are Ray actors (a local cluster unless --ray names one);
    - --mask-column reads the CSV manifest the images come from; --redact-paths refuses ground-truth regions;
    - a model bundle is verified file by file and gives its model, weights and VLM (a --vlm DIR given wins);
    - --judge auto becomes a backend (`judge.auto_judge`), and where the judge runs its spec checks the whole
      configuration before any work (an image never leaves before its server is known to be allowed).
    The store is opened only once those checks have passed (a bundle is verified against the store's hash cache,
    so with one it is opened first)."""
    stages = set(stages)
    config = DEFAULTS.replace(**given)
    if config.data_parallel_size > 1 and {"ingest", "judge"} <= stages:
        config = config.replace(ray=config.ray or "local", ray_workers=config.ray_workers or config.data_parallel_size)
    if config.mask_column and "ingest" in stages and not (
            Path(source).is_file() and Path(source).suffix.lower() == ".csv"):
        raise OptionError("--mask-column reads the CSV manifest the images come from; IMAGES is not one")
    if config.mask_label_column and not config.mask_column:
        raise OptionError("--mask-label-column names the class of each --mask-column mask: give --mask-column too")
    if source and config.redact_paths and any((config.masks, config.mask_column, config.boxes)):
        raise ValueError("--redact-paths with ground-truth regions is not supported yet: their masks and boxes are "
                         "matched by image path")
    store = None
    try:
        if config.bundle:
            from ..bundle import bundle_options

            store = Store(db_path)
            # the bytes themselves unless the user trusts the cache: a same-size change with its mtime restored
            # passes a cache keyed by path, size and mtime
            overlay = bundle_options(Path(config.bundle), (lambda path: store.cached_file_hash(path, sha256_file))
                                     if config.trust_hash_cache else sha256_file)
            if config.vlm:  # a VLM directory given on the command line wins over the bundle's
                overlay.pop("vlm", None)
            config = config.replace(**overlay)
        if config.judge == AUTO:
            config = config.replace(judge=auto_judge(config))
        card = resolve_card(config.model, config.card, config.labels)
        require_weights(card, config.weights, config.random_weights)
        if config.targets == "labelled" and card.task != "multilabel":
            raise OptionError(f"--targets labelled explains a multilabel model's missed findings; {card.name} is a "
                              f"{card.task} model (its map explains its one predicted class)")
        if "judge" in stages:
            JUDGES[config.judge].check(config, card.label_list().names)
        store = store or Store(db_path)
        if config.backend == AUTO:  # recorded with the run as the backend it became
            stored = store.prediction_backends(card.name)
            config = config.replace(backend=settled_backend(config.device, stages, stored))
        return Audit(store, config, card=card, stages=stages, show_progress=show_progress)
    except BaseException:
        if store is not None:
            store.close()
        raise


def settled_backend(device: str, stages: set[str], stored: set[str]) -> str:
    """--backend auto: ONNX Runtime where it can run on the device (`vision.auto_backend`), torch otherwise; torch for
    eval sanity, which randomises the model's torch parameters; and torch for a store whose predictions of this model
    were all made on torch (made before auto was the default, or where ONNX Runtime was not installed), so what it
    holds is read and reused rather than made again on another backend."""
    if "sanity" in stages or stored == {"torch"}:
        return "torch"
    return auto_backend(device)


class Audit:
    """One audit over one store with one settled configuration (see `open_audit`)."""

    def __init__(self, store: Store, config: RunConfig, card: ModelCard | None = None, stages: Iterable[str] = (),
                 show_progress: bool = True):
        if config.judge not in JUDGES or config.backend not in BACKENDS:
            raise ValueError(f"judge {config.judge!r} or backend {config.backend!r} is not settled: open audits with "
                             "open_audit")
        self.store = store
        self.config = config
        self.stages = set(stages)
        self.show_progress = show_progress
        self.run_id: str | None = None
        self.card = card or resolve_card(config.model, config.card, config.labels)
        self.judge_spec = JUDGES[config.judge]
        self._backend = backend_of(self.card, config.backend)
        self._weights = Path(config.weights) if config.weights else None
        self._vision_hash: str | None = None
        self._vision = None
        self._judge: Judge | None = None
        self._owns_judge = True
        self._findings_marked = False  # a multilabel model's stored maps marked for this run's settings
        self._identity: JudgeIdentity | None = None
        self._judgment_key_parts: tuple[str, str, dict] | None = None  # prompt template, its hash, decoding
        self._prompt_stored = False
        self._judgments_failed = 0  # failed judgments stored by this audit (a stage's `failed` also counts inputs)
        self._failed_batches_in_a_row = 0  # judge calls that raised, since the last that answered
        self._files: dict[str, str] = {}  # the files this process read, by image sha256 (paths may be redacted)
        # This audit's claims on the judgments it is about to make (Store.claim_judgments): one owner per audit
        self._lease = {"owner": f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}",
                       "host": socket.gethostname(), "pid": os.getpid(), "seconds": config.judge_lease_seconds}
        self._claims_renewed = float("-inf")  # time.monotonic() of the last renew_claims that wrote

    def on_store(self, store: Store, show_progress: bool = False) -> "Audit":
        """This audit over another connection to its store (a thread's own): the same run and the files read."""
        sibling = Audit(store, self.config, self.card, self.stages, show_progress)
        sibling.run_id = self.run_id
        sibling._files = self._files
        sibling._identity = self._identity  # a server is asked its model once per run
        return sibling

    def add_files(self, files: dict[str, str]) -> None:
        """Where the pictures of some stored images are (by sha256), for a process that did not ingest them."""
        self._files.update(files)

    def file_of(self, sha256: str, stored_path: str) -> str:
        """The file to read an image from: the one this process ingested, else its stored path."""
        return self._files.get(sha256, stored_path)

    # --- bookkeeping ------------------------------------------------------------------------------------
    def vision_hash(self) -> str:
        # once per audit: embedded weights are hashed by their bytes (never by the store's cache), and every batch asks
        if self._vision_hash is None:
            self._vision_hash = model_hash(self.card, self._weights, self._model_file_hash, self._backend)
        return self._vision_hash

    def judge_identity(self) -> JudgeIdentity:
        """The judge's name and hash as its backend defines them (asked once: a server may be asked its model)."""
        if self._identity is None:
            self._identity = self.judge_spec.identity(self.config, self._hash_file)
        return self._identity

    def judge_hash(self) -> str:
        return self.judge_identity().hash

    def judge_name(self) -> str:
        return self.judge_identity().name

    def _hash_file(self, path: Path) -> str:
        """A judge's files (a VLM directory: gigabytes) by the store's cache of unchanged path, size and mtime."""
        return self.store.cached_file_hash(path, sha256_file)

    def _model_file_hash(self, path: Path) -> str:
        """The vision model's weights or graph (--weights, an ONNX card): read once per process while the file stays
        (sha256_remembered, as the recognizer reads the same file), the store's cache only with --trust-hash-cache
        (a same-size change with its mtime put back passes that cache)."""
        if self.config.trust_hash_cache:
            return self._hash_file(path)
        return sha256_remembered(path)

    def begin(self, command: str, source: str | None) -> str:
        model_hashes = {"vision": self.vision_hash()}
        if self.config.bundle_hash:
            model_hashes["bundle_manifest"] = self.config.bundle_hash
        if "judge" in self.stages:
            model_hashes["judge"] = self.judge_hash()
        if not self.card.labels_registered:  # the names themselves: the file may change or move after the run
            model_hashes["labels"] = {"names_sha256": self.card.label_list().names_digest(),
                                      "names": list(self.card.label_list().names)}
        inputs = str(Path(source).resolve()) if source else None
        if inputs and self.config.redact_paths:
            inputs = redacted_path(inputs)
        config = self.config.to_json()
        versions = package_versions()
        self.run_id = content_key("run", command, config, inputs, model_hashes, versions)
        self.store.record_run({
            "id": self.run_id, "command": command, "config": config, "model_hashes": json.dumps(model_hashes),
            "package_versions": json.dumps(versions), "inputs": inputs,
        })
        return self.run_id

    def end(self, status: str = "finished") -> None:
        self.store.release_leases(self._lease["owner"])  # what it did not judge is free for another run
        if self._judge is not None and self._owns_judge:
            self._judge.close(cancel=status != "finished")  # a failed or interrupted run sends nothing more
        if self.run_id:
            self.store.finish_run(self.run_id, status)

    @contextmanager
    def recorded(self, command: str, source: str | None):
        """A run row for the block: finished when it completes, failed when it raises (its stored batches stay)."""
        self.begin(command, source)
        try:
            yield self
        except BaseException:
            self.end("failed")
            raise
        self.end()

    # --- ingest -----------------------------------------------------------------------------------------
    def in_shard(self, key: str) -> bool:
        """Whether a content key (an image's sha256, a read error's id) falls in this run's --shard K/N."""
        if not self.config.shard:
            return True
        k, n = parse_shard(self.config.shard)
        return int(key[:16], 16) % n == k - 1

    def discover(self, source: str | Path) -> list[InputItem]:
        items = discover(source, self.config.path_column, self.config.label_column)
        if not items:
            raise IngestError(f"{source}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return items

    def ingest(self, source: str | Path) -> Stage:
        """Every image of `source` read, hashed and stored (the pictures are not kept)."""
        stage = Stage()
        for _ in self.read_chunks(self.discover(source), stage, keep_pictures=False):
            pass
        return stage

    def read_chunks(self, items: list[InputItem], stage: Stage, keep_pictures: bool = True) -> Iterator[Chunk]:
        """Read each input file once (bytes, hash, decode), store the rows of a vision batch of images at a time
        (and the read errors met on the way), and yield each batch with its pictures. The same picture twice in one
        dataset is ingested once; another shard's picture not at all."""
        known_errors = self.store.known_error_ids()
        seen: set[str] = set()
        class_names = self.card.label_list() if self.config.redact_paths else None
        images: list[dict] = []
        errors: list[dict] = []
        pictures: dict[str, Image.Image] = {}
        for item in self.progress(items, len(items), "ingest", unit="image"):
            result = read_image(item.path, self.config.dicom_window)
            shown = self.shown_path(item.path)
            if class_names is not None and item.from_folder and resolve_label(item.label, class_names) is None:
                # a folder name that is no class may name a patient: with --redact-paths it is not kept
                item = dataclasses.replace(item, label=None)
            if isinstance(result, ReadFailure):
                error_id = content_key("read_error", str(item.path.resolve()), result.sha256, result.reason)
                # by what the file is, not where it is mounted: every machine puts it in the same shard
                if not self.in_shard(result.sha256 or hashlib.sha256(item.path.name.encode()).hexdigest()):
                    continue
                stage.failed += 1
                stage.errors.append({"path": shown, "reason": result.reason})
                if error_id not in known_errors:
                    errors.append({"id": error_id, "path": shown, "size_bytes": result.size_bytes,
                                   "sha256": result.sha256, "reason": result.reason, "run_id": self.run_id,
                                   "created_at": now()})
                continue
            if result.sha256 in seen or not self.in_shard(result.sha256):
                continue
            seen.add(result.sha256)
            self._files[result.sha256] = str(item.path)
            images.append({"sha256": result.sha256, "path": shown, "size_bytes": result.size_bytes,
                           "width": result.width, "height": result.height, "mode": result.mode,
                           "format": result.format, "kind": result.kind, "label": item.label,
                           "run_id": self.run_id, "created_at": now()})
            if keep_pictures:
                pictures[result.sha256] = result.picture
            if len(images) == self.config.batch_size:
                yield self._store_ingested(images, errors, pictures, stage)
                images, errors, pictures = [], [], {}
        if images or errors:
            chunk = self._store_ingested(images, errors, pictures, stage)
            if chunk.ids:
                yield chunk

    def _store_ingested(self, images: list[dict], errors: list[dict], pictures: dict, stage: Stage) -> Chunk:
        ids = [row["sha256"] for row in images]
        stage.ids.extend(ids)
        stored = {row["sha256"]: row for row in self.store.images(ids)}
        new_images = [row for row in images if row["sha256"] not in stored]
        # A moved file or a corrected label updates the image's row; it is the same picture, not a new one.
        # A source without a label for an image (a plain folder) keeps the label it had.
        changed = []
        for row in images:
            before = stored.get(row["sha256"])
            if before is None:
                continue
            update = {"path": row["path"]} if before["path"] != row["path"] else {}
            if row["label"] is not None and row["label"] != before["label"]:
                update["label"] = row["label"]
            if row.get("kind") and not before.get("kind"):  # stored before the file's kind was read (m013)
                update["kind"] = row["kind"]
            if update:
                changed.append({"sha256": row["sha256"], **update})
        self.store.add_images(new_images, errors, changed, self.run_id, ids)
        new_labels = [row["sha256"] for row in changed if "label" in row]
        if new_labels:  # every model's predictions of them, not only this run's model's
            self.refresh_labels(new_labels)
        stage.computed += len(new_images)
        return Chunk(ids, pictures)

    def shown_path(self, path: Path) -> str:
        """A path as it may be stored, printed or logged."""
        return redacted_path(path) if self.config.redact_paths else str(path)

    def load_images(self, rows: list[dict], stage: Stage) -> tuple[list, list[dict]]:
        """The pictures of `rows` (image rows, or rows with an image_sha256), skipping and reporting any whose file
        is gone or changed since ingest."""
        shas = [row.get("image_sha256") or row["sha256"] for row in rows]
        paths = {image["sha256"]: image["path"] for image in self.store.images(shas)}
        images, kept = [], []
        for row, sha in zip(rows, shas):
            try:
                path = self.file_of(sha, paths[sha])
                if is_redacted(path):
                    raise ChangedImage(f"{path}: the path was redacted at ingest (--redact-paths); run every stage "
                                       "in one `localjudge run`, or ingest the images again in this command")
                images.append(load_verified(Path(path), sha, self.config.dicom_window))
                kept.append(row)
            except ChangedImage as error:
                stage.failed += 1
                # the stored path (a hash with --redact-paths) in the message, never the real one
                stage.errors.append({"path": paths[sha], "reason": str(error).replace(path, paths[sha])})
        return images, kept

    # --- the vision stage: predict and explain ------------------------------------------------------------
    def vision_model(self):
        if self._vision is None:
            self._vision = open_model(self.card, self._weights, self.config.device, self._backend,
                                      self._model_file_hash)
            if self.run_id:
                self.store.set_run_provider(self.run_id, self._vision.execution_provider)
        return self._vision

    @property
    def execution_provider(self) -> str | None:
        """Where the vision model computes (None until it is loaded)."""
        return self._vision.execution_provider if self._vision is not None else None

    def preprocessing(self) -> dict:
        """How pixels become the model's input: the card's geometry, and a DICOM window where one is given."""
        geometry = self.card.preprocessing()
        if self.config.dicom_window is not None:
            geometry["dicom_window"] = list(self.config.dicom_window)
        return geometry

    def prediction_key(self, image_sha256: str, vision_hash: str) -> str:
        extra = {}
        if not self.card.labels_registered:  # other names for the same outputs: another prediction
            extra["labels"] = self.card.label_list().names_digest()
        if self.card.task == "multilabel":  # sigmoids, not a softmax, of the same outputs
            extra["task"] = "multilabel"
        if extra:
            return content_key("prediction", image_sha256, vision_hash, self.preprocessing(), extra)
        return content_key("prediction", image_sha256, vision_hash, self.preprocessing())

    def saliency_key(self, prediction: dict, target: int | None = None) -> str:
        """A map is (prediction, method, layer, target class); the target is the predicted class unless given."""
        return content_key("saliency", prediction["id"], self.config.cam, self.card.target_tensor,
                           prediction["predicted_index"] if target is None else int(target))

    def targets(self, prediction: dict) -> list[int]:
        """The classes a prediction's maps explain: its predicted class; for a multilabel model each finding (a
        class whose probability reaches its threshold), none where the model finds nothing, and with --targets
        labelled also each labelled class the model missed (so a missed finding is explained too)."""
        if self.card.task != "multilabel":
            return [prediction["predicted_index"]]
        found = self.findings(prediction)
        targets = [int(i) for i in np.flatnonzero(found)]
        if self.config.targets == "labelled" and prediction["label_indices"]:
            targets = sorted(set(targets) | {i for i in json.loads(prediction["label_indices"]) if 0 <= i < len(found)})
        return targets

    def findings(self, prediction: dict) -> np.ndarray:
        """A multilabel prediction's findings: whether each class's probability reaches its threshold (the card's,
        one per class, else --finding-threshold)."""
        probabilities = unpack_array(prediction["probs"], (-1,), np.float32)
        thresholds = (np.asarray(self.card.thresholds, dtype=np.float32) if self.card.thresholds is not None
                      else np.full(len(probabilities), self.config.finding_threshold, dtype=np.float32))
        return probabilities >= thresholds

    def map_keys(self, prediction: dict) -> list[str]:
        return [self.saliency_key(prediction, target) for target in self.targets(prediction)]

    def plan(self, image_ids: list[str]) -> Plan:
        """The keys of the stored images' predictions, their predictions and maps already stored, and so what is
        missing. Stored predictions follow the images' current labels (a fixed label needs no new prediction)."""
        vision_hash = self.vision_hash()
        keys = {sha: self.prediction_key(sha, vision_hash) for sha in image_ids}
        stored = {p["image_sha256"]: p for p in self.store.predictions(keys.values())}
        if self.refresh_correctness([p["id"] for p in stored.values()]):  # labels changed: their targets may too
            stored = {p["image_sha256"]: p for p in self.store.predictions(keys.values())}
        if self.card.task == "multilabel":
            self.refresh_all_findings()
            self.refresh_findings(list(stored.values()))
        maps = {sha: self.map_keys(p) for sha, p in stored.items()}
        every = [key for keys_of in maps.values() for key in keys_of]
        return Plan(list(image_ids), keys, stored, maps, self.store.existing_ids("saliency_maps", every))

    def vision_batch(self, image_ids: list[str], predict: Stage, explain: Stage | None = None,
                     pictures: dict[str, Image.Image] | None = None) -> None:
        """The vision stage on one batch of stored images, as `plan` finds it: the missing predictions (and, with
        `explain`, maps) computed and stored. Each picture is read and verified once (none at all where `pictures`,
        read at ingest, has it), made into one input tensor, and predicted and explained from it, in one forward
        pass where both are missing and the backend can choose the explained class from that pass (torch). Adds
        every prediction key to `predict` and every map key to `explain`."""
        plan = self.plan(image_ids)
        predict.ids.extend(plan.predictions[sha] for sha in image_ids)
        stored = dict(plan.stored)
        need_prediction = plan.need_prediction
        need_map = plan.need_map if explain is not None else []
        wanted = [sha for sha in image_ids if sha in set(need_prediction) | set(need_map)]
        loaded = self._pictures(wanted, pictures or {}, predict if need_prediction else explain)
        predicted = [sha for sha in need_prediction if sha in loaded]
        explained = [sha for sha in need_map if sha in loaded]
        if predicted or explained:
            model = self.vision_model()
            order = [sha for sha in wanted if sha in loaded]
            inputs = to_tensor([loaded[sha] for sha in order], self.card)
            position = {sha: n for n, sha in enumerate(order)}
            predict.model_loaded |= bool(predicted)
            new_maps: dict[tuple[str, int], tuple[np.ndarray, str | None]] = {}
            if explain is not None:
                from ..saliency.engine import CamEngine

                explain.model_loaded = True
            with CamEngine(self.config.cam, model) if explain is not None else contextlib.nullcontext() as cam:
                # one forward pass predicts and explains, where the explained class is the predicted one
                together = cam is not None and self.card.task != "multilabel"
                if predicted:
                    batch = inputs[[position[sha] for sha in predicted]]
                    if together:
                        scores, maps, reasons = cam.predict_and_compute(batch)
                    else:
                        scores = model.predict(batch)
                    rows = self._prediction_rows(predicted, plan.predictions, scores, predict)
                    self.store.insert_rows("predictions", rows)
                    predict.computed += len(rows)
                    stored.update({row["image_sha256"]: row for row in rows})
                    if together:
                        new_maps.update({(sha, stored[sha]["predicted_index"]): found
                                         for sha, found in zip(predicted, zip(maps, reasons))})
                if cam is not None:  # every target still without its map (a multilabel model's findings)
                    targets = [(sha, target) for sha in order for target in self.targets(stored[sha])
                               if (sha, target) not in new_maps
                               and self.saliency_key(stored[sha], target) not in plan.stored_maps]
                    for chunk in batched(targets, self.config.batch_size):
                        maps, reasons = cam.compute_checked(inputs[[position[sha] for sha, _ in chunk]],
                                                            [target for _, target in chunk])
                        new_maps.update(zip(chunk, zip(maps, reasons)))
            if new_maps:
                rows = [self._map_row(stored[sha], target, *new_maps[(sha, target)]) for sha in image_ids
                        if sha in stored for target in self.targets(stored[sha]) if (sha, target) in new_maps]
                self.store.insert_rows("saliency_maps", rows)
                explain.computed += len(rows)
        if explain is not None:
            explain.ids.extend(key for sha in image_ids if sha in stored for key in self.map_keys(stored[sha]))

    def _pictures(self, image_ids: list[str], given: dict[str, Image.Image], stage: Stage | None) -> dict:
        """The pictures of `image_ids`: those given, the others read and verified (failures reported to `stage`)."""
        found = {sha: given[sha] for sha in image_ids if sha in given}
        missing = [{"sha256": sha} for sha in image_ids if sha not in given]
        if missing:
            pictures, kept = self.load_images(missing, stage if stage is not None else Stage())
            found.update({row["sha256"]: picture for row, picture in zip(kept, pictures)})
        return found

    def _prediction_rows(self, image_ids: list[str], keys: dict[str, str], scores: np.ndarray,
                         stage: Stage) -> list[dict]:
        labels = self.card.label_list()
        images = {row["sha256"]: row for row in self.store.images(image_ids)}
        preprocessing = json.dumps(self.preprocessing(), sort_keys=True)
        vision_hash = self.vision_hash()
        rows = []
        for sha, p in zip(image_ids, scores):
            label = images[sha]["label"]
            top5 = np.argsort(-p)[:5]
            predicted = main_class(p, self.card.task)
            label_indices = resolve_label(label, labels)
            if label is not None and label_indices is None:
                stage.unmapped_labels.add(label)
            rows.append({
                "id": keys[sha], "image_sha256": sha, "model": self.card.name, "model_hash": vision_hash,
                "backend": self._backend, "preprocessing": preprocessing, "predicted_index": predicted,
                "predicted_label": labels.names[predicted], "confidence": float(p[predicted]),
                "task": "multilabel" if self.card.task == "multilabel" else None,
                "top5": json.dumps([{"index": int(i), "label": labels.names[int(i)], "probability": float(p[i])}
                                    for i in top5]),
                "probs": pack_array(p, np.float32),
                "label_indices": json.dumps(label_indices) if label_indices is not None else None,
                "correct": None if label_indices is None else int(predicted in label_indices),
                "run_id": self.run_id, "created_at": now(),
            })
        return rows

    def _map_row(self, prediction: dict, target: int, saliency: np.ndarray, failure: str | None) -> dict:
        """A map as it is stored; `failure` is why it is no finding (a degenerate map, kept and never judged). A
        multilabel model's map records whether its target is a finding of the model or a labelled one it missed."""
        probabilities = unpack_array(prediction["probs"], (-1,), np.float32)
        finding = int(self.findings(prediction)[int(target)]) if self.card.task == "multilabel" else None
        current = 1 if finding is not None else None  # a map is made for a target of this run's settings
        return {"id": self.saliency_key(prediction, target), "prediction_id": prediction["id"],
                "image_sha256": prediction["image_sha256"], "method": self.config.cam,
                "target_layer": self.card.target_tensor, "target_index": int(target),
                "target_label": self.card.label_list().names[int(target)],
                "target_probability": float(probabilities[int(target)]), "finding": finding,
                "current_target": current,
                "height": int(saliency.shape[0]), "width": int(saliency.shape[1]), "map": pack_array(saliency),
                "failure": failure, "run_id": self.run_id, "created_at": now()}

    def warn_unmapped(self, stage: Stage) -> None:
        unmapped = stage.unmapped_labels
        if unmapped:
            examples = ", ".join(repr(label) for label in sorted(unmapped)[:5])
            warnings.warn(f"{len(unmapped)} label(s) match no class of {self.card.name} ({examples}); those images "
                          "count as unlabelled. Use class indices, WordNet ids or the model's class names.",
                          stacklevel=3)

    def refresh_correctness(self, prediction_ids: list[str]) -> int:
        """Correctness follows the image's current label, so a fixed label needs no new prediction. Returns how
        many predictions changed."""
        labels = self.card.label_list()
        updates = [change for row in self.store.predictions_with_labels(prediction_ids)
                   if (change := relabelled(row, labels)) is not None]
        self.store.update_predictions(updates)
        return len(updates)

    def refresh_labels(self, image_ids: list[str]) -> int:
        """Every model's predictions of these images follow their current labels, each resolved by the label list
        its predicting run used (this audit's own list for its own model): a corrected label changes every model's
        matrix, not only the one of the model that read it. Returns how many predictions changed."""
        from ..queries import label_lists_of_runs

        rows = self.store.predictions_of_images(image_ids)
        own = self.vision_hash()
        others = label_lists_of_runs(self.store, {r["run_id"] for r in rows if r["model_hash"] != own})
        updates = []
        for row in rows:
            labels = self.card.label_list() if row["model_hash"] == own else others.get(row["run_id"])
            change = None if labels is None else relabelled(row, labels)  # None: its run's list cannot be read
            # a list recorded by its names only (a run's own list) cannot read WordNet ids: a label it cannot
            # resolve is not taken to be no label
            if (change is not None and change["label_indices"] is None and not labels.by_wnid and row["label"]
                    and row["model_hash"] != own):
                continue
            if change is not None:
                updates.append(change)
        self.store.update_predictions(updates)
        return len(updates)

    def refresh_findings(self, predictions: list[dict]) -> None:
        """A multilabel map's target follows this run's settings (as correctness follows the current labels):
        whether the model finds it at this run's thresholds, and whether it is a target now (a finding, or with
        --targets labelled a labelled class); a map stored under other settings is marked again, not made again."""
        marks = {}
        for p in predictions:
            found = self.findings(p)
            targets = set(self.targets(p))
            marks[p["id"]] = (found, targets)
        updates = {}
        for row in self.store.map_findings(marks):
            found, targets = marks[row["prediction_id"]]
            if row["target_index"] >= len(found):
                continue
            now = (int(found[row["target_index"]]), int(row["target_index"] in targets))
            if (row["finding"], row["current_target"]) != now:
                updates[row["id"]] = now
        self.store.set_map_findings(updates)

    def refresh_all_findings(self) -> None:
        """Once per audit: every stored prediction of this multilabel model marked for this run's settings, so that
        a run on part of a dataset leaves no matrix of mixed thresholds."""
        if self.card.task == "multilabel" and not self._findings_marked:
            self._findings_marked = True
            ids = self.stored_predictions()
            for start in range(0, len(ids), 1024):
                self.refresh_findings(self.store.predictions(ids[start:start + 1024]))

    def stored_predictions(self) -> list[str]:
        """Every prediction of this configuration's model in the store (for `explain` on its own)."""
        return self.store.prediction_ids(self.vision_hash(), json.dumps(self.preprocessing(), sort_keys=True))

    def sanity_predictions(self) -> list[str]:
        """eval sanity's predictions: this model's on torch, else those the same weights made on ONNX Runtime (a store
        made under --backend auto). The test randomises torch parameters and reads only the images and their
        predicted classes."""
        found = self.stored_predictions()
        if found or self.card.framework == "onnx":
            return found
        try:  # the graph names the model on ONNX Runtime: exported (or verified) here
            on_onnx = model_hash(self.card, self._weights, self._model_file_hash, "onnx")
        except (ImportError, UserError):  # no ONNX exporter here, or the export failed: no graph names them
            return found
        return self.store.prediction_ids(on_onnx, json.dumps(self.preprocessing(), sort_keys=True))

    def explain(self, prediction_ids: list[str], stage: Stage | None = None) -> Stage:
        """Maps for stored predictions (`localjudge explain`), a batch at a time."""
        from ..saliency.engine import CamEngine

        stage = Stage() if stage is None else stage
        # one map per target of each prediction (its class; each finding of a multilabel model)
        predictions = self.store.predictions(prediction_ids)
        if self.card.task == "multilabel":
            self.refresh_all_findings()
            self.refresh_findings(predictions)
        wanted = [{**p, "target": target} for p in predictions for target in self.targets(p)]
        keys = [self.saliency_key(w, w["target"]) for w in wanted]
        existing = self.store.existing_ids("saliency_maps", keys)
        stage.ids.extend(keys)
        missing = [w for w, key in zip(wanted, keys) if key not in existing]
        if not missing:
            return stage
        model = self.vision_model()
        stage.model_loaded = True
        with CamEngine(self.config.cam, model) as cam:
            for batch in self.progress(batched(missing, self.config.batch_size),
                                       -(-len(missing) // self.config.batch_size), "explain"):
                pictures, batch = self.load_images(list(batch), stage)
                if not batch:
                    continue
                maps, reasons = cam.compute_checked(to_tensor(pictures, self.card), [w["target"] for w in batch])
                rows = [self._map_row(w, w["target"], m, reason) for w, m, reason in zip(batch, maps, reasons)]
                self.store.insert_rows("saliency_maps", rows)
                stage.computed += len(rows)
        return stage

    def stored_saliency_maps(self) -> list[str]:
        return self.store.saliency_ids(self.config.cam, self.card.target_tensor, self.stored_predictions())

    # --- ground truth and region agreement ----------------------------------------------------------------
    def has_ground_truth_source(self) -> bool:
        return any((self.config.masks, self.config.mask_column, self.config.boxes))

    def add_ground_truth(self, image_ids: list[str], manifest: str | Path | None = None) -> Stage:
        """Read the configured ground-truth regions of `image_ids` (stored images) and store them. A mask that cannot
        be read is reported with its file and reason; the other images go on."""
        from ..ground_truth import (GroundTruthError, RegionFailure, from_coco_boxes, from_manifest_column,
                                    from_mask_folder)

        config = self.config
        stage = Stage()
        images = self.store.images(image_ids)
        found: dict = {}
        if config.masks:
            found.update(from_mask_folder(Path(config.masks), images))
        if config.mask_column:
            if manifest is None or not Path(manifest).is_file():
                raise GroundTruthError("--mask-column needs the CSV manifest the images came from")
            found.update(from_manifest_column(Path(manifest), config.mask_column, config.path_column, images,
                                              config.mask_label_column))
        if config.boxes:
            found.update(from_coco_boxes(Path(config.boxes), images))
        rows = []
        for (sha, label), region in found.items():
            if isinstance(region, RegionFailure):
                stage.failed += 1
                stage.errors.append({"path": region.reference, "reason": region.reason})
                continue
            packed = np.packbits(region.mask)
            rows.append({"image_sha256": sha, "label": label, "source": region.source, "reference": region.reference,
                         "height": region.mask.shape[0], "width": region.mask.shape[1],
                         "mask": pack_array(region.mask, dtype=np.uint8),
                         "mask_sha256": hashlib.sha256(packed.tobytes()).hexdigest(),
                         "area_fraction": float(region.mask.mean()), "run_id": self.run_id, "created_at": now()})
        stage.ids.extend(dict.fromkeys(row["image_sha256"] for row in rows))
        # an image whose regions (labels and masks) changed gets its new set whole; an unchanged one is left as is
        stored: dict[str, set] = {}
        for row in self.store.ground_truth(stage.ids):
            stored.setdefault(row["image_sha256"], set()).add((row["label"], row["mask_sha256"]))
        found_sets: dict[str, set] = {}
        for row in rows:
            found_sets.setdefault(row["image_sha256"], set()).add((row["label"], row["mask_sha256"]))
        new = [row for row in rows if stored.get(row["image_sha256"]) != found_sets[row["image_sha256"]]]
        self.store.set_ground_truth(new)
        stage.computed = len(new)
        return stage

    def evaluate_regions(self, image_ids: list[str], saliency_ids: list[str],
                         manifest: str | Path | None = None) -> dict[str, Stage]:
        is_csv = manifest is not None and Path(manifest).suffix.lower() == ".csv"
        truth = self.add_ground_truth(image_ids, manifest if is_csv else None)
        return {"truth": truth, "regions": self.score_regions(saliency_ids)}

    def score_regions(self, saliency_ids: list[str], stage: Stage | None = None) -> Stage:
        """IoU, Dice, pixel accuracy, F1 (and precision, recall) of each map's attention mask (map >= beta) against
        its image's ground-truth region (its target's own, where the image has one per finding: see
        ground_truth.region_of_map), compared in the model's view (the region resized and centre-cropped as the
        image was, nearest neighbour). Maps without a region are skipped."""
        from ..analysis.localisation import energy_pointing
        from ..analysis.regions import attention_mask, region_scores
        from ..ground_truth import region_in_view, region_of_map

        stage = Stage() if stage is None else stage
        maps = [m for m in self.store.saliency_maps(saliency_ids) if not m.get("failure")]  # degenerate: no finding
        regions: dict[str, dict[str, dict]] = {}
        for t in self.store.ground_truth({m["image_sha256"] for m in maps}):
            regions.setdefault(t["image_sha256"], {})[t["label"]] = t
        predictions = {p["id"]: p for p in self.store.predictions({m["prediction_id"] for m in maps
                                                                    if m["image_sha256"] in regions})}
        truths = {}
        for m in maps:
            if m["image_sha256"] in regions:
                labels = predictions[m["prediction_id"]]["label_indices"]
                truth = region_of_map(regions[m["image_sha256"]], m, json.loads(labels) if labels else None)
                if truth is not None:
                    truths[m["id"]] = truth
        maps = [m for m in maps if m["id"] in truths]
        beta = self.config.beta
        keys = {m["id"]: content_key("regions", m["id"], truths[m["id"]]["mask_sha256"], beta) for m in maps}
        stage.ids.extend(keys.values())
        # (a score stored before mass shares were kept, m011, is scored again and replaced)
        existing = self.store.existing_ids("region_scores", keys.values(), where="and mass_share is not null")
        missing = [m for m in maps if keys[m["id"]] not in existing]
        geometry = {m["prediction_id"]: json.loads(predictions[m["prediction_id"]]["preprocessing"]) for m in missing}
        rows = []
        for m in missing:
            truth = truths[m["id"]]
            saliency = unpack_array(m["map"], (m["height"], m["width"]))
            truth_view = region_in_view(truth, geometry[m["prediction_id"]], saliency.shape)
            attended = attention_mask(saliency, beta)
            rows.append({"id": keys[m["id"]], "saliency_id": m["id"], "image_sha256": m["image_sha256"],
                         "mask_sha256": truth["mask_sha256"], "beta": beta, **region_scores(attended, truth_view),
                         "attended_fraction": float(attended.mean()),
                         # an empty region holds none of the map's mass (0, not unknown: a NULL is scored again)
                         "mass_share": energy_pointing(saliency, truth_view) or 0.0, "run_id": self.run_id,
                         "created_at": now()})
        self.store.upsert_rows("region_scores", rows)
        stage.computed += len(rows)
        return stage

    def score_artifacts(self, saliency_ids: list[str], regions: list) -> Stage:
        """The share of each map's mass in each artifact region (analysis.artifacts), stored; degenerate maps are
        skipped. A box of the image is cut and resized as the image was for the model, nearest neighbour."""
        from ..analysis.artifacts import box_mask, mass_share, view_region
        from ..ground_truth import oriented_size
        from ..vision.preprocess import mask_view

        stage = Stage()
        for start in range(0, len(saliency_ids), 256):
            chunk = saliency_ids[start:start + 256]
            keys = {(sid, region.name): content_key("artifact", sid, region.digest()) for sid in chunk
                    for region in regions}
            stage.ids.extend(keys.values())
            existing = self.store.existing_ids("artifact_scores", keys.values())
            wanted = {sid for (sid, _), key in keys.items() if key not in existing}
            maps = [m for m in self.store.saliency_maps(wanted) if not m.get("failure")]
            if not maps:
                continue
            predictions = {p["id"]: p for p in self.store.predictions({m["prediction_id"] for m in maps})}
            images = {i["sha256"]: i for i in self.store.images({m["image_sha256"] for m in maps})}
            rows = []
            for m in maps:
                saliency = unpack_array(m["map"], (m["height"], m["width"]))
                for region in regions:
                    key = keys[(m["id"], region.name)]
                    if key in existing:
                        continue
                    if region.view_pixels is not None:
                        mask = view_region(*region.view_pixels, saliency.shape)
                    else:
                        image = images[m["image_sha256"]]
                        width, height = oriented_size(Path(image["path"]), image["width"], image["height"])
                        geometry = json.loads(predictions[m["prediction_id"]]["preprocessing"])
                        mask = mask_view(box_mask(region.box, width, height), geometry, saliency.shape[1])
                        if mask.shape != saliency.shape:
                            mask = np.asarray(Image.fromarray(mask).resize(saliency.shape[::-1], Image.NEAREST))
                    rows.append({"id": key, "saliency_id": m["id"], "image_sha256": m["image_sha256"],
                                 "region": region.name, "spec": region.spec, "mass_share": mass_share(saliency, mask),
                                 "area_fraction": float(mask.mean()), "run_id": self.run_id, "created_at": now()})
            self.store.upsert_rows("artifact_scores", rows)
            stage.computed += len(rows)
        return stage

    def localisation(self, saliency_ids: list[str]) -> dict:
        """The localisation suite (analysis.localisation) of these maps against their images' regions, beside the
        trivial baselines on the same regions (queries.localisation)."""
        from ..queries import localisation

        return localisation(self.store, saliency_ids, self.config.beta)

    # --- sanity checks ------------------------------------------------------------------------------------
    def sanity(self, prediction_ids: list[str], methods: list[str], seed: int = 0) -> dict:
        """Adebayo et al.'s model-parameter randomisation (the layers after the target tensor, cascading from the
        head) and random-logit tests of each method on these stored predictions' images (see analysis.sanity).
        The torch backend only: its parameters are what is randomised."""
        from ..analysis.sanity import compare_maps, insensitive, unrelated_floor
        from ..saliency.engine import CamEngine

        if self._backend != "torch":
            raise ValueError("eval sanity randomises the model's parameters: use --backend torch")
        stage = Stage()
        predictions = self.store.predictions(prediction_ids)
        pictures, predictions = self.load_images(predictions, stage)
        if not predictions:
            raise ValueError("no stored predictions of this model whose images can be read")
        targets = [p["predicted_index"] for p in predictions]
        rng = np.random.default_rng(seed)
        classes = len(self.card.label_list().names)
        others = [int((t + rng.integers(1, classes)) % classes) for t in targets]  # never the predicted class
        model = self.vision_model()
        size = self.config.batch_size

        def maps(method: str, of_model, classes_: list[int]) -> list[np.ndarray]:
            """The method's maps of every image for these classes, a batch at a time."""
            engine = CamEngine(method, of_model)
            return [m for start in range(0, len(pictures), size)
                    for m in engine.compute(to_tensor(pictures[start:start + size], self.card),
                                            classes_[start:start + size])]

        after = layers_after_target(model.module, model.target_layer, to_tensor(pictures[:1], self.card))
        results = {}
        for method in methods:
            original = maps(method, model, targets)
            random_logit = compare_maps(original, maps(method, model, others))
            cascade = []
            for step in range(1, len(after) + 1):
                randomised = after[-step:]  # from the head back
                changed = open_model(self.card, self._weights, self.config.device, "torch")
                randomise(changed.module, randomised, seed)
                cascade.append({"randomised": randomised, **compare_maps(original, maps(method, changed, targets))})
            flagged = bool(cascade) and insensitive(cascade[-1])
            results[method] = {"random_logit": random_logit, "cascade": cascade, "flagged": flagged,
                               "unrelated_images": unrelated_floor(original)}
        images = [p["image_sha256"] for p in predictions]
        vision_hash = self.vision_hash()
        self.store.insert_rows("sanity_checks", [{
            "id": content_key("sanity", vision_hash, self.card.target_tensor, method, images, seed),
            "model": self.card.name, "model_hash": vision_hash, "target_layer": self.card.target_tensor,
            "method": method, "images": len(images), "seed": seed,
            "random_logit_rank": found["random_logit"]["median_rank_correlation"],
            "random_logit_ssim": found["random_logit"]["median_ssim"],
            "randomised_rank": found["cascade"][-1]["median_rank_correlation"] if found["cascade"] else None,
            "randomised_ssim": found["cascade"][-1]["median_ssim"] if found["cascade"] else None,
            "cascade": json.dumps(found["cascade"]), "flagged": int(found["flagged"]), "run_id": self.run_id,
            "created_at": now()} for method, found in results.items()])
        return {"model": self.card.name, "target": self.card.target_tensor, "images": len(predictions),
                "layers_after_target": after, "seed": seed, "methods": results, "errors": stage.errors}

    # --- faithfulness -------------------------------------------------------------------------------------
    def faithfulness(self, saliency_ids: list[str], stage: Stage | None = None) -> Stage:
        """Deletion and insertion AUC, AOPC (most relevant first), Average Drop and Increase in Confidence of each
        map (see analysis.faithfulness), on the vision backend, many perturbed inputs per forward pass."""
        from ..analysis.faithfulness import (aopc, area, confidence_change, curves, perturbed_inputs, relevance_ranks,
                                             step_counts)

        stage = Stage() if stage is None else stage
        config = self.config
        if self.card.task != "classification":
            raise ValueError(f"{self.card.name}: faithfulness metrics are for classifiers (its task is "
                             f"{self.card.task})")
        steps, fill = config.faithfulness_steps, config.faithfulness_baseline
        maps = [m for m in self.store.saliency_maps(saliency_ids) if not m.get("failure")]  # degenerate: no ranking
        keys = {m["id"]: content_key("faithfulness", m["id"], steps, fill) for m in maps}
        stage.ids.extend(keys.values())
        existing = self.store.existing_ids("faithfulness", keys.values())
        missing = [m for m in maps if keys[m["id"]] not in existing]
        if not missing:
            return stage
        model = self.vision_model()
        stage.model_loaded = True
        mean = torch.tensor(self.card.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.card.std, dtype=torch.float32).view(3, 1, 1)
        # Perturbed inputs per forward pass. PyTorch on a CPU runs these networks fastest a few inputs at a time
        # (EfficientNet-Lite0, 820 inputs on 2 cores: 11.3 s in fours, 34 s in 64s); ONNX Runtime and GPUs like
        # large batches.
        chunk = 4 if self._backend == "torch" and model.device.type == "cpu" else max(1, config.batch_size) * 4
        group = max(1, 2 * chunk // (2 * steps + 3))  # images whose inputs fill about two forward passes
        for batch in self.progress(batched(missing, group), -(-len(missing) // group), "faithfulness"):
            pictures, batch = self.load_images(list(batch), stage)
            if not batch:
                continue
            images = to_tensor(pictures, self.card)
            saliency = torch.stack([torch.from_numpy(unpack_array(m["map"], (m["height"], m["width"])))
                                    for m in batch])
            if saliency.shape[1:] != images.shape[2:]:  # as torchcam: bilinear onto the input's positions
                saliency = torch.nn.functional.interpolate(saliency.unsqueeze(1), images.shape[2:], mode="bilinear",
                                                           align_corners=False).squeeze(1)
            ranks = relevance_ranks(saliency)
            counts = step_counts(int(ranks.shape[1]), steps)
            baseline = torch.zeros_like(images[0]) if fill == "zeros" else ((0 - mean) / std).expand_as(images[0])
            inputs, targets = [], []
            for index, m in enumerate(batch):
                inputs += [images[index:index + 1], (images[index] * saliency[index]).unsqueeze(0),
                           perturbed_inputs(images[index], baseline, ranks[index], counts)]
                targets += [m["target_index"]] * (2 + 2 * (len(counts) - 2) + 1)
            scores = self._target_scores(model, torch.cat(inputs), np.asarray(targets), chunk)
            per_image = 2 + 2 * (len(counts) - 2) + 1
            rows = []
            for index, m in enumerate(batch):
                own = scores[index * per_image:(index + 1) * per_image]
                original, explained = float(own[0]), float(own[1])
                deletion, insertion = curves(original, own[2:], len(counts))
                drop, increase = confidence_change(original, explained)
                rows.append({"id": keys[m["id"]], "saliency_id": m["id"], "image_sha256": m["image_sha256"],
                             "target_index": m["target_index"], "steps": steps, "baseline": fill,
                             "backend": self._backend, "original_score": original, "explanation_score": explained,
                             "deletion_auc": area(deletion, counts), "insertion_auc": area(insertion, counts),
                             "aopc": aopc(deletion), "average_drop": drop, "increase_in_confidence": increase,
                             "deletion_curve": json.dumps([round(float(v), 7) for v in deletion]),
                             "insertion_curve": json.dumps([round(float(v), 7) for v in insertion]),
                             "run_id": self.run_id, "created_at": now()})
            self.store.insert_rows("faithfulness", rows)
            stage.computed += len(rows)
        return stage

    @staticmethod
    def _target_scores(model, inputs: torch.Tensor, targets: np.ndarray, chunk: int) -> np.ndarray:
        scores = []
        for start in range(0, len(inputs), chunk):
            probs = model.predict(inputs[start:start + chunk])
            scores.append(probs[np.arange(len(probs)), targets[start:start + chunk]])
        return np.concatenate(scores)

    # --- judge ------------------------------------------------------------------------------------------
    def judge(self, saliency_ids: list[str], stage: Stage | None = None) -> Stage:
        """Judge stored maps (`localjudge judge`, a sweep's setting), --judge-batch-size at a time."""
        from .continuous import ContinuousJudging

        stage = Stage() if stage is None else stage
        missing = self.judgments_missing(saliency_ids, stage)
        batches = self.progress(batched(missing, self.config.judge_batch_size),
                                -(-len(missing) // self.config.judge_batch_size), "judge")
        judging = ContinuousJudging.open_for(self, stage) if missing else None
        if judging is None:
            for batch in batches:
                self.judge_batch(batch, stage)
            return stage
        for batch in batches:  # the next batch is handed over once every request of the last has a row
            judging.submit(batch, {})
            while judging.waiting:
                judging.step()
        judging.finish()
        return stage

    def judgment_key_parts(self) -> tuple[str, str, dict]:
        """The prompt template, its hash and the decoding parameters: what every judgment of this audit shares."""
        if self._judgment_key_parts is None:
            template, text = self.prompt()
            self._judgment_key_parts = (template, prompt_hash(text), self.judge_spec.decoding(self.config))
        return self._judgment_key_parts

    def prompt(self, image_mode: str | None = None, style: str | None = None) -> tuple[str, str]:
        """The prompt template of this audit (its image mode and style, unless others are given, naming its CAM
        method, with a line for the class descriptions where the labels have any) and its text as stored and hashed
        (with those descriptions)."""
        from ..saliency.methods import METHODS

        config = self.config
        descriptions = self.class_descriptions()
        template = prompt_template(image_mode or config.image_mode, style or config.prompt_style,
                                   METHODS[config.cam].title, described=bool(descriptions))
        if config.image_kind:  # a kind named for the run is part of its prompt (and so of its hash and setting)
            template = fill_kind(template, config.image_kind)
        return template, prompt_text(template, descriptions)

    def class_descriptions(self) -> dict[str, str]:
        labels = self.card.label_list()
        return {name: labels.description(index) for index, name in enumerate(labels.names)
                if labels.description(index)}

    def image_kind(self, stored: str | None) -> str:
        """What the judge is told an image is: the run's --image-kind, else what the file said, else a photo."""
        return self.config.image_kind or stored or PHOTO

    def judge_input(self) -> dict:
        """What shapes the judge's input besides the map, the judge and its decoding, as every judgment's key and row
        hold it (None: not part of the input): alpha and beta only where they shape what the judge sees (the masked
        image, or a judge that reads the soft mask; a heatmap overlay reads neither), the prompt only for a judge
        that reads one, and the version of the rendering code."""
        config = self.config
        masked = config.image_mode == "masked" or self.judge_spec.reads_maps
        _, template_hash, _ = self.judgment_key_parts()
        return {"alpha": config.alpha if masked else None, "beta": config.beta if masked else None,
                "prompt_hash": template_hash if self.judge_spec.reads_prompt else None,
                "render_version": RENDER_VERSION}

    def judgment_keys(self, saliency_ids: list[str]) -> dict[str, str]:
        """Each map's judgment key: the map, exactly what shapes the judge's input (judge_input), and what the judge
        is told the image is (so an image whose kind is learnt later, or a kind named for the run, is judged
        again). The first rendering version adds nothing, so the keys of judgments made before it are unchanged."""
        config = self.config
        _, _, decoding = self.judgment_key_parts()
        shown = self.judge_input()
        version = [] if shown["render_version"] == FIRST_RENDER_VERSION else [shown["render_version"]]
        kinds = self.image_kinds(saliency_ids)
        return {sid: content_key("judgment", sid, shown["alpha"], shown["beta"], config.image_mode, self.judge_hash(),
                                 shown["prompt_hash"], decoding, config.judge_image_size, kinds[sid], *version)
                for sid in saliency_ids}

    def judgment_filters(self) -> dict:
        """The filters (queries.filter_clauses) that select this audit's judgments: its vision model, CAM and judge
        setting, with what its judgments hold as None (judge_input) asked for as NULL."""
        from ..queries import NULL

        config = self.config
        _, _, decoding = self.judgment_key_parts()
        shown = {k: NULL if v is None else v for k, v in self.judge_input().items()}
        return {"model": self.card.name, "model_hash": self.vision_hash(), "cam": config.cam,
                "target_layer": self.card.target_tensor, "judge_model": self.judge_name(),
                "judge_model_hash": self.judge_hash(), "image_mode": config.image_mode,
                "judge_image_size": config.judge_image_size, "decoding": json.dumps(decoding, sort_keys=True),
                **shown}

    def image_kinds(self, saliency_ids: list[str]) -> dict[str, str]:
        """What the judge is told each map's image is (see `image_kind`), by map id."""
        stored = self.store.image_kinds_of_maps(saliency_ids)
        return {sid: self.image_kind(stored.get(sid)) for sid in saliency_ids}

    def judgeable(self, saliency_ids: Iterable[str]) -> list[str]:
        """The maps a judge is shown: all but the degenerate ones (stored as map failures)."""
        saliency_ids = list(saliency_ids)
        failed = self.store.failed_maps(saliency_ids)
        return [sid for sid in saliency_ids if sid not in failed]

    def judgments_missing(self, saliency_ids: list[str], stage: Stage | None = None) -> list[str]:
        """The maps still to judge: no judgment yet, or one whose backend failed (worth another try); degenerate
        maps are never judged. Adds every judgment key to `stage`, where one is given."""
        saliency_ids = self.judgeable(saliency_ids)
        keys = self.judgment_keys(saliency_ids)
        existing = self.store.existing_ids("judgments", keys.values())
        retry = self.store.retryable_judgments(keys.values())
        if stage is not None:
            stage.ids.extend(keys[s] for s in saliency_ids)
        return [sid for sid in saliency_ids if keys[sid] not in existing or keys[sid] in retry]

    def use_judge(self, judge) -> None:
        """A judge loaded once by the caller for several audits (a sweep over alpha, beta and prompts); the caller
        closes it, not this audit."""
        self._judge = judge
        self._owns_judge = False

    def progress(self, iterable: Iterable, total: int, desc: str, unit: str = "batch") -> Iterator:
        """Each item, counted on a bar (a terminal) or in a log line every --progress-seconds (anywhere else)."""
        return progress(iterable, total, desc, self.show_progress, self.config.progress_seconds, unit)

    def judge_model(self) -> Judge:
        config = self.config
        if self._judge is None:
            self._judge = self.judge_spec.open(config, self.judge_identity())
        if not self._prompt_stored and self.judge_spec.reads_prompt:
            _, template_hash, _ = self.judgment_key_parts()
            self.store.add_prompt(template_hash, config.image_mode, self.prompt()[1])
            self._prompt_stored = True
        return self._judge

    def judge_batch(self, saliency_ids: Sequence[str], stage: Stage,
                    views: dict[str, Image.Image] | None = None) -> None:
        """Judge one batch and store it in one transaction. `views` are the model's views of some images at the
        judge's image size (by sha256), rendered from the pictures read at ingest; the others are read here. A
        server that stopped answering (or refuses every request) ends the stage after its failures are stored."""
        if not saliency_ids:
            return
        judge = self.judge_model()
        stage.model_loaded = True
        rows, stop = self._judge_batch(judge, list(saliency_ids), stage, views or {})
        self.store_judgments(rows, stage)
        if stop is not None:
            raise self.stopped(stop, stage) from stop

    def stopped(self, stop: JudgeStopped, stage: Stage) -> JudgeError:
        """The error a stopped judge stage ends the run with, counting what was stored."""
        return JudgeError(f"{stop} ({stage.computed - self._judgments_failed} judged and {self._judgments_failed} "
                          "stored as failures in this run so far)")

    def claim(self, saliency_ids: list[str], stage: Stage) -> list[str]:
        """The maps this audit judges now: their judgments claimed for it in the store, but those another live run
        is judging or has judged since they were found missing (counted in `stage.elsewhere`): two runs on one
        store split the judge work."""
        keys = self.judgment_keys(saliency_ids)
        claimed = self.store.claim_judgments(list(keys.values()), self._lease, lease_holder_alive)
        stage.elsewhere += len(saliency_ids) - len(claimed)
        return [sid for sid in saliency_ids if keys[sid] in claimed]

    def renew_claims(self) -> None:
        """This audit's claims last another lease from now: for a run that claims its work before sending it out
        (a Ray run's judge-only maps), called as it starts and as its batches come back, so they do not expire
        while it works. A renewal rewrites every claim: done at most every third of a lease."""
        moment = time.monotonic()
        if moment - self._claims_renewed >= self._lease["seconds"] / 3:
            self.store.renew_leases(self._lease["owner"], self._lease["seconds"])
            self._claims_renewed = moment

    def store_judgments(self, rows: list[dict], stage: Stage) -> None:
        """One batch's judgments, in one transaction, counted in `stage`; this audit's claims on them end."""
        self.store.upsert_judgments(rows, self._lease["owner"])
        failed = sum(r["status"] == "failed" for r in rows)
        stage.computed += len(rows)
        stage.failed += failed
        self._judgments_failed += failed

    def judge_views(self, image_ids: Iterable[str], pictures: dict[str, Image.Image]) -> dict[str, Image.Image]:
        """The model's views of these pictures at the judge's image size: what the judge's image is drawn on. By
        this audit's preprocessing, which is every one of its predictions' (it is part of their key)."""
        geometry = self.preprocessing()
        return {sha: model_view(pictures[sha], geometry, self.config.judge_image_size) for sha in image_ids
                if sha in pictures}

    def judge_requests(self, saliency_ids: list[str], stage: Stage,
                       views: dict[str, Image.Image]) -> "JudgeBatch | None":
        """The judge's requests for these maps (their images read where no view is given), or None if none is left
        to show (degenerate maps are never shown; an unreadable image's failure is counted in `stage`)."""
        config = self.config
        template, _, _ = self.judgment_key_parts()
        saliency_ids = self.claim(saliency_ids, stage)
        maps = [m for m in self.store.saliency_maps(saliency_ids) if not m.get("failure")]  # never shown to a judge
        predictions = {p["id"]: p for p in self.store.predictions([m["prediction_id"] for m in maps])}
        kinds = self.image_kinds([m["id"] for m in maps])
        labels = self.card.label_list()
        unseen = list({m["image_sha256"]: m for m in maps if m["image_sha256"] not in views}.values())
        if unseen:
            pictures, kept = self.load_images(unseen, stage)
            views = {**views, **self.judge_views([m["image_sha256"] for m in kept],
                                                 {m["image_sha256"]: p for m, p in zip(kept, pictures)})}
        maps = [m for m in maps if m["image_sha256"] in views]
        if not maps:
            return None
        requests = []
        draws = self.judge_spec.reads_image(config)
        for m in maps:
            prediction = predictions[m["prediction_id"]]
            saliency = unpack_array(m["map"], (m["height"], m["width"]))
            view = views[m["image_sha256"]]
            # M at the view's size, computed once for the masked image and for a judge that reads the map itself
            mask = (soft_mask(upsample(saliency, view.size), config.alpha, config.beta)
                    if self.judge_spec.reads_maps else None)
            image = (judge_image(view, saliency, config.image_mode, config.alpha, config.beta, mask)
                     if draws else None)
            extra = {"view": view, "mask": mask} if self.judge_spec.reads_maps else {}
            # what the map explains: the predicted class, or one finding of a multilabel model
            target = m["target_index"] if m["target_index"] is not None else prediction["predicted_index"]
            label = labels.names[target] if target < len(labels.names) else prediction["predicted_label"]
            prompt = render(template, label, kinds[m["id"]], labels.description(target))
            requests.append(JudgeRequest(image=image, label=label, prompt=prompt, label_index=target, **extra))
        return JudgeBatch(maps=maps, kinds=kinds, requests=requests)

    def _judge_batch(self, judge: Judge, saliency_ids: list[str], stage: Stage,
                     views: dict[str, Image.Image]) -> tuple[list[dict], JudgeStopped | None]:
        """The rows of one batch's judgments, and the reason to stop the stage if the judge gave one."""
        batch = self.judge_requests(saliency_ids, stage, views)
        if batch is None:
            return [], None
        started = time.perf_counter()
        stop = None
        try:
            outputs = judge.judge(batch.requests)
            backend_error = None
        except JudgeStopped as error:  # each request's failure is stored; then the stage stops
            outputs, backend_error, stop = error.outputs, None, error
        except Exception as error:  # a crashed batch is stored as failures and retried on the next run
            outputs, backend_error = None, f"{type(error).__name__}: {error}"
        stop = stop or self.judge_failed(backend_error)
        return self.judgment_rows(batch, outputs, time.perf_counter() - started, backend_error), stop

    def judge_failed(self, error: str | None) -> JudgeStopped | None:
        """Counts judge calls that raised (`error`; None: one answered): the reason to stop once
        --judge-failure-limit of them came in a row (the run would otherwise store failures for the whole dataset)."""
        if error is None:
            self._failed_batches_in_a_row = 0
            return None
        self._failed_batches_in_a_row += 1
        limit = self.config.judge_failure_limit
        if self._failed_batches_in_a_row < limit:
            return None
        return JudgeStopped(f"the judge raised {limit} time{'s' if limit > 1 else ''} in a row, with no batch answered "
                            f"in between (the last: {error}); stopped, with every judgment so far stored: fix the "
                            "cause and run again, only what is missing or failed is judged", [])

    def judgment_rows(self, batch: "JudgeBatch", outputs: list[JudgeOutput] | None, seconds: float,
                      backend_error: str | None = None) -> list[dict]:
        """The judgment rows of a batch from its outputs (None: the backend failed, with `backend_error`);
        `seconds` is the judge's time on the batch."""
        config = self.config
        maps, kinds = batch.maps, batch.kinds
        keys = self.judgment_keys([m["id"] for m in maps])
        _, _, decoding = self.judgment_key_parts()
        shown = self.judge_input()  # alpha, beta, prompt_hash as the key holds them; the rendering version
        rows = []
        for index, m in enumerate(maps):
            row = {
                "id": keys[m["id"]], "saliency_id": m["id"], "prediction_id": m["prediction_id"],
                "image_sha256": m["image_sha256"], **shown,
                "image_mode": config.image_mode, "judge_image_size": config.judge_image_size,
                "image_kind": kinds[m["id"]], "judge_backend": config.judge,
                "judge_model": self.judge_name(), "judge_model_hash": self.judge_hash(),
                "decoding": json.dumps(decoding, sort_keys=True), "batch_size": len(maps),
                "batch_seconds": seconds, "run_id": self.run_id, "created_at": now(),
                "score": None, "evaluation": None, "justification": None, "raw_text": None, "error": None,
                "failure_kind": None, "input_tokens": None, "output_tokens": None,
            }
            if outputs is None:
                row.update(status="failed", failure_kind="backend", error=backend_error)
            else:
                output = outputs[index]
                parsed = parse_answer(output.raw_text)
                row.update(raw_text=output.raw_text, input_tokens=output.input_tokens,
                           output_tokens=output.output_tokens)
                if output.error:
                    row.update(status="failed", failure_kind="rejected" if output.rejected else "backend",
                               error=output.error)
                elif parsed.ok:
                    row.update(status="ok", score=parsed.score, evaluation=parsed.evaluation,
                               justification=parsed.justification)
                elif not output.finished:
                    row.update(status="failed", failure_kind="parse",
                               error=f"answer cut off at --max-new-tokens {config.max_new_tokens}: {parsed.error}")
                else:
                    row.update(status="failed", failure_kind="parse", error=parsed.error)
            rows.append(row)
        return rows


def layers_after_target(module: torch.nn.Module, target: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """The names of the modules with parameters of their own that one forward pass runs after the target layer, in
    the order they run."""
    names = {m: name for name, m in module.named_modules()}
    order: list[str] = []
    passed = []
    handles = [target.register_forward_hook(lambda *_: passed.append(len(order)))]
    for child in names:
        if any(True for _ in child.parameters(recurse=False)):
            handles.append(child.register_forward_hook(lambda m, *_: order.append(names[m])))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    start = passed[-1] if passed else len(order)
    return list(dict.fromkeys(name for name in order[start:] if name != names.get(target)))


def randomise(module: torch.nn.Module, names: list[str], seed: int) -> None:
    """Re-draw the named modules' parameters from a normal distribution of each tensor's own mean and spread
    (seeded): the architecture and scale stay, what training put there goes."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(module.named_modules())
    with torch.no_grad():
        for name in names:
            for parameter in modules[name].parameters(recurse=False):
                spread = float(parameter.std()) if parameter.numel() > 1 else 1.0
                drawn = torch.randn(parameter.shape, generator=generator) * spread + float(parameter.mean())
                parameter.copy_(drawn.to(parameter.device, parameter.dtype))
