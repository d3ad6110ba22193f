"""STAND-IN FOR vLLM, for tests only: vLLM needs CUDA and cannot run on our machines.

Its public call signatures are written down once here from vLLM's documented offline API (>= 0.12): `LLM(model,
*, ...)`, `LLM.chat(messages, sampling_params=None, use_tqdm=True, ...)`, `SamplingParams(..., temperature,
max_tokens, structured_outputs)`, `vllm.sampling_params.StructuredOutputsParams(json=...)`, and `RequestOutput`
(`prompt_token_ids`, `outputs[0].text / token_ids / finish_reason`). No **kwargs anywhere, so an argument vLLM does
not have fails here as it would there; `test_vllm_contract.py` checks the same names against the real classes
wherever vllm imports. Generation itself is done by transformers on the CPU, so the answers are real tiny-model
answers constrained by the same JSON schema."""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from pathlib import Path

# The names localjudge passes, per vLLM class; the contract test checks them against real vLLM.
LLM_KWARGS = ("max_model_len", "max_num_seqs", "gpu_memory_utilization", "limit_mm_per_prompt",
              "mm_processor_kwargs", "enable_prefix_caching", "tensor_parallel_size")
CHAT_KWARGS = ("sampling_params", "use_tqdm")
SAMPLING_KWARGS = ("temperature", "max_tokens", "structured_outputs")


class StructuredOutputsParams:
    def __init__(self, json=None, regex=None, choice=None, grammar=None, json_object=None, whitespace_pattern=None,
                 structural_tag=None):
        self.json = json


class SamplingParams:
    def __init__(self, n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, temperature=1.0,
                 top_p=1.0, top_k=0, seed=None, stop=None, stop_token_ids=None, max_tokens=16, min_tokens=0,
                 structured_outputs=None):
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.structured_outputs = structured_outputs


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class LLM:
    instances: list["LLM"] = []

    def __init__(self, model, *, tokenizer=None, trust_remote_code=False, dtype="auto", seed=None,
                 gpu_memory_utilization=0.9, max_model_len=None, max_num_seqs=None, limit_mm_per_prompt=None,
                 mm_processor_kwargs=None, enable_prefix_caching=None, enforce_eager=False, tensor_parallel_size=1,
                 **engine_arguments):
        if int(engine_arguments.get("data_parallel_size", 1)) > 1:  # as vLLM's LLM does (vllm-project/vllm#27282)
            raise ValueError("LLM(data_parallel_size>1) is not supported for single-process usage")
        if not os.path.isabs(model):
            raise ValueError("localjudge must give vLLM an absolute model directory")
        from localjudge.judge.transformers_backend import TransformersJudge

        self.init_kwargs = {"max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
                            "gpu_memory_utilization": gpu_memory_utilization,
                            "limit_mm_per_prompt": limit_mm_per_prompt, "mm_processor_kwargs": mm_processor_kwargs,
                            "enable_prefix_caching": enable_prefix_caching,
                            "tensor_parallel_size": tensor_parallel_size}
        self._generator = TransformersJudge(Path(model), device="cpu")
        self.chat_calls: list[int] = []
        LLM.instances.append(self)

    def chat(self, messages, sampling_params=None, use_tqdm=True, lora_request=None, chat_template=None,
             chat_template_content_format="auto", add_generation_prompt=True, continue_final_message=False,
             tools=None, chat_template_kwargs=None, mm_processor_kwargs=None):
        from localjudge.judge import JudgeRequest
        from localjudge.judge.parsing import JUDGMENT_SCHEMA

        if sampling_params.structured_outputs.json != JUDGMENT_SCHEMA:
            raise ValueError("the stand-in constrains output to the judgment schema only")
        self._generator.max_new_tokens = sampling_params.max_tokens
        self._generator.temperature = sampling_params.temperature
        requests = []
        for conversation in messages:
            (turn,) = conversation
            parts = {part["type"]: part for part in turn["content"]}
            requests.append(JudgeRequest(image=parts["image_pil"]["image_pil"], label="",
                                         prompt=parts["text"]["text"]))
        self.chat_calls.append(len(requests))
        return [RequestOutput(str(i), [0] * out.input_tokens,
                              [CompletionOutput(0, out.raw_text, [0] * out.output_tokens,
                                                "stop" if out.finished else "length")])
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
