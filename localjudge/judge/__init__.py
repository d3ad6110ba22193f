"""Judges: a vision-language model that reads a masked (or heatmap) image and the predicted class, and answers with
an evaluation, a justification and a 0-5 score. One small protocol; one file per backend."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

from .parsing import JUDGMENT_SCHEMA, ParsedAnswer, parse_answer


@dataclass(frozen=True)
class JudgeRequest:
    image: Image.Image
    label: str
    prompt: str
    label_index: int | None = None  # the predicted class's index in the vision model's label list


@dataclass(frozen=True)
class JudgeOutput:
    raw_text: str
    input_tokens: int | None
    output_tokens: int | None
    finished: bool = True  # False when generation stopped at max_new_tokens before the end of the answer
    error: str | None = None  # the backend failed for this request (not a parse failure)
    rejected: bool = False  # the failure is a server refusing this request (4xx), not a server gone quiet


class Judge(Protocol):
    backend: str

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]: ...


class JudgeError(Exception):
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


# How each backend constrains the answer to the schema. A server is asked through the standard response format;
# whether it honours it is up to the server (vLLM and llama.cpp do; `transformers serve` ignores it).
STRUCTURED_OUTPUT = {"transformers": "xgrammar-json-schema", "vllm": "xgrammar-json-schema",
                     "openai": "response-format-json-schema", "recognizer": "templated"}


def decoding_params(backend: str, max_new_tokens: int, temperature: float) -> dict:
    """Everything about decoding that changes an answer; part of a judgment's key."""
    if backend == "recognizer":  # no decoding: its thresholds and sibling groups decide
        from .recognizer import recognizer_params

        return recognizer_params()
    schema_hash = hashlib.sha256(json.dumps(JUDGMENT_SCHEMA, sort_keys=True).encode()).hexdigest()[:16]
    params = {"backend": backend, "max_new_tokens": max_new_tokens, "temperature": temperature,
              "structured_output": STRUCTURED_OUTPUT[backend], "schema": schema_hash}
    if backend == "transformers":
        params["image_placeholders"] = "suppressed"  # never written into an answer (see transformers_backend)
        if temperature > 0:  # our decoding loop samples from the temperature-scaled distribution only
            params["sampling"] = "temperature, no top-k/top-p"
    return params


def open_judge(config, vlm_dir: Path | None, api_model: str | None = None) -> Judge:
    """The judge backend a run's configuration asks for, loaded (for a server: its address checked and its model
    known; `api_model` is the name already resolved)."""
    if config.judge == "transformers":
        from .transformers_backend import TransformersJudge

        return TransformersJudge(vlm_dir, device=config.device, max_new_tokens=config.max_new_tokens,
                                 temperature=config.temperature, max_rows=config.max_num_seqs)
    if config.judge == "vllm":
        from .vllm_backend import VllmJudge

        return VllmJudge(vlm_dir, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                         max_model_len=config.max_model_len, gpu_memory_utilization=config.gpu_memory_utilization,
                         max_num_seqs=config.max_num_seqs, tensor_parallel_size=config.tensor_parallel_size)
    if config.judge == "recognizer":
        from .recognizer import RecognizerJudge

        return RecognizerJudge(device=config.device)
    if config.judge == "openai":
        from .openai_backend import OpenAIJudge

        return OpenAIJudge(config.base_url, api_model=api_model or config.api_model, allowed_hosts=config.allow_hosts,
                           max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                           concurrency=config.api_concurrency, timeout=config.api_timeout,
                           retries=config.api_retries, backoff=config.api_backoff)
    raise JudgeError(f"unknown judge backend {config.judge!r}; available: {', '.join(JUDGE_BACKENDS)}")


JUDGE_BACKENDS = ("auto", "transformers", "vllm", "openai", "recognizer")

__all__ = ["Judge", "JudgeRequest", "JudgeOutput", "JudgeError", "JudgeStopped", "JudgeUnavailable", "ParsedAnswer",
           "parse_answer", "JUDGMENT_SCHEMA", "vlm_family", "vlm_hash", "decoding_params", "open_judge", "JUDGE_BACKENDS"]
