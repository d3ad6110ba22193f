"""The stages of an audit. Each reads its inputs from the store, works out the keys of what it would write, and
loads its model only when some of those rows are missing; each batch is written in one transaction."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import queue
import threading
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
from tqdm import tqdm

from .config import RunConfig
from .data import (IMAGE_SUFFIXES, ChangedImage, IngestError, ReadFailure, discover, is_redacted, load_verified,
                   read_image, redacted_path, resolve_label)
from .judge import (JudgeError, JudgeRequest, JudgeStopped, decoding_params, open_judge, parse_answer, vlm_family,
                    vlm_hash)
from .judge.prompts import prompt_hash, prompt_template, render
from .saliency import CamEngine, judge_image
from .store import Store, content_key, now, pack_array, sha256_file, unpack_array
from .vision import backend_of, model_hash, open_model, resolve_card
from .vision.preprocess import mask_view, model_view, to_tensor

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


def progress(iterable: Iterable, total: int, desc: str, show: bool, unit: str = "batch"):
    # tqdm hides itself when stderr is not a terminal (disable=None), so logs and tests stay clean.
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if show else True, leave=False)


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


def main_class(scores: np.ndarray, task: str) -> int:
    """A classifier's top class; for segmentation the class with the largest predicted area other than the
    background (index 0), unless the model sees nothing but background."""
    if task == "segmentation" and scores[1:].sum() > 0:
        return int(np.argmax(scores[1:]) + 1)
    return int(np.argmax(scores))


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
    waited_seconds: float = 0.0  # of which the judge sat idle waiting for the vision stage


class Audit:
    """One audit over one store with one configuration; `run` is all stages in order."""

    def __init__(self, store: Store, config: RunConfig, show_progress: bool = True):
        if config.judge == "auto":  # a VLM directory given: the VLM judges; none: the recognizer does
            config = config.replace(judge="transformers" if config.vlm else "recognizer")
        self.store = store
        self.config = config
        self.show_progress = show_progress
        self.run_id: str | None = None
        self.card = resolve_card(config.model, config.card)
        self._backend = backend_of(self.card, config.backend)
        self._weights = Path(config.weights) if config.weights else None
        self._vision = None
        self._judge = None
        self._judge_identity: tuple[str, str] | None = None
        self._served_model: str | None = None  # --judge openai: the model name the server answers to
        self._judgment_key_parts: tuple[str, str, dict] | None = None  # prompt template, its hash, decoding
        self._judgments_failed = 0  # failed judgments stored by this audit (a stage's `failed` also counts inputs)
        self._endpoint = None
        self._real_paths: dict[str, str] = {}  # --redact-paths: the files this process ingested, by image sha256
        self._owns_judge = True
        self._prompt_stored = False
        if config.judge == "openai":
            from .judge.openai_backend import check_endpoint

            self._endpoint = check_endpoint(config.base_url, config.allow_hosts)  # before any image is read or sent

    # --- bookkeeping ------------------------------------------------------------------------------------
    def vision_hash(self) -> str:
        return model_hash(self.card, self._weights, self._hash_file, self._backend)

    def judge_hash(self) -> str:
        return self.judge_identity()[1]

    def judge_name(self) -> str:
        return self.judge_identity()[0]

    def judge_identity(self) -> tuple[str, str]:
        """The judge's name and hash. A local directory is hashed file by file. A server's weights cannot be
        seen from here: its judge is the model name it serves (asked once when --api-model is not given), plus the
        hash of --vlm DIR when the user points at the weights the server loaded. The server's address is not part
        of it (a restart on another port is the same judge); it is recorded with the run."""
        if self._judge_identity is None:
            config = self.config
            if config.judge == "recognizer":
                from .judge.recognizer import RECOGNIZER_MODEL

                weights = model_hash(resolve_card(RECOGNIZER_MODEL), None, self._hash_file, "torch")
                self._judge_identity = (f"recognizer:{RECOGNIZER_MODEL}", content_key("recognizer", weights))
            elif config.judge == "openai":
                from .judge.openai_backend import OpenAIClient, resolve_model

                served = resolve_model(OpenAIClient(self._endpoint, config.api_timeout), config.api_model)
                weights = vlm_hash(Path(config.vlm), self._hash_file) if config.vlm else None
                self._judge_identity = (Path(served).name or served,
                                        "served:" + content_key("openai", served, weights))
                self._served_model = served
            else:
                if not config.vlm:
                    raise ValueError("no judge model: pass --vlm DIR")
                self._judge_identity = (Path(config.vlm).name, vlm_hash(Path(config.vlm), self._hash_file))
        return self._judge_identity

    def _hash_file(self, path: Path) -> str:
        return self.store.cached_file_hash(path, sha256_file)

    def begin(self, command: str, source: str | None, stages: Iterable[str]) -> str:
        stages = list(stages)
        model_hashes = {"vision": self.vision_hash()}
        if self.config.bundle_hash:
            model_hashes["bundle_manifest"] = self.config.bundle_hash
        if "judge" in stages and self.config.judge == "recognizer":
            from .judge.recognizer import check_labels

            check_labels(self.card.label_list().names)  # before any work is done
            if self.config.image_mode != "masked":
                raise ValueError("the recognizer judge reads the masked image; a heatmap overlay would only "
                                 "mislead it (use --image-mode masked, or a VLM for heatmaps)")
        if "judge" in stages and (self.config.vlm or self.config.judge in ("openai", "recognizer")):
            if self.config.judge not in ("openai", "recognizer"):
                vlm_family(Path(self.config.vlm))  # refuse an unsupported judge before any work is done
            model_hashes["judge"] = self.judge_hash()
        inputs = str(Path(source).resolve()) if source else None
        if inputs and self.config.redact_paths:
            inputs = redacted_path(inputs)
            if self.config.masks or self.config.mask_column or self.config.boxes:
                raise ValueError("--redact-paths with ground-truth regions is not supported yet: their masks and "
                                 "boxes are matched by image path")
        config = self.config.to_json()
        versions = package_versions()
        self.run_id = content_key("run", command, config, inputs, model_hashes, versions)
        self.store.record_run({
            "id": self.run_id, "command": command, "config": config, "model_hashes": json.dumps(model_hashes),
            "package_versions": json.dumps(versions), "inputs": inputs,
        })
        return self.run_id

    def end(self, status: str = "finished") -> None:
        if self._judge is not None and self._owns_judge and hasattr(self._judge, "close"):
            self._judge.close(cancel=status != "finished")  # a failed or interrupted run sends nothing more
        if self.run_id:
            self.store.finish_run(self.run_id, status)

    @contextmanager
    def recorded(self, command: str, source: str | None, stages: Iterable[str]):
        """A run row for the block: finished when it completes, failed when it raises (its stored batches stay)."""
        self.begin(command, source, stages)
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

    def ingest(self, source: str | Path) -> Stage:
        items = discover(source, self.config.path_column, self.config.label_column)
        if not items:
            raise IngestError(f"{source}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        known_errors = self.store.known_error_ids()
        stage = Stage()
        images: list[dict] = []
        errors: list[dict] = []
        seen: set[str] = set()
        class_names = self.card.label_list() if self.config.redact_paths else None
        for item in progress(items, len(items), "ingest", self.show_progress, unit="image"):
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
                continue  # the same picture twice in one dataset is judged once; another shard's is not ours
            seen.add(result.sha256)
            stage.ids.append(result.sha256)
            self._real_paths[result.sha256] = str(item.path)
            images.append({"sha256": result.sha256, "path": shown, "size_bytes": result.size_bytes,
                           "width": result.width, "height": result.height, "mode": result.mode,
                           "format": result.format, "label": item.label, "run_id": self.run_id,
                           "created_at": now()})
        stored = {row["sha256"]: row for row in self.store.images(stage.ids)}
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
            if update:
                changed.append({"sha256": row["sha256"], **update})
        self.store.add_images(new_images, errors, changed)
        stage.computed = len(new_images)
        return stage

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
                path = self._real_paths.get(sha, paths[sha])
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

    # --- predict ----------------------------------------------------------------------------------------
    def vision_model(self):
        if self._vision is None:
            self._vision = open_model(self.card, self._weights, self.config.device, self._backend, self._hash_file)
            if self.run_id:
                self.store.set_run_provider(self.run_id, self._vision.execution_provider)
        return self._vision

    def preprocessing(self) -> dict:
        """How pixels become the model's input: the card's geometry, and a DICOM window where one is given."""
        geometry = self.card.preprocessing()
        if self.config.dicom_window is not None:
            geometry["dicom_window"] = list(self.config.dicom_window)
        return geometry

    def prediction_key(self, image_sha256: str, vision_hash: str) -> str:
        return content_key("prediction", image_sha256, vision_hash, self.preprocessing())

    def predict(self, image_shas: list[str], stage: Stage | None = None) -> Stage:
        """Predictions for the images; with `stage`, added to it (an overlapped run calls this batch by batch)."""
        standalone = stage is None
        stage = Stage() if standalone else stage
        vision_hash = self.vision_hash()
        keys = {sha: self.prediction_key(sha, vision_hash) for sha in image_shas}
        existing = self.store.existing_ids("predictions", keys.values())
        stage.ids.extend(keys[s] for s in image_shas)
        labels = self.card.label_list()
        self.refresh_correctness([keys[s] for s in image_shas if keys[s] in existing], labels)
        missing = [row for row in self.store.images(image_shas) if keys[row["sha256"]] not in existing]
        if not missing:
            return stage
        model = self.vision_model()
        stage.model_loaded = True
        unmapped = stage.unmapped_labels
        preprocessing = json.dumps(self.preprocessing(), sort_keys=True)
        for batch in progress(batched(missing, self.config.batch_size), -(-len(missing) // self.config.batch_size),
                              "predict", self.show_progress):
            pictures, batch = self.load_images(list(batch), stage)
            if not batch:
                continue
            probs = model.predict(to_tensor(pictures, self.card))
            rows = []
            for row, p in zip(batch, probs):
                top5 = np.argsort(-p)[:5]
                predicted = main_class(p, self.card.task)
                label_indices = resolve_label(row["label"], labels)
                if row["label"] is not None and label_indices is None:
                    unmapped.add(row["label"])
                rows.append({
                    "id": keys[row["sha256"]], "image_sha256": row["sha256"], "model": self.card.name,
                    "model_hash": vision_hash, "backend": self._backend, "preprocessing": preprocessing,
                    "predicted_index": predicted,
                    "predicted_label": labels.names[predicted], "confidence": float(p[predicted]),
                    "top5": json.dumps([{"index": int(i), "label": labels.names[int(i)], "probability": float(p[i])}
                                        for i in top5]),
                    "probs": pack_array(p, np.float32),
                    "label_indices": json.dumps(label_indices) if label_indices is not None else None,
                    "correct": None if label_indices is None else int(predicted in label_indices),
                    "run_id": self.run_id, "created_at": now(),
                })
            self.store.insert_rows("predictions", rows)
            stage.computed += len(rows)
        if standalone:
            self.warn_unmapped(stage)
        return stage

    def warn_unmapped(self, stage: Stage) -> None:
        unmapped = stage.unmapped_labels
        if unmapped:
            examples = ", ".join(repr(label) for label in sorted(unmapped)[:5])
            warnings.warn(f"{len(unmapped)} label(s) match no class of {self.card.name} ({examples}); those images "
                          "count as unlabelled. Use class indices, WordNet ids or the model's class names.",
                          stacklevel=3)

    def refresh_correctness(self, prediction_ids: list[str], labels) -> None:
        """Correctness follows the image's current label, so a fixed label needs no new prediction."""
        updates = []
        for row in self.store.predictions_with_labels(prediction_ids):
            label_indices = resolve_label(row["label"], labels)
            encoded = json.dumps(label_indices) if label_indices is not None else None
            if encoded != row["label_indices"]:
                correct = None if label_indices is None else int(row["predicted_index"] in label_indices)
                updates.append({"id": row["id"], "label_indices": encoded, "correct": correct})
        self.store.update_predictions(updates)

    def stored_predictions(self) -> list[str]:
        """Every prediction of this configuration's model in the store (for `explain` on its own)."""
        vision_hash = self.vision_hash()
        return [r["id"] for r in self.store.query(
            "select p.id from predictions p join images i on i.sha256 = p.image_sha256 "
            "where p.model_hash = ? and p.preprocessing = ? order by i.path",
            [vision_hash, json.dumps(self.preprocessing(), sort_keys=True)])]

    # --- explain ----------------------------------------------------------------------------------------
    def saliency_key(self, prediction: dict) -> str:
        """A map is (prediction, method, layer, target class)."""
        return content_key("saliency", prediction["id"], self.config.cam, self.card.target_layer,
                           prediction["predicted_index"])

    def explain(self, prediction_ids: list[str], stage: Stage | None = None) -> Stage:
        stage = Stage() if stage is None else stage
        predictions = self.store.predictions(prediction_ids)
        keys = {p["id"]: self.saliency_key(p) for p in predictions}
        existing = self.store.existing_ids("saliency_maps", keys.values())
        stage.ids.extend(keys[p["id"]] for p in predictions)
        missing = [p for p in predictions if keys[p["id"]] not in existing]
        if not missing:
            return stage
        model = self.vision_model()
        stage.model_loaded = True
        with CamEngine(self.config.cam, model) as cam:
            for batch in progress(batched(missing, self.config.batch_size),
                                  -(-len(missing) // self.config.batch_size), "explain", self.show_progress):
                pictures, batch = self.load_images(list(batch), stage)
                if not batch:
                    continue
                maps = cam.compute(to_tensor(pictures, self.card), [p["predicted_index"] for p in batch])
                rows = [{
                    "id": keys[p["id"]], "prediction_id": p["id"], "image_sha256": p["image_sha256"],
                    "method": self.config.cam, "target_layer": self.card.target_layer,
                    "target_index": p["predicted_index"], "height": int(m.shape[0]), "width": int(m.shape[1]),
                    "map": pack_array(m), "run_id": self.run_id, "created_at": now(),
                } for p, m in zip(batch, maps)]
                self.store.insert_rows("saliency_maps", rows)
                stage.computed += len(rows)
        return stage

    def stored_saliency_maps(self) -> list[str]:
        prediction_ids = self.stored_predictions()
        return [r["id"] for r in self.store.query(
            "select id from saliency_maps where method = ? and target_layer = ? and prediction_id in "
            "(select value from json_each(?))",
            [self.config.cam, self.card.target_layer, json.dumps(prediction_ids)])]

    # --- ground truth and region agreement ----------------------------------------------------------------
    def has_ground_truth_source(self) -> bool:
        return any((self.config.masks, self.config.mask_column, self.config.boxes))

    def add_ground_truth(self, image_ids: list[str], manifest: str | Path | None = None) -> Stage:
        """Read the configured ground-truth regions of `image_ids` (stored images) and store them. A mask that cannot
        be read is reported with its file and reason; the other images go on."""
        from .ground_truth import (GroundTruthError, RegionFailure, from_coco_boxes, from_manifest_column,
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
            found.update(from_manifest_column(Path(manifest), config.mask_column, config.path_column, images))
        if config.boxes:
            found.update(from_coco_boxes(Path(config.boxes), images))
        rows = []
        for sha, region in found.items():
            if isinstance(region, RegionFailure):
                stage.failed += 1
                stage.errors.append({"path": region.reference, "reason": region.reason})
                continue
            packed = np.packbits(region.mask)
            rows.append({"image_sha256": sha, "source": region.source, "reference": region.reference,
                         "height": region.mask.shape[0], "width": region.mask.shape[1],
                         "mask": pack_array(region.mask, dtype=np.uint8),
                         "mask_sha256": hashlib.sha256(packed.tobytes()).hexdigest(),
                         "area_fraction": float(region.mask.mean()), "run_id": self.run_id, "created_at": now()})
            stage.ids.append(sha)
        stored = {row["image_sha256"]: row["mask_sha256"] for row in self.store.ground_truth(stage.ids)}
        new = [row for row in rows if stored.get(row["image_sha256"]) != row["mask_sha256"]]
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
        its image's ground-truth region, compared in the model's view (the region resized and centre-cropped as the
        image was, nearest neighbour). Maps whose image has no region are skipped."""
        from .analysis.regions import attention_mask, region_scores

        stage = Stage() if stage is None else stage
        maps = self.store.saliency_maps(saliency_ids)
        truths = {t["image_sha256"]: t for t in self.store.ground_truth({m["image_sha256"] for m in maps})}
        maps = [m for m in maps if m["image_sha256"] in truths]
        beta = self.config.beta
        keys = {m["id"]: content_key("regions", m["id"], truths[m["image_sha256"]]["mask_sha256"], beta)
                for m in maps}
        stage.ids.extend(keys.values())
        existing = self.store.existing_ids("region_scores", keys.values())
        missing = [m for m in maps if keys[m["id"]] not in existing]
        geometry = {p["id"]: json.loads(p["preprocessing"])
                    for p in self.store.predictions({m["prediction_id"] for m in missing})}
        rows = []
        for m in missing:
            truth = truths[m["image_sha256"]]
            region = unpack_array(truth["mask"], (truth["height"], truth["width"]), dtype=np.uint8) > 0.5
            saliency = unpack_array(m["map"], (m["height"], m["width"]))
            truth_view = mask_view(region, geometry[m["prediction_id"]], m["width"])
            if truth_view.shape != saliency.shape:  # a non-square map: compare at the map's own size
                truth_view = np.asarray(Image.fromarray(truth_view).resize((m["width"], m["height"]), Image.NEAREST))
            attended = attention_mask(saliency, beta)
            rows.append({"id": keys[m["id"]], "saliency_id": m["id"], "image_sha256": m["image_sha256"],
                         "mask_sha256": truth["mask_sha256"], "beta": beta, **region_scores(attended, truth_view),
                         "attended_fraction": float(attended.mean()), "run_id": self.run_id, "created_at": now()})
        self.store.insert_rows("region_scores", rows)
        stage.computed += len(rows)
        return stage

    # --- faithfulness -------------------------------------------------------------------------------------
    def faithfulness(self, saliency_ids: list[str], stage: Stage | None = None) -> Stage:
        """Deletion and insertion AUC, AOPC (most relevant first), Average Drop and Increase in Confidence of each
        map (see analysis.faithfulness), on the vision backend, many perturbed inputs per forward pass."""
        from .analysis.faithfulness import (area, aopc, confidence_change, curves, perturbed_inputs,
                                            relevance_ranks, step_counts)

        stage = Stage() if stage is None else stage
        config = self.config
        if self.card.task != "classification":
            raise ValueError(f"{self.card.name}: faithfulness metrics are for classifiers (its task is "
                             f"{self.card.task})")
        steps, fill = config.faithfulness_steps, config.faithfulness_baseline
        maps = self.store.saliency_maps(saliency_ids)
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
        for batch in progress(batched(missing, group), -(-len(missing) // group), "faithfulness",
                              self.show_progress):
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
        stage = Stage() if stage is None else stage
        missing = self.judgments_missing(saliency_ids, stage)
        batches = batched(missing, self.config.judge_batch_size)
        for batch in progress(batches, -(-len(missing) // self.config.judge_batch_size), "judge",
                              self.show_progress):
            self.judge_batch(batch, stage)
        return stage

    def judgment_key_parts(self) -> tuple[str, str, dict]:
        """The prompt template, its hash and the decoding parameters: what every judgment of this audit shares."""
        if self._judgment_key_parts is None:
            config = self.config
            template = prompt_template(config.image_mode, config.prompt_style)
            self._judgment_key_parts = (template, prompt_hash(template),
                                        decoding_params(config.judge, config.max_new_tokens, config.temperature))
        return self._judgment_key_parts

    def judgment_keys(self, saliency_ids: list[str]) -> dict[str, str]:
        config = self.config
        _, template_hash, decoding = self.judgment_key_parts()
        return {sid: content_key("judgment", sid, config.alpha, config.beta, config.image_mode, self.judge_hash(),
                                 template_hash, decoding, config.judge_image_size) for sid in saliency_ids}

    def judgments_missing(self, saliency_ids: list[str], stage: Stage) -> list[str]:
        """The maps still to judge: no judgment yet, or one whose backend failed (worth another try). Adds every
        judgment key to the stage."""
        keys = self.judgment_keys(saliency_ids)
        existing = self.store.existing_ids("judgments", keys.values())
        retry = self.store.retryable_judgments(keys.values())
        stage.ids.extend(keys[s] for s in saliency_ids)
        return [sid for sid in saliency_ids if keys[sid] not in existing or keys[sid] in retry]

    def use_judge(self, judge) -> None:
        """A judge loaded once by the caller for several audits (a sweep over alpha, beta and prompts); the caller
        closes it, not this audit."""
        self._judge = judge
        self._owns_judge = False

    def judge_model(self):
        config = self.config
        if self._judge is None:
            self.judge_identity()
            self._judge = open_judge(config, Path(config.vlm) if config.vlm else None, api_model=self._served_model)
        if not self._prompt_stored:
            template, template_hash, _ = self.judgment_key_parts()
            self.store.add_prompt(template_hash, config.image_mode, template)
            self._prompt_stored = True
        return self._judge

    def judge_batch(self, saliency_ids: Sequence[str], stage: Stage) -> None:
        """Judge one batch and store it in one transaction. A server that stopped answering (or refuses every
        request) ends the stage after its failures are stored."""
        if not saliency_ids:
            return
        judge = self.judge_model()
        stage.model_loaded = True
        rows, stop = self._judge_batch(judge, list(saliency_ids), stage)
        self.store.upsert_judgments(rows)
        failed = sum(r["status"] == "failed" for r in rows)
        stage.computed += len(rows)
        stage.failed += failed
        self._judgments_failed += failed
        if stop is not None:
            raise JudgeError(f"{stop} ({stage.computed - self._judgments_failed} judged and {self._judgments_failed} "
                             "stored as failures in this run so far)") from stop

    def _judge_batch(self, judge, saliency_ids: list[str], stage: Stage) -> tuple[list[dict], JudgeStopped | None]:
        """The rows of one batch's judgments, and the reason to stop the stage if the judge gave one."""
        config = self.config
        keys = self.judgment_keys(saliency_ids)
        template, template_hash, decoding = self.judgment_key_parts()
        maps = self.store.saliency_maps(saliency_ids)
        predictions = {p["id"]: p for p in self.store.predictions([m["prediction_id"] for m in maps])}
        pictures, maps = self.load_images(maps, stage)
        if not maps:
            return [], None
        requests = []
        for m, picture in zip(maps, pictures):
            prediction = predictions[m["prediction_id"]]
            saliency = unpack_array(m["map"], (m["height"], m["width"]))
            view = model_view(picture, json.loads(prediction["preprocessing"]), config.judge_image_size)
            image = judge_image(view, saliency, config.image_mode, config.alpha, config.beta)
            requests.append(JudgeRequest(image=image, label=prediction["predicted_label"],
                                         prompt=render(template, prediction["predicted_label"]),
                                         label_index=prediction["predicted_index"]))
        started = time.perf_counter()
        stop = None
        try:
            outputs = judge.judge(requests)
            backend_error = None
        except JudgeStopped as error:  # each request's failure is stored; then the stage stops
            outputs, backend_error, stop = error.outputs, None, error
        except Exception as error:  # a crashed batch is stored as failures and retried on the next run
            outputs, backend_error = None, f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - started
        rows = []
        for index, m in enumerate(maps):
            row = {
                "id": keys[m["id"]], "saliency_id": m["id"], "prediction_id": m["prediction_id"],
                "image_sha256": m["image_sha256"], "alpha": config.alpha, "beta": config.beta,
                "image_mode": config.image_mode, "judge_image_size": config.judge_image_size,
                "judge_backend": config.judge,
                "judge_model": self.judge_name(), "judge_model_hash": self.judge_hash(), "prompt_hash": template_hash,
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
        return rows, stop

    # --- all stages -------------------------------------------------------------------------------------
    def run(self, source: str | Path) -> dict[str, Stage]:
        """Ingest, then the vision stage (predict + explain) and the judge stage at the same time: the vision
        stage stores each batch of maps and hands their ids to the judge through a bounded queue, so the judge is
        busy while CAMs are computed, and the vision stage never runs more than `queue_batches` batches ahead."""
        stages = {"ingest": self.ingest(source), "predict": Stage(), "explain": Stage(), "judge": Stage()}
        judge_stage = stages["judge"]
        handoff: queue.Queue = queue.Queue(maxsize=self.config.queue_batches)
        stop = threading.Event()
        worker = threading.Thread(target=self._vision_worker, name="localjudge-vision", daemon=True,
                                  args=(stages["ingest"].ids, handoff, stop, stages["predict"], stages["explain"]))
        started = time.perf_counter()
        bar = tqdm(total=len(stages["ingest"].ids), desc="run", unit="image", leave=False,
                   disable=None if self.show_progress else True)
        worker.start()
        try:
            pending: list[str] = []
            while True:
                waiting = time.perf_counter()
                item = self._next_from(handoff, worker)
                judge_stage.waited_seconds += time.perf_counter() - waiting
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
                missing = self.judgments_missing(item, judge_stage)
                bar.update(len(item) - len(missing))
                pending.extend(missing)
                while len(pending) >= self.config.judge_batch_size:
                    batch, pending = pending[:self.config.judge_batch_size], pending[self.config.judge_batch_size:]
                    self.judge_batch(batch, judge_stage)
                    bar.update(len(batch))
            self.judge_batch(pending, judge_stage)
            bar.update(len(pending))
        finally:
            stop.set()
            worker.join()
            bar.close()
        judge_stage.seconds = time.perf_counter() - started
        self.warn_unmapped(stages["predict"])
        return stages

    @staticmethod
    def _next_from(handoff: queue.Queue, worker: threading.Thread):
        while True:
            try:
                return handoff.get(timeout=1.0)
            except queue.Empty:
                if not worker.is_alive() and handoff.empty():
                    raise RuntimeError("the vision stage ended without a word")  # never expected; never hang

    def _vision_worker(self, image_ids: list[str], handoff: queue.Queue, stop: threading.Event, predict: Stage,
                       explain: Stage) -> None:
        """The vision stage of an overlapped run, on its own thread and its own connection to the store."""
        def hand_over(item) -> None:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        store = None
        try:
            store = Store(self.store.path)
            vision = Audit(store, self.config, show_progress=False)
            vision.run_id = self.run_id
            vision._real_paths = self._real_paths  # the files this run ingested (redacted paths cannot be opened)
            for chunk in batched(image_ids, self.config.batch_size):
                if stop.is_set():
                    return
                first_prediction, first_map = len(predict.ids), len(explain.ids)
                vision.predict(list(chunk), predict)
                vision.explain(predict.ids[first_prediction:], explain)
                hand_over(explain.ids[first_map:])
            hand_over(None)
        except BaseException as error:  # the judge side raises it, so the run fails with the real reason
            hand_over(error)
        finally:
            if store is not None:
                store.close()
