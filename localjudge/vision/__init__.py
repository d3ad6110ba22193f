"""Vision models behind one small protocol, on two backends: torch (the reference) and ONNX Runtime. The backends
are imported when a model is opened, so cards, hashes and backend names load without torch."""

from __future__ import annotations

import dataclasses
import warnings
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from ..data import LabelList
from .cards import CardError, ModelCard, WeightsError, embedded_weights_path, list_cards, load_card

if TYPE_CHECKING:
    import torch

BACKENDS = ("torch", "onnx")
BACKEND_CHOICES = ("auto", *BACKENDS)  # auto: settled per machine by auto_backend
EXPORT_FORMAT = "localjudge-onnx-v1"  # bump when the exported graph's numerics change (part of the model's identity)
# The exported graph's interface, part of the export cache's key only: version 2 added the `main` input and the
# `explained` output (one run predicts and explains) without changing what the outputs are, so predictions made with
# version 1 keep their identity.
EXPORT_GRAPH = 2


class VisionModel(Protocol):
    card: ModelCard
    backend: str
    device: torch.device
    provides_gradients: bool
    execution_provider: str
    source: str

    def predict(self, batch: torch.Tensor) -> np.ndarray: ...

    def forward_outputs(self, batch: torch.Tensor) -> torch.Tensor: ...

    def output_shape(self, batch: torch.Tensor) -> tuple[int, ...]: ...

    def activations_and_gradients(self, batch: torch.Tensor, cotangent: torch.Tensor | None): ...

    def outputs_and_gradients(self, batch: torch.Tensor, cotangent_for: Callable, gradients: bool): ...


def main_class(scores: np.ndarray, task: str) -> int:
    """A classifier's top class; for segmentation the class with the largest predicted area other than the
    background (index 0), unless the model sees nothing but background."""
    if task == "segmentation" and scores[1:].sum() > 0:
        return int(np.argmax(scores[1:]) + 1)
    return int(np.argmax(scores))


def resolve_card(model: str, card: str | None = None, labels: str | None = None) -> ModelCard:
    """--model NAME (a registered card), --model CARD.json, or --model FILE.onnx [--card CARD.json]; with --labels
    FILE, that label list instead of the card's (the model then has as many classes as it names)."""
    found = _resolve_card(model, card)
    return with_labels(found, labels) if labels else found


def with_labels(card: ModelCard, labels: str | Path) -> ModelCard:
    """The card with another label list (read now, so a bad file is refused before any work)."""
    path = Path(labels).resolve()
    LabelList.from_file(path)
    return dataclasses.replace(card, labels=str(path))


def require_weights(card: ModelCard, weights: str | Path | None, random_weights: bool) -> None:
    """A card whose weights are the user's audits nothing without them: refused unless random weights are asked for
    by name (tests, benchmarks), so that no run, judgment or matrix describes a random network by accident."""
    if random_weights and (weights or card.weights.startswith("package:")):
        raise WeightsError(f"{card.name}: --random-weights with weights ({weights or 'embedded'}): give one or the "
                           "other")
    random = card.random_weights or (card.weights == "user" and card.framework != "onnx" and not weights)
    if random and not random_weights and card.framework == "onnx":
        raise WeightsError(f"{card.card_path}: this graph was exported from a seeded random network (no weights were "
                           "given); pass --random-weights to run it anyway (tests and benchmarks only)")
    if random and not random_weights:
        raise WeightsError(f"{card.name}: its weights are yours to give: pass --weights FILE (a state dict of your "
                           "trained model); --random-weights runs a seeded random network instead (for tests and "
                           "benchmarks: its predictions, maps and judgments mean nothing)")


RANDOM_WEIGHTS = "random weights"


def weights_note(model_hash: str | None) -> str | None:
    """"random weights" for a model hash of a seeded random network (see `model_hash`), else None: what every
    output that shows a model says beside it."""
    return RANDOM_WEIGHTS if model_hash and "random-init:" in model_hash else None


def _resolve_card(model: str, card: str | None) -> ModelCard:
    if model.endswith(".onnx"):
        graph = Path(model)
        if not graph.is_file():
            raise CardError(f"{graph}: ONNX file not found")
        card_path = Path(card) if card else graph.with_suffix(".json")
        if not card_path.is_file():
            raise CardError(f"{graph}: no card; pass --card CARD.json (task, input size, normalisation, labels, "
                            "output names)")
        found = load_card(str(card_path))
        return dataclasses.replace(found, framework="onnx", onnx_file=str(graph.resolve()))
    return load_card(card or model)


def cache_dir() -> Path:
    from ..config import home

    return home() / "onnx"


