"""scripts/gpu_check.sh on a machine without a GPU: a dry run that still prints the whole table, exercises the CPU
halves of its rows, writes its markdown and JSON, exits 0, and opens no connection that leaves the machine."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO
from .test_offline import guarded_environment

# Every row of the table, as the script names them (written out here, not imported: a renamed row is a change the
# GPU machine's readers see, so it must show up in this test).
ROW_NAMES = ("device", "images", "ONNX Runtime", "Lite0 Grad-CAM: torch CUDA vs CPU",
             "Lite0 Grad-CAM: ONNX Runtime CUDA vs torch CPU", "judge qwen2_5_vl (transformers, GPU)",
             "judge gemma3 (transformers, GPU)", "peak GPU memory", "elapsed")
GPU_ROWS = ROW_NAMES[3:8]


def test_the_dry_run_prints_the_whole_table_offline(tmp_path):
    environment, attempts = guarded_environment(tmp_path)  # the environment asks to be online; the guard logs
    environment["PYTHON"] = sys.executable  # the wrapper runs the interpreter the tests run on
    out = tmp_path / "check" / "gpu-check.md"
    import torch

    # without a GPU the script must find that out itself (what CI checks); on a GPU machine the test asks for --dry
    on_gpu = torch.cuda.is_available()
    run = subprocess.run(["bash", "scripts/gpu_check.sh", *(["--dry"] if on_gpu else []), "--out", str(out)],
                         capture_output=True, text=True, env=environment, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert attempts.read_text() == ""  # not one connection or name lookup beyond loopback

    lines = run.stdout.splitlines()
    assert lines[:2] == ["| check | result |", "| --- | --- |"]
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)  # one table and nothing else
    rows = dict(line[2:-2].split(" | ", 1) for line in lines[2:])
    assert tuple(rows) == ROW_NAMES
    reason = "--dry" if on_gpu else "torch.cuda.is_available() is False"
    assert rows["device"].startswith(f"no CUDA device: dry run ({reason})"), rows["device"]
    assert "torch " in rows["device"] and "transformers " in rows["device"]
    for name in GPU_ROWS:
        assert rows[name].startswith("skipped (no GPU)"), (name, rows[name])
    # the CPU halves ran: a Lite0 map and a judgment per family (a failure would say so in its row, and exit 1)
    assert "CPU half exercised: 2 Grad-CAM maps" in rows["Lite0 Grad-CAM: torch CUDA vs CPU"]
    assert all("CPU path exercised" in rows[f"judge {family} (transformers, GPU)"] for family in ("qwen2_5_vl",
                                                                                               "gemma3"))
    assert "not installed" in rows["ONNX Runtime"] or "CPUExecutionProvider" in rows["ONNX Runtime"]

    assert out.read_text() == run.stdout
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["rows"] == rows and written["failed"] is False
    assert written["numbers"]["dry"] is True and written["numbers"]["elapsed_s"] < 120


def test_the_carry_folder_gives_the_gpu_run_its_released_vocabularies(tmp_path, data_dir, monkeypatch):
    """On a bare GPU machine the tiny VLMs are built from the carry folder's tokenizers (gpu_check.py --prepare packs
    them, gpu_check.sh unpacks them): the path the dry run above does not take (it builds the 512-token variant)."""
    import importlib.util

    from transformers import AutoConfig

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gpu_check)
    spec.loader.exec_module(gpu_check)
    carry = tmp_path / ".gpu_check"
    gpu_check.pack_data(carry, data_dir, 1)
    assert not (carry / "data" / "tokenizers").exists()
    unpack = 'tar -xzf "$carry/data/tokenizers.tar.gz" -C "$carry/data"'  # the wrapper's own line
    assert unpack in (REPO / "scripts" / "gpu_check.sh").read_text()
    subprocess.run(["bash", "-c", unpack], env={"carry": str(carry), "PATH": "/usr/bin:/bin"}, check=True)
    built, vocabulary = gpu_check.build_vlms(tmp_path / "vlms", carry / "data")
    assert vocabulary == "real"
    sizes = {family: AutoConfig.from_pretrained(path).get_text_config().vocab_size for family, path in built.items()}
    assert sizes == {"qwen2_5_vl": 151936, "gemma3": 262208}
