"""The vLLM judge adapter. Where vllm cannot be imported (our CPU machines) it runs against the stand-in in
tests/vllm_standin.py, named as such; where vllm imports, the adapter's calls are checked against the real
classes' signatures."""

from __future__ import annotations

import csv
import inspect
import os
import sqlite3
import sys

import pytest

from . import vllm_standin
from .conftest import invoke, invoke_json, write_manifest


@pytest.fixture
def standin(monkeypatch):
    for name, module in vllm_standin.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    vllm_standin.LLM.instances.clear()
    return vllm_standin


@pytest.fixture(scope="module")
def three_images(tmp_path_factory, data_dir):
    rows = list(csv.DictReader(open(data_dir / "imagenet-sample" / "labels.csv", newline="")))[10:13]
    return write_manifest(tmp_path_factory.mktemp("vllm") / "three.csv", [
        {"path": str(data_dir / "imagenet-sample" / r["file"]), "label": r["imagenet_index"]} for r in rows])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_vllm_judge_through_the_standin_gives_the_transformers_answers(standin, family, tiny_vlms, three_images,
                                                                       tmp_path):
    db = tmp_path / "vllm.db"
    vlm = tiny_vlms[family]
    common = ["--db", db, "--vlm", vlm, "--max-new-tokens", "1024", "--judge-batch-size", "2"]
    assert invoke_json("run", three_images, *common, "--judge", "vllm", "--tensor-parallel", "1")["judge"][
        "computed"] == 3
    invoke("run", three_images, *common, "--judge", "transformers")
    (engine,) = standin.LLM.instances
    assert engine.init_kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert engine.init_kwargs["enable_prefix_caching"] is True
    assert engine.init_kwargs["tensor_parallel_size"] == 1
    expected_processor = ({"min_pixels": 784, "max_pixels": 1003520} if family == "qwen2_5_vl"
                          else {"do_pan_and_scan": False})
    assert engine.init_kwargs["mm_processor_kwargs"] == expected_processor
    assert engine.chat_calls == [2, 1]  # batched conversations, --judge-batch-size at a time
    assert os.environ["VLLM_NO_USAGE_STATS"] == "1" and os.environ["DO_NOT_TRACK"] == "1"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select judge_backend, saliency_id, status, score, raw_text, input_tokens, "
                            "output_tokens from judgments order by saliency_id").fetchall()
    by_backend = {}
    for backend, saliency, status, score, raw, input_tokens, output_tokens in rows:
        by_backend.setdefault(backend, {})[saliency] = (status, score, raw, input_tokens, output_tokens)
    assert set(by_backend) == {"vllm", "transformers"}
    assert by_backend["vllm"] == by_backend["transformers"]


def test_without_vllm_the_error_says_where_it_runs(tiny_vlms, three_images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    result = invoke("run", three_images, "--db", tmp_path / "no.db", "--vlm", tiny_vlms["qwen2_5_vl"], "--judge",
                    "vllm", expect_ok=False)
    assert result.exit_code == 1 and "needs vLLM" in result.output and "Dockerfile.gpu" in result.output


def _accepts(function, names) -> list[str]:
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [name for name in names if name not in parameters]


def test_standin_signatures_match_real_vllm():
    vllm = pytest.importorskip("vllm", reason="vLLM is CUDA-only; it is not installed on CPU machines")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.sampling_params import StructuredOutputsParams

    llm_missing = _accepts(vllm.LLM.__init__, vllm_standin.LLM_KWARGS)
    engine_fields = set(inspect.signature(EngineArgs).parameters)
    assert [name for name in llm_missing if name not in engine_fields] == []
    assert _accepts(vllm.LLM.chat, vllm_standin.CHAT_KWARGS) == []
    assert {"temperature", "max_tokens", "structured_outputs"} <= set(vllm.SamplingParams.__struct_fields__)
    assert "json" in inspect.signature(StructuredOutputsParams).parameters
