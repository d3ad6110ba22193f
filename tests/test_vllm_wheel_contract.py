"""scripts/check_vllm_contract.py against the pinned vLLM wheel (read, never installed): it passes on the real
wheel, fails naming the name when the wheel or the adapter is changed to disagree, and the stand-in's committed
signatures (tests/vllm_signatures.json) are what it reads from the wheel. The tampering is done on a small zip of
just the members the checker reads, not on a copy of the 300+ MB wheel."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from localjudge.judge.parsing import JUDGMENT_SCHEMA

from . import vllm_standin

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_vllm_contract.py"
SIGNATURES = Path(__file__).with_name("vllm_signatures.json")


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_vllm_contract", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def wheel(checker):
    version = checker.pinned_version()
    try:
        return checker.obtain_wheel(version, checker.default_cache())
    except (OSError, subprocess.CalledProcessError) as error:
        why = f"pip download exited {error.returncode}" if isinstance(error, subprocess.CalledProcessError) else error
        pytest.skip(f"the vllm=={version} wheel is not in {checker.default_cache()} and could not be downloaded "
                    f"(no network?): {why}")


@pytest.fixture(scope="module")
def small_wheel(checker, wheel, tmp_path_factory):
    """A zip of only the wheel members the checker reads."""
    members = checker.check(wheel).read_members
    small = tmp_path_factory.mktemp("vllm-wheel") / "vllm-members.zip"
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as target:
        for member in members:
            target.writestr(member, source.read(member))
    return small


def _rewritten(source: Path, target: Path, member: str, old: str, new: str) -> Path:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == member:
                text = data.decode()
                assert old in text, f"{old!r} is no longer in {member}: choose another tampering"
                data = text.replace(old, new).encode()
            copy.writestr(item, data)
    return target


def _run(checker, capsys, *argv) -> tuple[int, str]:
    code = checker.main([str(a) for a in argv])
    return code, capsys.readouterr().out


def _missing(out: str) -> set[str]:
    """The names the table marks MISSING, checked against its closing line that names every missing one."""
    rows = {line[2:].split("  ")[0] for line in out.splitlines() if line.startswith("  ") and "MISSING: " in line}
    (closing,) = [line for line in out.splitlines() if line.startswith("MISSING in vLLM")]
    assert set(closing.split(": ", 1)[1].split(", ")) == rows
    return rows


def test_the_real_wheel_passes_and_writes_the_committed_signatures(wheel, tmp_path):
    written = tmp_path / "signatures.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--json", "--write-standin-signatures", str(written)],
                            capture_output=True, text=True, cwd=ROOT)  # the pinned wheel, from the cache
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["missing"] == [] and report["vllm_version"] == "0.33.0"
    found = {use["name"]: use["where"] for use in report["uses"]}
    assert found["LLM(enable_prefix_caching=)"].startswith("vllm/engine/arg_utils.py: EngineArgs field")
    assert found["LLM.chat(sampling_params=)"].startswith("vllm/entrypoints/llm.py: LLM.chat parameter")
    assert found["StructuredOutputsParams(json=)"].startswith("vllm/sampling_params.py")
    assert "MM_PARSER_MAP key" in found["content part 'image_pil'"]
    assert "CompletionOutput.finish_reason" in found and "RequestOutput.prompt_token_ids" in found
    # the stand-in enforces exactly what the pinned wheel has
    assert written.read_text() == SIGNATURES.read_text(), (
        "tests/vllm_signatures.json is stale: python scripts/check_vllm_contract.py "
        "--write-standin-signatures tests/vllm_signatures.json")


def test_the_small_zip_of_read_members_passes(checker, small_wheel, capsys):
    code, out = _run(checker, capsys, "--wheel", small_wheel)
    assert code == 0, out
    assert "all " in out and "names found" in out


@pytest.mark.parametrize("member, old, new, missing", [
    ("vllm/sampling_params.py", "    structured_outputs: StructuredOutputsParams",
     "    structured_output: StructuredOutputsParams", "SamplingParams(structured_outputs=)"),
    ("vllm/sampling_params.py", "    json: str | dict | None = None", "    json_schema: str | dict | None = None",
     "StructuredOutputsParams(json=)"),
    ("vllm/renderers/chat_utils/chat_message.py",
     '    "image_pil": lambda part: _PILImageParser(part).get("image_pil", None),\n', "",
     "content part 'image_pil'"),
    ("vllm/renderers/chat_utils/chat_message.py", 'if part_type == "image_pil":', 'if part_type == "image_pillow":',
     "content part 'image_pil'"),
    ("vllm/renderers/chat_utils/chat_message.py", '_TextParser(part).get("text", None),\n    "thinking"',
     '_TextParser(part).get("content", None),\n    "thinking"', "content part 'text' key 'text'"),
    ("vllm/engine/arg_utils.py", "    enable_prefix_caching: bool", "    prefix_caching: bool",
     "LLM(enable_prefix_caching=)"),
    ("vllm/entrypoints/llm.py", "        use_tqdm: bool | Callable[..., tqdm] = True,\n        lora_request",
     "        progress: bool | Callable[..., tqdm] = True,\n        lora_request", "LLM.chat(use_tqdm=)"),
    ("vllm/outputs.py", "    finish_reason: str | None = None", "    stop_cause: str | None = None",
     "CompletionOutput.finish_reason"),
    ("vllm/outputs.py", "self.prompt_token_ids = prompt_token_ids", "self.prompt_ids = prompt_token_ids",
     "RequestOutput.prompt_token_ids"),
    ("vllm/v1/engine/__init__.py", '("stop", "length",', '("stop", "max_tokens",', "finish_reason 'length'"),
    ("vllm/__init__.py", '"LLM": ".entrypoints.llm:LLM",', '"OfflineLLM": ".entrypoints.llm:LLM",', "vllm.LLM"),
])
def test_a_wheel_that_disagrees_fails_naming_the_name(checker, small_wheel, tmp_path, capsys, member, old, new,
                                                      missing):
    tampered = _rewritten(small_wheel, tmp_path / "tampered.zip", member, old, new)
    code, out = _run(checker, capsys, "--wheel", tampered)
    assert code == 1, out
    assert missing in _missing(out), out


@pytest.mark.parametrize("old, new, missing", [
    ("enable_prefix_caching=True,", "enable_prefix_caching=True, enable_prefix_cache=True,",
     "LLM(enable_prefix_cache=)"),
    ("use_tqdm=False", "use_tqdm=False, verbose=False", "LLM.chat(verbose=)"),
    ("max_tokens=max_new_tokens,", "max_new_tokens=max_new_tokens,", "SamplingParams(max_new_tokens=)"),
    ('{"type": "image_pil", "image_pil": r.image}', '{"type": "image", "image": r.image}', "content part 'image'"),
    ('{"type": "image_pil", "image_pil": r.image}', '{"type": "image_pil", "image": r.image}',
     "content part 'image_pil' key 'image'"),
    ("completion.finish_reason", "completion.stop_reason_text", "CompletionOutput.stop_reason_text"),
    ('!= "length"', '!= "max_tokens"', "finish_reason 'max_tokens'"),
    ("self.llm = vllm.LLM(", 'self.llm = getattr(vllm, "LLM")(', "vllm.LLM"),  # a call it cannot follow: fail
])
def test_a_name_new_in_the_adapter_is_checked(checker, small_wheel, tmp_path, capsys, old, new, missing):
    text = (ROOT / "localjudge" / "judge" / "vllm_backend.py").read_text()
    assert old in text
    adapter = tmp_path / "vllm_backend.py"
    adapter.write_text(text.replace(old, new))
    code, out = _run(checker, capsys, "--wheel", small_wheel, "--adapter", adapter)
    assert code == 1, out
    assert missing in _missing(out), out


def test_the_standin_takes_only_what_vllm_takes(checker):
    assert vllm_standin.SIGNATURES["vllm_version"] == checker.pinned_version()  # regenerated with the pin
    with pytest.raises(TypeError, match="guided_json"):
        vllm_standin.SamplingParams(temperature=0.0, guided_json={})
    with pytest.raises(TypeError, match="EngineArgs.*max_model_length"):
        vllm_standin.LLM("/models/x", max_model_length=8192)
    engine = vllm_standin.LLM.__new__(vllm_standin.LLM)
    engine._generator = types.SimpleNamespace()
    sampling = vllm_standin.SamplingParams(
        structured_outputs=vllm_standin.StructuredOutputsParams(json=JUDGMENT_SCHEMA))
    with pytest.raises(ValueError, match="Unsupported chat content part type: 'image'"):
        engine.chat([[{"role": "user", "content": [{"type": "image", "image": None}]}]], sampling_params=sampling)
    with pytest.raises(TypeError, match="use_progress_bar"):
        engine.chat([], sampling_params=sampling, use_progress_bar=False)
    with pytest.raises(AttributeError):  # vLLM's CompletionOutput has finish_reason, no `finished`
        vllm_standin.CompletionOutput(text="").finished
    assert vllm_standin.SamplingParams().max_tokens == 16  # vLLM's own default, read as a literal


def test_the_gpu_image_installs_the_version_the_checker_reads(checker):
    """Dockerfile.gpu installs vLLM by its own pin (before localjudge, so its torch and transformers pins win): that
    pin must be the `vllm` extra's, the version check_vllm_contract.py reads and the stand-in's signatures come from."""
    import re

    pins = re.findall(r"vllm==([\w.]+)", (ROOT / "Dockerfile.gpu").read_text())
    assert pins == [checker.pinned_version()]
