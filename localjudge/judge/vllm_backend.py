"""Judge on an in-process vLLM engine: many conversations per `LLM.chat` call, one image each, output constrained
to the judgment schema with vLLM's structured outputs (xgrammar, the same engine as the transformers judge).

Kept thin and written against vLLM's documented offline API (LLM, LLM.chat, SamplingParams,
StructuredOutputsParams since 0.12; the old guided_* fields are gone). vLLM needs CUDA and its own pinned torch, so
it lives in its own environment (the `vllm` extra, Dockerfile.gpu); where it cannot be imported, tests drive this
adapter through a stand-in that mirrors those signatures (tests/vllm_standin.py)."""

from __future__ import annotations

import importlib
from pathlib import Path

from .. import offline
from .base import Judge, JudgeError, JudgeIdentity, JudgeOutput, JudgeRequest, JudgeSpec, vlm_family
from .parsing import JUDGMENT_SCHEMA

# Per-family image processing: cap Qwen2.5-VL's image tokens; no Gemma-3 pan-and-scan (one view per image).
PROCESSOR_SETTINGS = {
    "qwen2_5_vl": {"min_pixels": 28 * 28, "max_pixels": 1280 * 28 * 28},
    "gemma3": {"do_pan_and_scan": False},
}


class VllmSpec(JudgeSpec):
    name = "vllm"
    reserves_gpu = True  # the engine takes --gpu-memory-utilization of its GPU when it starts

    def open(self, config, identity: JudgeIdentity) -> Judge:
        return VllmJudge(Path(config.vlm), max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                         max_model_len=config.max_model_len, gpu_memory_utilization=config.gpu_memory_utilization,
                         max_num_seqs=config.max_num_seqs, tensor_parallel_size=config.tensor_parallel_size)


class VllmJudge(Judge):
    backend = "vllm"

    def __init__(self, vlm_dir: Path, max_new_tokens: int = 512, temperature: float = 0.0,
                 max_model_len: int = 8192, gpu_memory_utilization: float = 0.9, max_num_seqs: int = 64,
                 tensor_parallel_size: int = 1):
        offline.enforce()  # before vLLM is imported: no hub, no usage statistics
        try:
            vllm = importlib.import_module("vllm")
            structured = importlib.import_module("vllm.sampling_params")
        except ImportError as error:
            raise JudgeError("--judge vllm needs vLLM, which runs on CUDA in its own environment: "
                             "pip install 'localjudge[vllm]' there, or use Dockerfile.gpu") from error
        self.vlm_dir = Path(vlm_dir).resolve()
        self.family = vlm_family(self.vlm_dir)
        self.llm = vllm.LLM(
            model=str(self.vlm_dir),  # an absolute local directory: nothing is looked up on a hub
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            limit_mm_per_prompt={"image": 1},
            mm_processor_kwargs=PROCESSOR_SETTINGS[self.family],
            enable_prefix_caching=True,  # every request shares the long rubric prompt
            # a judge larger than one GPU, split over several (one copy per GPU is --data-parallel: Ray actors;
            # vLLM refuses data_parallel_size > 1 in one process)
            tensor_parallel_size=tensor_parallel_size,
        )
        self.sampling = vllm.SamplingParams(
            temperature=temperature,
            max_tokens=max_new_tokens,
            structured_outputs=structured.StructuredOutputsParams(json=JUDGMENT_SCHEMA),
        )

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        conversations = [
            [{"role": "user", "content": [{"type": "image_pil", "image_pil": r.image},
                                          {"type": "text", "text": r.prompt}]}]
            for r in requests
        ]
        results = self.llm.chat(conversations, sampling_params=self.sampling, use_tqdm=False)
        outputs = []
        for result in results:
            completion = result.outputs[0]
            outputs.append(JudgeOutput(
                raw_text=completion.text,
                input_tokens=len(result.prompt_token_ids or []),
                output_tokens=len(completion.token_ids),
                finished=completion.finish_reason != "length",
            ))
        return outputs


SPEC = VllmSpec()
