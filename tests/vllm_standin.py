"""STAND-IN FOR vLLM, for tests only: vLLM needs CUDA and cannot run on our machines.

Its signatures are not written here: scripts/check_vllm_contract.py reads them from the pinned vLLM wheel (with
`ast`, never importing it) into tests/vllm_signatures.json: `LLM(model, *, ...)` and the EngineArgs fields its
**kwargs go to, `LLM.chat(messages, sampling_params, use_tqdm, ...)`, `SamplingParams`, `StructuredOutputsParams`,
the chat content-part types vLLM parses and the keys it reads from each, the RequestOutput / CompletionOutput
attributes and the finish reasons. Every call binds its arguments to those signatures, so an argument vLLM does not
have fails here as it would there (TypeError), and the outputs carry exactly vLLM's attribute names. The same script
checks the adapter against the wheel directly; `test_vllm_contract.py` checks against the real classes wherever vllm
imports. Generation itself is done by transformers on the CPU, so the answers are real tiny-model answers
constrained by the same JSON schema."""

from __future__ import annotations

import ast
import inspect
import json
import os
import types
from pathlib import Path

SIGNATURES = json.loads(Path(__file__).with_name("vllm_signatures.json").read_text())
ADAPTER = Path(__file__).resolve().parent.parent / "localjudge" / "judge" / "vllm_backend.py"


def _signature(entry: dict) -> inspect.Signature:
    """An inspect.Signature from the wheel's reading; computed defaults (not literals) become None."""
    def parameter(name, kind):
        default = inspect.Parameter.empty if name in entry["required"] else entry["defaults"].get(name)
        return inspect.Parameter(name, kind, default=default)

    parameters = [parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in entry["positional_only"]]
    parameters += [parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in entry["positional"]]
    if entry["var_positional"]:
        parameters.append(inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL))
    parameters += [parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in entry["keyword_only"]]
    if entry["var_keyword_to"]:
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def _bind(name: str, args: tuple, kwargs: dict) -> dict:
    """The arguments as vLLM's `name` would receive them, defaults applied; TypeError for any it does not take."""
    try:
        bound = _signature(SIGNATURES[name]).bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"vLLM {SIGNATURES['vllm_version']} {name}: {error}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _adapter_keywords(callee: str) -> tuple[str, ...]:
    """The keyword names the adapter passes to `<anything>.callee(...)`, for the check against real vLLM."""
    tree = ast.parse(ADAPTER.read_text())
    return tuple(keyword.arg for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == callee
                 for keyword in node.keywords if keyword.arg)


# The names localjudge passes, per vLLM class, read off the adapter; test_vllm_contract checks them against real vLLM.
LLM_KWARGS = _adapter_keywords("LLM")
CHAT_KWARGS = _adapter_keywords("chat")
SAMPLING_KWARGS = _adapter_keywords("SamplingParams")


class _Arguments:
    """Takes exactly the arguments the vLLM class of the same name takes, and keeps them as attributes."""

    def __init__(self, *args, **kwargs):
        for name, value in _bind(type(self).__name__, args, kwargs).items():
            setattr(self, name, value)


class StructuredOutputsParams(_Arguments):
    pass


class SamplingParams(_Arguments):
    pass


class _Output:
    """Has exactly the attributes of the vLLM output class of the same name (None unless given)."""

    def __init__(self, **values):
        attributes = SIGNATURES[type(self).__name__]["attributes"]
        unknown = sorted(set(values) - set(attributes))
        if unknown:
            raise TypeError(f"vLLM's {type(self).__name__} has no {unknown}")
        for name in attributes:
            setattr(self, name, values.get(name))


class CompletionOutput(_Output):
    pass


class RequestOutput(_Output):
    pass


def _finish_reason(finished: bool) -> str:
    reason = "stop" if finished else "length"
    assert reason in SIGNATURES["finish_reasons"], f"vLLM's finish reasons are {SIGNATURES['finish_reasons']}"
    return reason


class LLM:
    instances: list["LLM"] = []

    def __init__(self, *args, **kwargs):
        arguments = _bind("LLM", args, kwargs)
        engine_arguments = arguments.pop("kwargs", {})
        if engine_arguments:  # LLM.__init__ hands its **kwargs to EngineArgs: they must be EngineArgs fields
            _bind(SIGNATURES["LLM"]["var_keyword_to"], (), engine_arguments)
        if int(engine_arguments.get("data_parallel_size", 1)) > 1:  # as vLLM's LLM does (vllm-project/vllm#27282)
            raise ValueError("LLM(data_parallel_size>1) is not supported for single-process usage")
        model = arguments.pop("model")
        if not os.path.isabs(model):
            raise ValueError("localjudge must give vLLM an absolute model directory")
        from localjudge.judge.transformers_backend import TransformersJudge

        self.init_kwargs = {**arguments, **engine_arguments}
        self._generator = TransformersJudge(Path(model), device="cpu")
        self.chat_calls: list[int] = []
        LLM.instances.append(self)

    def chat(self, *args, **kwargs):
        from localjudge.judge import JudgeRequest
        from localjudge.judge.parsing import JUDGMENT_SCHEMA

        arguments = _bind("LLM.chat", args, kwargs)
        sampling_params = arguments["sampling_params"]
        if sampling_params.structured_outputs.json != JUDGMENT_SCHEMA:
            raise ValueError("the stand-in constrains output to the judgment schema only")
        self._generator.max_new_tokens = sampling_params.max_tokens
        self._generator.temperature = sampling_params.temperature
        accepted = SIGNATURES["content_parts"]["reads"]
        requests = []
        for conversation in arguments["messages"]:
            (turn,) = conversation
            for part in turn["content"]:
                if part["type"] not in accepted:
                    raise ValueError(f"Unsupported chat content part type: {part['type']!r}")  # as vLLM says
                unread = set(part) - {"type", *accepted[part["type"]]}
                if unread:  # vLLM would ignore them, and miss what they carry
                    raise ValueError(f"vLLM's {part['type']!r} parser reads {accepted[part['type']]}, not {unread}")
            parts = {part["type"]: part for part in turn["content"]}
            requests.append(JudgeRequest(image=parts["image_pil"]["image_pil"], label="",
                                         prompt=parts["text"]["text"]))
        self.chat_calls.append(len(requests))
        return [RequestOutput(request_id=str(i), prompt_token_ids=[0] * out.input_tokens,
                              outputs=[CompletionOutput(index=0, text=out.raw_text,
                                                        token_ids=[0] * out.output_tokens,
                                                        finish_reason=_finish_reason(out.finished))])
                for i, out in enumerate(self._generator.judge(requests))]


def modules() -> dict[str, types.ModuleType]:
    """The stand-in shaped like the `vllm` package, for sys.modules: vllm.LLM, vllm.SamplingParams,
    vllm.sampling_params.StructuredOutputsParams."""
    package = types.ModuleType("vllm")
    package.__doc__ = "STAND-IN for vLLM (tests only)"
    submodule = types.ModuleType("vllm.sampling_params")
    submodule.StructuredOutputsParams = StructuredOutputsParams
    submodule.SamplingParams = SamplingParams
    package.LLM, package.SamplingParams, package.sampling_params = LLM, SamplingParams, submodule
    return {"vllm": package, "vllm.sampling_params": submodule}