def exported_card(card: ModelCard, weights: Path | None, source_hash: str) -> ModelCard:
    """The ONNX export of a registered torch model, made once into the cache (for --backend onnx)."""
    import torch

    from .onnx_export import export_onnx

    # The graph's activations output is the card's target tensor: another target is another export.
    key = hashlib.sha256(f"{source_hash}:{EXPORT_FORMAT}:{EXPORT_GRAPH}:{torch.__version__}:{card.target_tensor}"
                         .encode()).hexdigest()[:16]
    target = cache_dir() / f"{card.name}-{key}.onnx"
    card_file = target.with_suffix(".json")
    if card_file.is_file():
        cached = load_card(str(card_file))
        if _graph_verified(cached, target):
            return cached
        # an export whose graph is not the one its card names (changed, damaged, or from before cards named it)
        warnings.warn(f"{target}: the cached ONNX export is not the graph its card names (its sha256 differs or is "
                      "not recorded); exported again", stacklevel=2)
    export_onnx(card, weights, target)
    exported = load_card(str(card_file))
    if not _graph_verified(exported, target):  # never expected: the card was written from this very file
        raise CardError(f"{target}: the export's file does not match its card's sha256")
    return exported


def _graph_verified(card: ModelCard, graph: Path) -> bool:
    """Whether the graph file's bytes are the ones its card names (read once per process while the file stays as it
    was: sha256_remembered; never answered from the store's cache of hashes)."""
    return bool(card.onnx_sha256) and graph.is_file() and _sha256(graph) == card.onnx_sha256


def open_model(card: ModelCard, weights: Path | None, device: str, backend: str = "torch",
               hash_file: Callable[[Path], str] | None = None) -> VisionModel:
    if backend not in BACKENDS:
        raise CardError(f"unknown vision backend {backend!r}; available: {', '.join(BACKENDS)}")
    if card.framework == "onnx" or backend == "onnx":
        from .onnx_backend import OnnxVisionModel

        if card.framework != "onnx":
            card = exported_card(card, weights, model_hash(card, weights, hash_file or _sha256))
        return OnnxVisionModel(card, device=device)
    from .torch_backend import TorchVisionModel

    return TorchVisionModel(card, weights=weights, device=device)


def auto_backend(device: str) -> str:
    """`--backend auto`: ONNX Runtime (the design's engine) wherever it can run the model on the chosen device, torch
    otherwise. A CPU run needs onnxruntime and the exporter (onnx, onnxscript: the `onnx` extra); a GPU run needs
    onnxruntime-gpu's CUDA provider, since torch on the GPU beats ONNX Runtime on the CPU."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "onnx", "onnxscript")):
        return "torch"
    if device == "cpu":
        return "onnx"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "onnx"
    if device != "auto":  # cuda or cuda:N without onnxruntime-gpu
        return "torch"
    import torch

    return "torch" if torch.cuda.is_available() else "onnx"


def backend_of(card: ModelCard, backend: str) -> str:
    return "onnx" if card.framework == "onnx" else backend


def model_hash(card: ModelCard, weights: Path | None, hash_file: Callable[[Path], str], backend: str = "torch") -> str:
    """Identity of the model's parameters without loading it."""
    if card.framework == "onnx":
        from .onnx_backend import onnx_path

        # a graph of random weights is named so in its hash, which is what outputs read (see weights_note)
        return "sha256:" + hash_file(onnx_path(card)) + (":random-init:exported" if card.random_weights else "")
    path = weights or embedded_weights_path(card)
    if path is None:
        # torchvision architectures are built with a fixed seed when no weights are given.
        identity = f"random-init:{card.framework}:{card.architecture}:seed0:{len(card.label_list().names)}-classes"
    elif not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    else:
        # embedded weights are checked against their card by their bytes, never by the store's cache of hashes (a
        # same-size change with its mtime restored would pass it); sha256_remembered reads them once per process
        # while their device, inode, size, mtime and ctime stay the same (where they had settled for 3 s)
        embedded = weights is None and card.weights_sha256
        digest = _sha256(path) if embedded else hash_file(path)
        if embedded and digest != card.weights_sha256:
            raise WeightsError(f"{path}: the embedded weights of {card.name} are not the ones its card names "
                               f"(sha256 {digest[:16]}…, expected {card.weights_sha256[:16]}…); reinstall the package")
        identity = "sha256:" + digest
    if backend == "torch":
        return identity
    # The same weights on ONNX Runtime are another model for the store (numerics differ slightly), and each exported
    # graph another still: its file's sha256 (verified, exported first where the cache has none) names it.
    graph = exported_card(card, weights, identity)
    return f"{EXPORT_FORMAT}:{identity}:graph-sha256:{graph.onnx_sha256}"


def _sha256(path: Path) -> str:
    from ..store import sha256_remembered

    return sha256_remembered(path)


__all__ = ["VisionModel", "ModelCard", "CardError", "WeightsError", "list_cards", "load_card", "resolve_card",
           "open_model", "model_hash", "backend_of", "auto_backend", "BACKEND_CHOICES", "main_class", "BACKENDS",
           "with_labels", "require_weights",
           "weights_note", "RANDOM_WEIGHTS"]
