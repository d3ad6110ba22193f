"""Judges: a vision-language model (or the recognizer) that reads a masked (or heatmap) image and the predicted
class, and answers with an evaluation, a justification and a 0-5 score.

One small protocol (`base.Judge`) and one module per backend; each backend module owns its `JudgeSpec`: its name,
what it can do (capabilities), the checks a configuration must pass before any work, its identity (which feeds every
judgment's key), its decoding parameters (also part of the key) and how it is opened. `JUDGES` maps each name to its
spec; code outside a backend's own module asks a spec for a capability, never for its name. Backend modules load
their model libraries (torch, transformers, vLLM) when a judge is opened, so the registry loads without them."""

from __future__ import annotations

from .base import (Judge, JudgeError, JudgeIdentity, JudgeOutput, JudgeRequest, JudgeSpec, JudgeStopped,
                   JudgeUnavailable, imagenet_labels, vlm_family, vlm_hash)
from .openai_backend import SPEC as _OPENAI
from .parsing import JUDGMENT_SCHEMA, ParsedAnswer, parse_answer
from .recognizer import SPEC as _RECOGNIZER
from .transformers_backend import SPEC as _TRANSFORMERS
from .vllm_backend import SPEC as _VLLM

JUDGES: dict[str, JudgeSpec] = {spec.name: spec for spec in (_TRANSFORMERS, _VLLM, _OPENAI, _RECOGNIZER)}
AUTO = "auto"
JUDGE_CHOICES = (AUTO, *JUDGES)


def judge_caveat(decoding: str | dict) -> str:
    """What the judgments of a stored decoding are worth, asked of the judge that made them ("" if unknown)."""
    import json

    decoding = json.loads(decoding) if isinstance(decoding, str) else decoding
    spec = JUDGES.get(decoding.get("backend", "")) if isinstance(decoding, dict) else None
    return spec.caveat(decoding) if spec else ""


def auto_judge(config) -> str:
    """The judge of `--judge auto`: the transformers judge when a VLM directory is given, else the recognizer."""
    return "transformers" if config.vlm else "recognizer"


__all__ = ["Judge", "JudgeRequest", "JudgeOutput", "JudgeError", "JudgeStopped", "JudgeUnavailable", "JudgeSpec",
           "JudgeIdentity", "ParsedAnswer", "parse_answer", "JUDGMENT_SCHEMA", "vlm_family", "vlm_hash",
           "imagenet_labels", "JUDGES", "JUDGE_CHOICES", "AUTO", "auto_judge",
           "judge_caveat"]
