"""The judge protocol and what every backend shares: requests and outputs, the errors, a VLM directory's family and
hash, a judge's identity, and `JudgeSpec`, the description each backend module gives of itself (the registry in
`judge/__init__.py` collects them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import OptionError, UserError
from .parsing import JUDGMENT_SCHEMA


@dataclass(frozen=True)
class JudgeRequest:
    image: Image.Image | None  # None only for a judge that does not read it (JudgeSpec.reads_image)
    label: str
    prompt: str
    label_index: int | None = None  # the predicted class's index in the vision model's label list
    # For judges that read the map itself (`JudgeSpec.reads_maps`): the model's view the image was drawn on and the
    # soft mask M (paper Eq. 1) at its size. None for images that are no view (a canary's blank image).
    view: Image.Image | None = None
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class JudgeOutput:
    raw_text: str
    input_tokens: int | None
    output_tokens: int | None
    finished: bool = True  # False when generation stopped at max_new_tokens before the end of the answer
    error: str | None = None  # the backend failed for this request (not a parse failure)
    rejected: bool = False  # the failure is a server refusing this request (4xx), not a server gone quiet


class Judge:
    """What every backend's judge does: answers for a batch of requests, in their order."""

    backend: str = ""

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        raise NotImplementedError

    def continuous(self):
        """A decoder that takes requests while it writes answers (`submit(requests) -> indices`, `busy`,
        `waiting_count`, `step() -> ended indices`, `has_ended(index)`, `take(index) -> (output, seconds)`), for
        judges that can; None where each call answers its batch whole."""
        return None

    def close(self, cancel: bool = False) -> None:
        """Let go of what the judge holds; with `cancel` (a failed or interrupted run), send nothing more. Most
        judges hold nothing that needs it."""


class JudgeError(UserError):
    pass


class JudgeStopped(JudgeError):
    """A batch whose every request failed in a way the next batch would repeat: its failures (`outputs`) are
    stored with their reasons, then the stage stops rather than send the rest of the dataset the same way."""

    def __init__(self, message: str, outputs: list[JudgeOutput]):
        super().__init__(message)
        self.outputs = outputs


class JudgeUnavailable(JudgeStopped):
    """Every request of a batch went unanswered and the server does not answer at all (it stopped)."""

    def __init__(self, outputs: list[JudgeOutput], reason: str):
        super().__init__(f"the judge stopped answering: {reason}. The failed judgments are stored; run the same "
                         "command again once it answers, to complete them", outputs)


SUPPORTED_FAMILIES = {"qwen2_5_vl": "Qwen2.5-VL", "gemma3": "Gemma-3"}


def vlm_family(vlm_dir: Path) -> str:
    config_path = Path(vlm_dir) / "config.json"
    if not config_path.is_file():
        raise JudgeError(f"{vlm_dir}: not a model directory (no config.json)")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except json.JSONDecodeError as error:
        raise JudgeError(f"{config_path}: unreadable config ({error})") from error
    if model_type not in SUPPORTED_FAMILIES:
        raise JudgeError(f"{vlm_dir}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_FAMILIES.values())}")
    return model_type


def vlm_hash(vlm_dir: Path, hash_file: Callable[[Path], str]) -> str:
    """Identity of a model directory without loading it: every file's sha256 (cached by the store)."""
    vlm_dir = Path(vlm_dir)
    digest = hashlib.sha256()
    # Hidden folders (.cache, .git) and documents (README.md, LICENSE) do not change an answer.
    relevant = (p for p in vlm_dir.rglob("*") if p.is_file() and p.suffix.lower() not in {".md", ""}
                and not any(part.startswith(".") for part in p.relative_to(vlm_dir).parts))
    for path in sorted(relevant):
        digest.update(f"{path.relative_to(vlm_dir).as_posix()}\0{hash_file(path)}\n".encode())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class JudgeIdentity:
    """Who judges, as the store keeps it: a name for people and a hash that tells judges apart (part of every
    judgment's key). `served_model` is the model name a server answers to, where the judge is a server."""

    name: str
    hash: str
    served_model: str | None = None


class JudgeSpec:
    """A backend as the rest of localjudge sees it. The defaults describe a local VLM directory decoded under the
    judgment schema; a backend overrides what differs."""

    name = ""
    # Capabilities.
    needs_vlm = True  # the judge is a local model directory (--vlm DIR)
    reads_heatmaps = True  # it can judge --image-mode heatmap, not only the masked image
    needs_imagenet_labels = False  # it reads ImageNet-1k classes only: the audited model must predict those
    structured_output = "xgrammar-json-schema"  # how its answer is held to the schema (part of the decoding key)
    reserves_gpu = False  # it takes a fixed share of a GPU's memory up front (a Ray actor asks for that share)

    reads_maps = False  # it is handed each request's view and soft mask besides the image (JudgeRequest)
    reads_prompt = True  # the prompt is part of its input (and so of its judgments' key)

    def reads_image(self, config) -> bool:
        """Whether it looks at the judge's image itself; a judge that reads the maps may draw its own from the view
        and the mask, and is then handed no image (JudgeRequest.image None): drawing one for each request costs
        as much as a small model's forward on the CPU."""
        return True

    def caveat(self, decoding: dict) -> str:
        """What the scores of the judgments made with this decoding (their key's decoding part) are worth, shown
        with every matrix they make ("" for a judge its user measures: eval judge-check)."""
        return ""

    def check(self, config, labels: list[str] | None) -> None:
        """Refuse, before any work is done or any image leaves, a configuration this judge cannot serve. `labels`
        are the audited model's class names (None where the model is not known yet)."""
        if self.needs_vlm:
            if not config.vlm:
                raise OptionError(f"--judge {self.name} needs --vlm DIR (a local Gemma-3 or Qwen2.5-VL directory); "
                                  "without one, the recognizer judges (--judge auto or recognizer)")
            vlm_family(Path(config.vlm))
        if self.needs_imagenet_labels and labels is not None and tuple(labels) != imagenet_labels():
            raise JudgeError(f"the {self.name} judge reads ImageNet-1k classes, and this vision model predicts other "
                             "labels; pass --vlm DIR (a Gemma-3 or Qwen2.5-VL directory) or --judge openai instead")
        if not self.reads_heatmaps and config.image_mode != "masked":
            raise ValueError(f"the {self.name} judge reads the masked image; a heatmap overlay would only mislead "
                             "it (use --image-mode masked, or a VLM for heatmaps)")

    def identity(self, config, hash_file: Callable[[Path], str]) -> JudgeIdentity:
        """A local directory is its name and the hash of its files."""
        if not config.vlm:
            raise ValueError("no judge model: pass --vlm DIR")
        return JudgeIdentity(Path(config.vlm).name, vlm_hash(Path(config.vlm), hash_file))

    def decoding(self, config) -> dict:
        """Everything about decoding that changes an answer; part of a judgment's key."""
        schema_hash = hashlib.sha256(json.dumps(JUDGMENT_SCHEMA, sort_keys=True).encode()).hexdigest()[:16]
        return {"backend": self.name, "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                "structured_output": self.structured_output, "schema": schema_hash}

    def open(self, config, identity: JudgeIdentity) -> Judge:
        """The judge, loaded (for a server: its address checked and its model known)."""
        raise NotImplementedError


def imagenet_labels() -> tuple[str, ...]:
    """The ImageNet-1k class names in index order (the label list the embedded models' cards name)."""
    from ..data import LabelList
    from ..vision.cards import IMAGENET_LABELS, cards_dir

    return LabelList.from_csv(Path(str(cards_dir() / IMAGENET_LABELS))).names
