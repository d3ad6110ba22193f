"""The command line: `localjudge run` does every stage; each stage is also a command of its own. Commands parse
options and render results; which backends a run uses and whether its options fit together is settled by
`pipeline.open_audit`. Commands that compute import the pipeline (and torch) when they run, so the read-only ones
start without it."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import click

from . import __version__
from .config import (CANARY_DEFAULTS, CLUSTER_DEFAULTS, DEFAULTS, FAITHFULNESS_BASELINES, IMAGE_MODES,
                     JUDGE_CHECK_SAMPLE, JUDGE_CHECK_SEED, SANITY_IMAGES, SANITY_METHODS, SANITY_SEED)
from .errors import OptionError, UserError
from .export import FORMATS
from .judge import JUDGE_CHOICES
from .judge.recognizer import DESIGNS as RECOGNIZER_DESIGNS
from .judge.prompts import PROMPT_STYLES
from .queries import (calibrated_thresholds, describe_setting, faithfulness_means, label_issue_table, map_signals,
                      matrices, region_means, shaping_text, summary)
from .store import Store
from .vision import BACKEND_CHOICES, list_cards

USER_ERRORS = (UserError, ValueError, FileNotFoundError)


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


warnings.formatwarning = _one_line_warning


def user_errors(fn):
    """Problems a user can fix are one clear line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OptionError as error:
            raise click.UsageError(str(error)) from error
        except USER_ERRORS as error:
            raise click.ClickException(str(error)) from error

    return wrapper


def options(*decorators):
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def window_pair(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        center, width = (float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give the window as CENTRE,WIDTH, e.g. 40,400") from None
    if width < 1:
        raise click.BadParameter(f"{text!r}: the width must be at least 1")
    return center, width


db_option = click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
                         help="SQLite file that holds the audit (created if missing).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
ingest_options = options(
    click.option("--path-column", default=DEFAULTS.path_column, show_default=True,
                 help="Manifest column with image paths (relative to the manifest)."),
    click.option("--label-column", default=DEFAULTS.label_column, show_default=True,
                 help="Manifest column with labels: ImageNet index, WordNet id or class name (';' for several)."),
    click.option("--redact-paths", is_flag=True, default=None,
                 help="Store (and print) a hash of each file path instead of the path."),
    click.option("--shard", metavar="K/N", help="Only the K-th of N slices of the images (by image hash), for a "
                                                "run split over machines; merge the stores with `db merge`."),
)
vision_options = options(
    click.option("--model", default=DEFAULTS.model, show_default=True,
                 help="Registered model name (see `localjudge models list`) or a card .json file."),
    click.option("--weights", type=click.Path(exists=True, dir_okay=False),
                 help="State dict for the model (loaded weights-only); its head's size is the number of classes."),
    click.option("--random-weights", is_flag=True, default=None,
                 help="Run a model whose weights are yours without them: a seeded random network (tests and "
                      "benchmarks only; every output then says \"random weights\")."),
    click.option("--labels", type=click.Path(exists=True, dir_okay=False),
                 help="The model's class names instead of its card's: one per line, or CSV index,name[,description] "
                      "(a description is given to the judge). Give it to every stage, as --model."),
    click.option("--card", type=click.Path(exists=True, dir_okay=False),
                 help="Card for --model FILE.onnx (default: FILE.json beside it)."),
    click.option("--backend", type=click.Choice(BACKEND_CHOICES), default=DEFAULTS.backend, show_default=True,
                 help="auto (ONNX Runtime where it is installed for the device, else torch), torch, or onnx (ONNX "
                      "Runtime; a registered model is exported once into the cache)."),
    click.option("--device", default=DEFAULTS.device, show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--batch-size", type=click.IntRange(1), default=DEFAULTS.batch_size, show_default=True),
    click.option("--progress-seconds", type=click.FloatRange(0), default=DEFAULTS.progress_seconds,
                 show_default=True, help="Where stderr is not a terminal (a scheduler, a log file): a progress line "
                                         "with rate and time left every this many seconds."),
    click.option("--finding-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                 default=DEFAULTS.finding_threshold, show_default=True,
                 help="Multilabel models: a class at or above this probability is a finding, explained and judged "
                      "on its own (a card's per-class thresholds win)."),
    click.option("--targets", type=click.Choice(("findings", "labelled")), default=DEFAULTS.targets,
                 show_default=True,
                 help="Multilabel models: explain and judge each finding, or also each labelled finding the model "
                      "missed (it counts as wrong)."),
    click.option("--window", "dicom_window", callback=lambda ctx, param, value: window_pair(value),
                 metavar="C,W", help="DICOM: window centre and width instead of each file's own (part of the "
                                     "prediction's preprocessing: give it to every stage, as --model)."),
    click.option("--bundle", type=click.Path(exists=True, file_okay=False),
                 help="A model bundle (`localjudge bundle create`): verified file by file, then its model, weights "
                      "and VLM are used and its manifest hash is recorded with the run."),
    click.option("--trust-hash-cache", is_flag=True, default=None,
                 help="Take the sha256 of a bundle's files and of the vision model's weights or graph from the "
                      "store's cache when their path, size and modification time are unchanged (quicker for a large "
                      "VLM; a same-size change with its time restored then goes unseen). By default their bytes are "
                      "hashed (once per process)."),
)
class RegistryChoice(click.Choice):
    """A choice among a registry's names, read when the option is shown or used: the CAM methods compute with
    torch, and importing the CLI must not load it."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())


def cam_methods() -> tuple[str, ...]:
    from .saliency.methods import METHODS

    return tuple(METHODS)


cam_options = options(
    click.option("--cam", type=RegistryChoice(cam_methods), default=DEFAULTS.cam, show_default=True),
)
setting_options = options(
    click.option("--alpha", type=float, default=DEFAULTS.alpha, show_default=True, help="Mask steepness."),
    click.option("--beta", type=float, default=DEFAULTS.beta, show_default=True, help="Mask threshold."),
    click.option("--prompt-style", type=click.Choice(PROMPT_STYLES), default=DEFAULTS.prompt_style,
                 show_default=True, help="The judge's prompt: the original, a concise one, or an extended one "
                                         "(step by step); same rubric and answer format."),
    click.option("--image-kind", metavar="TEXT",
                 help="What the judge is told each image is (e.g. \"chest radiograph\"); default: from the file "
                      "(a DICOM file's modality and body part), else \"photo\"."),
)
judge_backend_options = options(
    click.option("--vlm", type=click.Path(exists=True, file_okay=False),
                 help="Local Gemma-3 or Qwen2.5-VL model directory."),
    click.option("--judge", type=click.Choice(JUDGE_CHOICES), default=DEFAULTS.judge, show_default=True,
                 help="auto: transformers with --vlm DIR, else the recognizer (EfficientNet-Lite2 on the masked "
                      "image); vllm; openai (a local server)."),
    click.option("--image-mode", type=click.Choice(IMAGE_MODES), default=DEFAULTS.image_mode, show_default=True,
                 help="What the judge sees: the masked image (paper Eq. 1-2) or a heatmap overlay."),
    click.option("--recognizer-design", type=click.Choice(RECOGNIZER_DESIGNS), default=DEFAULTS.recognizer_design,
                 show_default=True, help="What the recognizer classifies: the masked image on black, on the "
                                         "normalisation mean, the view cropped to the attended region (measured "
                                         "best: the README), or the masked image's class mass relative to the "
                                         "whole view's."),
    click.option("--judge-batch-size", type=click.IntRange(1), default=DEFAULTS.judge_batch_size,
                 show_default=True, help="Requests handed to the judge at once (and stored together)."),
    click.option("--judge-failure-limit", type=click.IntRange(1), default=DEFAULTS.judge_failure_limit,
                 show_default=True, help="Stop the run after this many judge batches in a row fail (the judge "
                                         "raised: out of memory, a broken model); what was judged is stored."),
    click.option("--max-new-tokens", type=click.IntRange(1), default=DEFAULTS.max_new_tokens, show_default=True),
    click.option("--temperature", type=click.FloatRange(0), default=DEFAULTS.temperature, show_default=True),
    click.option("--judge-image-size", type=click.IntRange(32), default=DEFAULTS.judge_image_size,
                 show_default=True, help="Side in pixels of the image given to the judge."),
    click.option("--max-model-len", type=click.IntRange(256), default=DEFAULTS.max_model_len, show_default=True,
                 help="vLLM: context length."),
    click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0),
                 default=DEFAULTS.gpu_memory_utilization, show_default=True, help="vLLM: share of GPU memory."),
    click.option("--max-num-seqs", type=click.IntRange(1), default=DEFAULTS.max_num_seqs, show_default=True,
                 help="Answers written at once (vLLM engine, transformers judge); new requests join as others end."),
    click.option("--tensor-parallel", "tensor_parallel_size", type=click.IntRange(1),
                 default=DEFAULTS.tensor_parallel_size, show_default=True,
                 help="vLLM: split the judge model over this many GPUs of this machine."),
    click.option("--data-parallel", "data_parallel_size", type=click.IntRange(1),
                 default=DEFAULTS.data_parallel_size, show_default=True,
                 help="Run this many copies of the judge (vLLM: one per GPU, or per --tensor-parallel group), as "
                      "Ray actors on a local cluster (vLLM itself takes one copy per process)."),
    click.option("--base-url", help="--judge openai: the server, e.g. http://127.0.0.1:8000/v1 (loopback only, "
                                    "unless --allow-host names its host)."),
    click.option("--api-model", help="--judge openai: the model to ask for (default: the one the server lists)."),
    click.option("--allow-host", "allow_hosts", multiple=True,
                 help="--judge openai: a host other than this machine that may receive images (repeatable)."),
    click.option("--insecure-http", is_flag=True, default=None,
                 help="--judge openai: allow plain http to an --allow-host host (images and the API key then "
                      "cross the network unencrypted; https is required otherwise)."),
    click.option("--api-concurrency", type=click.IntRange(1), default=DEFAULTS.api_concurrency, show_default=True,
                 help="--judge openai: requests in flight at once."),
    click.option("--api-timeout", type=click.FloatRange(0.1), default=DEFAULTS.api_timeout, show_default=True,
                 help="--judge openai: seconds to wait for one answer."),
    click.option("--api-retries", type=click.IntRange(0), default=DEFAULTS.api_retries, show_default=True,
                 help="--judge openai: more tries after a timeout, refused connection, 5xx or 429 "
                      "(backoff doubles from 1 s)."),
)
judge_options = options(setting_options, judge_backend_options)
ground_truth_options = options(
    click.option("--masks", type=click.Path(exists=True, file_okay=False),
                 help="Folder of ground-truth masks named by the images' stems (any non-zero pixel is the object)."),
    click.option("--mask-column", help="Manifest column with each image's ground-truth mask path."),
    click.option("--mask-label-column",
                 help="Manifest column naming the class each --mask-column mask is the region of (a row per finding "
                      "of an image): a multilabel model's map of that finding is measured against it."),
    click.option("--boxes", type=click.Path(exists=True, dir_okay=False),
                 help="COCO-style JSON of ground-truth boxes (images[].file_name, annotations[].bbox; with "
                      "categories[], each category's boxes are also the region of the class of that name)."),
)
threshold_option = click.option("--threshold", type=click.IntRange(0, 5), default=DEFAULTS.threshold,
                                show_default=True, help="A score at or above this is high.")


class ThresholdType(click.ParamType):
    """0-5, or "calibrated": each setting's threshold from `localjudge calibrate`."""

    name = "0-5|calibrated"

    def convert(self, value, param, ctx):
        if value == "calibrated" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a score 0-5 nor 'calibrated'", param, ctx)
        if not 0 <= number <= 5:
            self.fail(f"{number} is not a score 0-5", param, ctx)
        return number


reading_threshold_option = click.option(
    "--threshold", type=ThresholdType(), default=DEFAULTS.threshold, show_default=True,
    help="A score at or above this is high; 'calibrated' takes each setting's threshold fitted to people's ratings "
         f"(`localjudge calibrate`), and {DEFAULTS.threshold} where none was fitted.")


def open_with_threshold(db_path: str, threshold) -> tuple[Store, int, dict[str, int] | None]:
    """The store, the default threshold and, for 'calibrated', the calibrated threshold of each setting."""
    store = Store(db_path, create=False)
    if threshold != "calibrated":
        return store, threshold, None
    found = calibrated_thresholds(store)
    if not found:
        raise click.ClickException(f"{store.path}: no calibration yet; rate samples (`localjudge rate`) and run "
                                   "`localjudge calibrate` first")
    return store, DEFAULTS.threshold, found


def open_audit(db_path: str, source=None, stages=(), show_progress: bool = True, **given):
    from .pipeline import open_audit as settle  # torch and friends load only for commands that compute

    return settle(db_path, source, stages, show_progress=show_progress, **given)


def stages_json(stages: dict) -> dict:
    """What each stage did, as every command's --json reports it."""
    return {name: {"rows": len(s.ids), "computed": s.computed, "failed": s.failed, "model_loaded": s.model_loaded,
                   **({"errors": s.errors} if s.errors else {}),
                   **({"elsewhere": s.elsewhere} if s.elsewhere else {}),
                   **({"seconds": round(s.seconds, 3), "waited_seconds": round(s.waited_seconds, 3)}
                      if s.seconds else {})}
            for name, s in stages.items()}


def report_stages(stages: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(stages_json(stages), indent=2))
        return
    for stage in stages.values():
        for error in stage.errors:
            click.echo(f"read error: {error['path']}: {error['reason']}", err=True)
    for name, stage in stages.items():
        extra = f", {stage.failed} failed" if stage.failed else ""
        if stage.elsewhere:
            extra += f", {stage.elsewhere} left to another run on this store (judging them, or had judged them)"
        loaded = "" if stage.model_loaded or name == "ingest" else " (nothing to do, model not loaded)"
        click.echo(f"{name:8} {len(stage.ids)} rows, {stage.computed} new{extra}{loaded}")


@click.group()
@click.version_option(__version__, prog_name="localjudge")
def cli():
    """Audit a vision model's saliency maps at dataset scale with a local vision-language judge, offline."""


@cli.command()
@click.argument("images", type=click.Path(exists=True))
@db_option
@vision_options
@cam_options
@judge_options
@threshold_option
@ingest_options
@ground_truth_options
@click.option("--ray", "ray", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the vision and judge stages on a Ray cluster (the `ray` extra): ADDRESS of a running one, "
                   "or none to start one on this machine. The store is written here, by this process only.")
@click.option("--ray-workers", type=click.IntRange(1), help="--ray: actors per stage (default: the cluster's GPUs, "
                                                            "else half its CPUs; 2 for a local cluster).")
@json_option
@user_errors
def run(images, db_path, as_json, threshold, **given):
    """Every stage on IMAGES (a folder, class sub-folders or a CSV manifest): ingest, predict, explain, judge; with
    ground-truth regions given, also how each attention mask agrees with its image's region.

    \b
    Example:
        localjudge run photos/labels.csv --path-column file --label-column imagenet_indices --db audit.db
    """
    def work(audit):
        if audit.config.ray:
            from .pipeline.distributed import run_on_ray

            stages = run_on_ray(audit, images, audit.config.ray, audit.config.ray_workers)
        else:
            from .pipeline.local import run_local

            stages = run_local(audit, images)
        if audit.has_ground_truth_source():
            stages.update(audit.evaluate_regions(stages["ingest"].ids, stages["explain"].ids, manifest=images))
        return stages

    audit, stages = perform("run", images, ("ingest", "predict", "explain", "judge"), work, db_path, as_json,
                            threshold=threshold, **given)
    if not as_json:
        # the matrix of the images this invocation read (not of every image the store holds for this setting, nor
        # of those an identical earlier command read: a run's id is its content, so both share one)
        print_matrices(matrices(audit.store, threshold, **audit.judgment_filters(), images=stages["ingest"].ids))
    warn_about_the_judge(audit)


def warn_about_the_judge(audit) -> None:
    """One line when the judge of this run has no reliability card, or an unusable one."""
    from .queries import card_of, judge_cards

    _, _, decoding = audit.judgment_key_parts()
    card = card_of(judge_cards(audit.store), audit.judge_hash(), json.dumps(decoding, sort_keys=True))
    if card is None:
        click.echo(f"warning: the judge {audit.judge_name()} has not been checked: run `localjudge eval judge-check` "
                   "with the same judge options before reading its matrix", err=True)
    elif card["verdict"] == "unusable":
        click.echo(f"warning: the judge {audit.judge_name()} is UNUSABLE by its reliability card "
                   f"({'; '.join(card['reasons'])}): its matrix says nothing", err=True)


def perform(command, source, stages, work, db_path, as_json, **given):
    """Open the audit, record the run around the work, report what each stage did; the audit and its stages."""
    audit = open_audit(db_path, source, stages, **given)
    with audit.recorded(command, source):
        found = work(audit)
    report_stages(found, as_json)
    return audit, found


@cli.command()
@click.argument("images", type=click.Path(exists=True))
@db_option
@vision_options
@ingest_options
@json_option
@user_errors
def predict(images, db_path, as_json, **given):
    """Ingest IMAGES and store the model's top-5 and full probability vector per image.

    \b
    Example:
        localjudge predict photos/ --db audit.db --model resnet18 --weights my-resnet18.pt
    """
    from .pipeline.local import run_vision

    perform("predict", images, ("ingest", "predict"), lambda a: run_vision(a, images), db_path, as_json, **given)


@cli.command()
@db_option
@vision_options
@cam_options
@json_option
@user_errors
def explain(db_path, as_json, **given):
    """Compute a saliency map for every stored prediction of the model.

    \b
    Example:
        localjudge explain --db audit.db --cam gradcam++
    """
    audit, stages = perform("explain", None, ("explain",), lambda a: {"explain": a.explain(a.stored_predictions())},
                            db_path, as_json, **given)
    if not stages["explain"].ids:
        click.echo(f"No predictions of {audit.card.name} in {db_path} yet: run `localjudge predict` first.", err=True)


@cli.command()
@db_option
@vision_options
@cam_options
@judge_options
@json_option
@user_errors
def judge(db_path, as_json, **given):
    """Judge every stored saliency map of the model and CAM method: with the VLM in --vlm, a local server
    (--judge openai), or without either, the recognizer (EfficientNet-Lite2).

    \b
    Example:
        localjudge judge --db audit.db --vlm /models/Qwen2.5-VL-7B-Instruct --image-mode heatmap
    """
    audit, stages = perform("judge", None, ("judge",), lambda a: {"judge": a.judge(a.stored_saliency_maps())},
                            db_path, as_json, **given)
    if not stages["judge"].ids:
        click.echo(f"No {audit.config.cam} maps of {audit.card.name} in {db_path} yet: run `localjudge explain` "
                   "first.", err=True)


def print_matrices(found: list[dict]) -> None:
    if not found:
        click.echo("No successful judgments yet.")
        return
    for m in found:
        weights = f" ({m['model_weights']})" if m.get("model_weights") else ""
        click.echo(f"\n{m['model']}{weights} / {m['cam']} at {m['target_layer']} judged by {m['judge_model']} "
                   f"({m['image_mode']}, {shaping_text(m)}), score >= {m['threshold']} is high")
        c, p, ci = m["counts"], m["percent"], m["intervals"]

        def cell(q: str) -> str:
            low, high = ci[q]["ci_low"], ci[q]["ci_high"]
            interval = "" if low is None else f" [{low:4.1f}, {high:4.1f}]"
            return f"{c[q]:>6} ({p[q]:5.1f}%{interval})"

        click.echo(f"{'':10}{'high':>28}{'low':>28}")
        click.echo(f"{'correct':10}{cell('CH'):>28}{cell('CL'):>28}")
        click.echo(f"{'wrong':10}{cell('WH'):>28}{cell('WL'):>28}")
        if m["unlabelled"]["high"] or m["unlabelled"]["low"]:
            click.echo(f"{'no label':10}{m['unlabelled']['high']:>28}{m['unlabelled']['low']:>28}")
        average = ci["average_score"]
        interval = "" if average["ci_low"] is None else f" [{average['ci_low']:.2f}, {average['ci_high']:.2f}]"
        click.echo(f"average score {m['average_score']:.2f}{interval} over {m['judgments']} judgments "
                   f"(95 % bootstrap intervals, {m['bootstrap']['resamples']} resamples, seed "
                   f"{m['bootstrap']['seed']})")
        if m.get("judge_caveat"):
            click.echo(f"note: {m['judge_caveat']}")
        if m.get("by_finding"):
            click.echo("per finding (a multilabel model: one map and judgment per finding of an image):")
            for f in m["by_finding"]:
                c = f["counts"]
                click.echo(f"  {f['finding'][:28]:28} {f['judgments']:>5} judged  CH {c['CH']:>4}  CL {c['CL']:>4}  "
                           f"WH {c['WH']:>4}  WL {c['WL']:>4}")
        if m.get("model_weights"):
            click.echo(f"note: {m['model']} ran on {m['model_weights']} (--random-weights): this matrix describes a "
                       "seeded random network, not a trained model")


sample_filter_options = options(
    click.option("--model", help="Only this vision model."),
    click.option("--cam", help="Only this CAM method."),
    click.option("--target-layer", help="Only maps of this target tensor (e.g. relu6(_bn1)), where a store holds "
                                        "maps of one method at several."),
    click.option("--judge-model", help="Only this judge (its directory name)."),
    click.option("--image-mode", type=click.Choice(IMAGE_MODES), help="Only this image mode."),
)
# Which images: those one run read, or those read from one folder or manifest (by any run).
scope_options = options(
    click.option("--run", "run_scope", metavar="ID",
                 help="Only the images this run read (its id, or the start of it: `localjudge db runs`)."),
    click.option("--source", "source_scope", type=click.Path(), metavar="PATH",
                 help="Only the images read from this folder or manifest (by any run over it)."),
)


def scoped(store: Store, filters: dict) -> dict:
    """`filters` with --run and --source resolved against the store (a run's id from its start; a source as runs
    name it)."""
    from .queries import resolve_run, source_forms

    run, source = filters.pop("run_scope", None), filters.pop("source_scope", None)
    return {**filters, **({"run": resolve_run(store, run)} if run else {}),
            **({"source": source_forms(source)} if source else {})}


@cli.command()
@db_option
@reading_threshold_option
@sample_filter_options
@scope_options
@json_option
@user_errors
def matrix(db_path, threshold, as_json, **filters):
    """The 2x2 matrix: prediction correct/wrong x judge score high/low (CH, CL, WH, WL).

    \b
    Example:
        localjudge matrix --db audit.db --threshold calibrated --json
    """
    store, threshold, thresholds = open_with_threshold(db_path, threshold)
    found = matrices(store, threshold, thresholds, **scoped(store, filters))
    if as_json:
        click.echo(json.dumps({"matrices": found}, indent=2))
    else:
        print_matrices(found)


@cli.command()
@db_option
@reading_threshold_option
@click.option("--against", metavar="KEY", help="Also each setting minus this one (a setting_key from `compare --json`, "
                                               "or its start), on the images both judged, with paired bootstrap "
                                               "intervals.")
@scope_options
@json_option
@user_errors
def compare(db_path, threshold, against, as_json, **scope):
    """Every model x CAM x judge setting in the store side by side: CH/CL/WH/WL % and the average score (the shape of
    the paper's Table 4), with 95 % bootstrap intervals.

    \b
    Example:
        localjudge compare --db audit.db --against 3f2a9c1e
    """
    from .queries import judge_agreement, paired_differences

    store, threshold, thresholds = open_with_threshold(db_path, threshold)
    scope = scoped(store, scope)
    found = matrices(store, threshold, thresholds, **scope)
    rows = [{"setting_key": m["setting_key"], "model": m["model"], "cam": m["cam"], "target_layer": m["target_layer"],
             "judge_model": m["judge_model"], "image_mode": m["image_mode"],
             "alpha": m["alpha"], "beta": m["beta"], "prompt_hash": m["prompt_hash"],
             "judge_image_size": m["judge_image_size"], "judgments": m["judgments"], "threshold": m["threshold"],
             **m["percent"], "average_score": m["average_score"], "intervals": m["intervals"],
             "bootstrap": m["bootstrap"], "judge_verdict": m["judge_verdict"]} for m in found]
    paired = paired_differences(store, against, threshold, thresholds, **scope) if against else None
    agreement = judge_agreement(store, **scope)
    if as_json:
        click.echo(json.dumps({"threshold": threshold, "settings": rows, "judge_agreement": agreement,
                               **({"paired": paired} if paired else {})}, indent=2))
        return
    if not rows:
        click.echo("No successful judgments yet.")
        return
    click.echo(f"{'key':9}{'model':22}{'cam':10}{'judge':22}{'mode':9}{'a/b':>10} {'prompt':9}{'size':>5}{'n':>6}"
               f"{'CH%':>7}{'CL%':>7}{'WH%':>7}{'WL%':>7}{'avg [95% CI]':>20}")
    for r in rows:
        low, high = r["intervals"]["average_score"]["ci_low"], r["intervals"]["average_score"]["ci_high"]
        average = "n/a" if r["average_score"] is None else f"{r['average_score']:.2f}" + (
            f" [{low:.2f}, {high:.2f}]" if low is not None else "")
        alpha_beta = "-" if r["alpha"] is None else f"{r['alpha']:g}/{r['beta']:<4g}"
        click.echo(f"{r['setting_key'][:8]:9}{r['model'][:21]:22}{r['cam'][:9]:10}{r['judge_model'][:21]:22}"
                   f"{r['image_mode']:9}{alpha_beta:>10} {(r['prompt_hash'] or '-')[:8]:9}"
                   f"{r['judge_image_size']:>5}{r['judgments']:>6}{r['CH']:>7.1f}{r['CL']:>7.1f}"
                   f"{r['WH']:>7.1f}{r['WL']:>7.1f}{average:>20}")
    if paired:
        click.echo(f"\nminus {paired['against'][:8]} on the images both judged (paired bootstrap 95 % intervals):")
        for d in paired["differences"]:
            parts = []
            for name in ("average_score", "CH", "CL", "WH", "WL"):
                x = d[name]
                if x["difference"] is not None:
                    parts.append(f"{name if name != 'average_score' else 'avg'} {x['difference']:+.2f}"
                                 + (f" [{x['ci_low']:+.2f}, {x['ci_high']:+.2f}]" if x["ci_low"] is not None else ""))
            click.echo(f"  {d['setting_key'][:8]} ({d['images']} images): " + "; ".join(parts))
    if agreement:
        click.echo("\njudges that scored the same views (95 % bootstrap intervals):")
        for a in agreement:
            kappa, icc = a["weighted_kappa"], a["icc"]
            click.echo(f"  {a['first'][:8]} {a['judges'][0]} vs {a['second'][:8]} {a['judges'][1]}: {a['views']} "
                       f"views, weighted kappa {number_with_interval(kappa)}, ICC {number_with_interval(icc)}, "
                       f"Spearman {number_with_interval(a['spearman'], 'r')}")


def number_with_interval(found: dict, key: str = "value") -> str:
    value = found.get(key)
    if value is None:
        return "n/a"
    return f"{value:.2f}" + ("" if found.get("ci_low") is None else f" [{found['ci_low']:.2f}, {found['ci_high']:.2f}]")


@cli.command(name="summary")
@db_option
@json_option
@user_errors
def summary_command(db_path, as_json):
    """What the store holds: images, read errors, predictions and accuracy, CAMs, judgments.

    \b
    Example:
        localjudge summary --db audit.db --json
    """
    result = summary(Store(db_path, create=False))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    accuracy = result["top1_accuracy"]
    click.echo(f"images            {result['images']}")
    click.echo(f"read errors       {result['read_errors']}")
    for error in result["read_error_files"]:
        click.echo(f"  {error['path']}: {error['reason']}")
    click.echo(f"predictions       {result['predictions']} ({result['labelled_predictions']} labelled)")
    click.echo(f"top-1 accuracy    {'n/a' if accuracy is None else f'{accuracy:.3f}'}")
    for model in result["models"]:
        if model.get("findings"):
            calls = model["findings"]
            recall, precision = (interval_text(calls[name]) for name in ("recall", "precision"))
            click.echo(f"  {model['model']}: of {calls['labelled']} labelled findings on {calls['images']} images, "
                       f"{calls['found']} found and {calls['missed']} missed (recall {recall}); {calls['not_labelled']}"
                       f" reported but not labelled (precision {precision})")
        if model["model_weights"]:
            click.echo(f"  {model['model']}: {model['model_weights']} (--random-weights): its results describe nothing")
    click.echo(f"CAMs              {result['cams']} ({result['maps_failed']} degenerate, not judged)")
    for failure in result["map_failures"][:20]:
        click.echo(f"  {failure['path']} ({failure['cam']} at {failure['target_layer']}): {failure['reason']}")
    click.echo(f"judgments         {result['judgments_succeeded']} succeeded, {result['judgments_failed']} failed")
    for card in result["judge_cards"]:
        click.echo(f"  judge {card['judge_model']}: {card['verdict']} (reliability card on {card['sample']} maps)")


@cli.command(name="maps")
@db_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the .npy files and index.csv.")
@user_errors
def maps_command(db_path, out_dir):
    """Write every stored map as float32 .npy at the model's input resolution, with DIR/index.csv.

    \b
    Example:
        localjudge maps --db audit.db --out maps/
    """
    from .export import export_maps

    count = export_maps(Store(db_path, create=False), Path(out_dir))
    click.echo(f"wrote {count} maps and {Path(out_dir) / 'index.csv'}")


@cli.group(name="eval")
def evaluate():
    """Evaluate saliency and judgments against ground truth and baselines."""


@evaluate.command(name="regions")
@db_option
@vision_options
@cam_options
@ground_truth_options
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False),
              help="The CSV manifest the images came from (for --mask-column).")
@click.option("--path-column", default=DEFAULTS.path_column, show_default=True,
              help="The manifest's column of image paths (for --mask-column).")
@click.option("--beta", type=float, default=DEFAULTS.beta, show_default=True,
              help="Attention mask threshold: map >= beta is attended.")
@click.option("--artifact-regions", "artifact_specs", multiple=True, metavar="SPEC",
              help="Where a shortcut may sit: border:PX or corner:PX (pixels of the model's view), or a JSON file "
                   "{\"regions\": {\"name\": [x0, y0, x1, y1]}} of boxes in fractions of the image; the share of "
                   "each map's mass there, beside the region's area (a flat map's share). Repeatable.")
@json_option
@user_errors
def eval_regions(db_path, manifest, artifact_specs, as_json, **given):
    """IoU, Dice, pixel accuracy and F1 of each stored map's attention mask (map >= beta) against its image's
    ground-truth region, stored; prints their means. With --artifact-regions, the share of each map's mass in each
    artifact region, per class, and the images that put most there.

    \b
    Example:
        localjudge eval regions --db audit.db --mask-column mask --manifest labels.csv --path-column file
        localjudge eval regions --db audit.db --artifact-regions border:16 --artifact-regions textbox.json
    """
    from .analysis.artifacts import ArtifactSpecError, parse_specs
    from .queries import artifact_table

    try:
        artifact_regions = parse_specs(list(artifact_specs))
    except ArtifactSpecError as error:
        raise click.BadParameter(str(error), param_hint="--artifact-regions") from error
    audit = open_audit(db_path, manifest, ("regions",), show_progress=not as_json, **given)
    if not audit.has_ground_truth_source() and not artifact_regions:
        raise click.UsageError("give the regions: --masks DIR, --mask-column NAME --manifest CSV, or --boxes FILE; "
                               "or --artifact-regions SPEC")
    means = table = None
    stages = {}
    # the command's own options are recorded with the run (the config holds the shared ones)
    with audit.recorded(" ".join(["eval regions", *(f"--artifact-regions {spec}" for spec in artifact_specs)]),
                        manifest):
        maps = audit.stored_saliency_maps()
        if audit.has_ground_truth_source():
            images = [row["sha256"] for row in audit.store.images()]
            stages = audit.evaluate_regions(images, maps, manifest=manifest)
        if artifact_regions:
            stages["artifacts"] = audit.score_artifacts(maps, artifact_regions)
    artifacts = artifact_table(audit.store, stages["artifacts"].ids) if artifact_regions else []
    if "regions" in stages:
        means = region_means(audit.store, stages["regions"].ids)
        table = audit.localisation(maps)
    if as_json:
        click.echo(json.dumps({"stages": stages_json(stages), "means": means, "localisation": table,
                               "artifacts": artifacts}, indent=2))
        return
    if artifacts:
        print_artifacts(artifacts)
    if means is None:
        return
    for stage in stages.values():
        for error in stage.errors:
            click.echo(f"ground truth error: {error['path']}: {error['reason']}", err=True)
    click.echo(f"{len(stages['truth'].ids)} ground-truth regions, {means['maps']} maps scored at beta={given['beta']}")
    for metric in ("iou", "dice", "pixel_accuracy", "f1"):
        click.echo(f"  mean {metric:15} {mean_text(means, metric)}")
    if means["by_finding"]:
        click.echo("per finding (each map against its finding's own region):")
        for finding in means["by_finding"]:
            click.echo(f"  {finding['finding']:20} {finding['maps']:5} maps  "
                       + "  ".join(f"{metric} {mean_text(finding, metric)}" for metric in ("iou", "dice", "f1")))
    print_localisation(table)


def print_artifacts(artifacts: list[dict]) -> None:
    """Each artifact region: the maps' mean mass share there beside its area, the classes and images putting most."""
    def figure(found: dict) -> str:
        interval = "" if found["ci_low"] is None else f" [{found['ci_low']:.3f}, {found['ci_high']:.3f}]"
        return f"{found['mean']:.3f}{interval}"

    for region in artifacts:
        click.echo(f"artifact region {region['region']} ({region['maps']} maps): mass share "
                   f"{figure(region['mass_share'])}, area {figure(region['area_fraction'])} (a flat map's share), "
                   f"excess {figure(region['excess'])}")
        classes = ", ".join(f"{c['class']} {c['mass_share']:.3f} (n={c['maps']})" for c in region["by_class"][:5])
        click.echo(f"  classes putting most mass there: {classes}")
        for image in region["top_images"][:5]:
            click.echo(f"  {image['mass_share']:.3f}  {image['class']}  {image['path']}")


def print_localisation(table: dict) -> None:
    """The localisation suite: each metric of the maps beside its baselines on the same regions."""
    columns = ("maps", "centre point", "centred gaussian", "uniform")
    boot = table["maps"]["bootstrap"]
    click.echo(f"\nlocalisation of {table['maps']['images']} maps against their regions (mean region area "
               f"{(table['mean_region_area'] or 0):.1%}; 95 % bootstrap intervals, {boot['resamples']} resamples, "
               f"seed {boot['seed']})")
    click.echo(f"{'metric':34}" + "".join(f"{c:>24}" for c in columns))

    def cell(found) -> str:
        if isinstance(found, dict) and "mean" in found:
            if found["mean"] is None:
                return "n/a"
            return f"{found['mean']:.3f}" + ("" if found.get("ci_low") is None else
                                              f" [{found['ci_low']:.2f},{found['ci_high']:.2f}]")
        return "n/a" if found is None else f"{found:.3f}"

    rows = [(f"pointing game ({table['pointing_tolerance']} px)", lambda t: t["pointing_game"]),
            ("energy pointing game (mass share)", lambda t: t["energy_pointing_game"]),
            ("relevance rank accuracy", lambda t: t["rank_accuracy"]),
            ("PxAP", lambda t: t.get("pxap")),  # a pooled figure, with its bootstrap interval
            (f"IoU at beta={table['beta']:g}", lambda t: t.get("at_beta", {}).get("iou")),
            (f"Dice at beta={table['beta']:g}", lambda t: t.get("at_beta", {}).get("dice")),
            ("IoU at the best threshold", lambda t: t.get("at_best_threshold", {}).get("iou")),
            ("Dice at the best threshold", lambda t: t.get("at_best_threshold", {}).get("dice"))]
    for label, pick in rows:
        click.echo(f"{label:34}" + "".join(f"{cell(pick(table[c])):>24}" for c in columns))


@evaluate.command(name="faithfulness")
@db_option
@vision_options
@cam_options
@click.option("--steps", "faithfulness_steps", type=click.IntRange(1, 256), default=DEFAULTS.faithfulness_steps,
              show_default=True, help="Intervals of the deletion and insertion curves (as torchcam's steps; at most "
                                      "256, which bounds the perturbed inputs held per image).")
@click.option("--baseline", "faithfulness_baseline", type=click.Choice(FAITHFULNESS_BASELINES),
              default=DEFAULTS.faithfulness_baseline, show_default=True,
              help="What removed positions become: zeros of the normalised input (the mean colour) or black.")
@json_option
@user_errors
def eval_faithfulness(db_path, as_json, **given):
    """Deletion and insertion AUC, AOPC (most relevant first), Average Drop and Increase in Confidence of every
    stored map of the model and CAM method, on the vision backend; stored, means printed.

    \b
    Example:
        localjudge eval faithfulness --db audit.db --steps 20 --baseline zeros
    """
    audit = open_audit(db_path, None, ("faithfulness",), show_progress=not as_json, **given)
    with audit.recorded("eval faithfulness", None):
        stage = audit.faithfulness(audit.stored_saliency_maps())
    means = faithfulness_means(audit.store, stage.ids)
    if as_json:
        click.echo(json.dumps({**stages_json({"faithfulness": stage}), "means": means}, indent=2))
        return
    click.echo(f"{means['maps']} maps, {given['faithfulness_steps']} steps, {given['faithfulness_baseline']} baseline")
    for metric in means["intervals"]:
        click.echo(f"  mean {metric:24} {mean_text(means, metric)}")


def mean_text(means: dict, metric: str) -> str:
    """A mean with its bootstrap 95 % interval, for text output."""
    value, interval = means[metric], means["intervals"][metric]
    if value is None:
        return "n/a"
    return f"{value:.4f}" + ("" if interval["ci_low"] is None else
                             f" [{interval['ci_low']:.4f}, {interval['ci_high']:.4f}]")


@evaluate.command(name="judge-check")
@db_option
@vision_options
@cam_options
@judge_options
@click.option("--sample", type=click.IntRange(1), default=JUDGE_CHECK_SAMPLE, show_default=True,
              help="Stored maps to draw the canaries on (a seeded sample).")
@click.option("--seed", type=int, default=JUDGE_CHECK_SEED, show_default=True,
              help="Seeds the sample and the absent classes.")
@json_option
@user_errors
def eval_judge_check(db_path, sample, seed, as_json, **given):
    """Known-answer canaries for the judge on a sample of the stored maps (blank images, the full view of correct
    predictions, an absent class, the inverse mask, paraphrased prompts, batch invariance, test-retest at a
    temperature), and its reliability card: each canary's pass rate with an interval and a verdict (usable,
    doubtful, unusable), stored and shown beside every matrix that judge made.

    \b
    Example:
        localjudge eval judge-check --db audit.db --vlm /models/Qwen2.5-VL-7B-Instruct --sample 50
    """
    from .pipeline.judge_check import check_judge

    audit = open_audit(db_path, None, ("judge",), show_progress=not as_json, **given)
    with audit.recorded("eval judge-check", None):
        card = check_judge(audit, sample, seed)
    if as_json:
        click.echo(json.dumps(card, indent=2))
        return
    click.echo(f"judge {card['judge_model']} on {card['sample']} maps of {card['model']} / {card['cam']} "
               f"(seed {card['seed']}; a score >= {card['threshold']} is high)")
    for name, found in card["canaries"].items():
        rate = "n/a" if found["rate"] is None else f"{found['rate']:.2f}"
        interval = "" if found["ci_low"] is None else f" [{found['ci_low']:.2f}, {found['ci_high']:.2f}]"
        click.echo(f"  {name:18} pass rate {rate}{interval} over {found['maps']} maps")
    inverse = card["inverse_mask"]
    if inverse["masked_mean"] is not None and inverse["inverse_mean"] is not None:
        click.echo(f"  inverse mask       mean score {inverse['inverse_mean']:.2f} (the masked image: "
                   f"{inverse['masked_mean']:.2f})")
    if card["test_retest"]:
        click.echo(f"  test-retest        mean spread {card['test_retest']['mean_std']:.2f}")
    click.echo(f"verdict: {card['verdict'].upper()}" + (f" ({'; '.join(card['reasons'])})" if card["reasons"] else ""))


@evaluate.command(name="sanity")
@db_option
@vision_options
@click.option("--cam", "cams", default=",".join(SANITY_METHODS), show_default=True,
              help="CAM methods to check, comma-separated.")
@click.option("--images", type=click.IntRange(1), default=SANITY_IMAGES, show_default=True,
              help="The first N stored predictions of the model (by image path).")
@click.option("--seed", type=int, default=SANITY_SEED, show_default=True, help="Seeds the random layers and classes.")
@json_option
@user_errors
def eval_sanity(db_path, cams, images, seed, as_json, **given):
    """Adebayo et al.'s sanity checks of each CAM method on the model's stored predictions: the layers after the
    target tensor randomised, cascading from the head, and a random class explained instead of the predicted one.
    A method whose maps keep a median |rank correlation| of at least 0.5 (analysis.sanity.INSENSITIVE) with the
    originals once every layer after the target is random does not depend on what the model learnt: it is flagged
    (here and in the report).

    \b
    Example:
        localjudge eval sanity --db audit.db --cam gradcam,eigencam --images 20
    """
    methods = [c.strip() for c in cams.split(",") if c.strip()]
    unknown = [m for m in methods if m not in cam_methods()]
    if unknown:
        raise click.BadParameter(f"unknown CAM method {', '.join(unknown)}; use {', '.join(cam_methods())}",
                                 param_hint="--cam")
    audit = open_audit(db_path, None, ("sanity",), show_progress=not as_json, **given)
    with audit.recorded("eval sanity", None):
        found = audit.sanity(audit.sanity_predictions()[:images], methods, seed)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"{found['model']} at {found['target']}, {found['images']} images, seed {found['seed']}; randomised "
               f"after the target: {', '.join(found['layers_after_target']) or 'nothing (no layer after it)'}")
    click.echo(f"{'method':12}{'random logit |rho| / SSIM':>28}{'all randomised |rho| [95%] / SSIM':>38}"
               f"{'two images |rho|':>18}  verdict")
    for method, result in found["methods"].items():
        logit = result["random_logit"]
        last = result["cascade"][-1] if result["cascade"] else None
        randomised = "n/a" if last is None else (
            f"{last['median_rank_correlation']:.2f}"
            + ("" if last["rank_ci_low"] is None else f" [{last['rank_ci_low']:.2f}, {last['rank_ci_high']:.2f}]")
            + f" / {last['median_ssim']:.2f}")
        floor = result["unrelated_images"]["median_rank_correlation"]
        verdict = "FLAGGED: maps do not depend on the model" if result["flagged"] else "ok"
        click.echo(f"{method:12}{logit['median_rank_correlation']:>19.2f} / {logit['median_ssim']:.2f}"
                   f"{randomised:>38}{'n/a' if floor is None else f'{floor:.2f}':>18}  {verdict}")


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise click.BadParameter(f"{text!r}: expected numbers separated by commas") from error


def style_list(text: str) -> list[str]:
    styles = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in styles if v not in PROMPT_STYLES]
    if unknown:
        raise click.BadParameter(f"unknown prompt style {', '.join(unknown)}; use {', '.join(PROMPT_STYLES)}")
    return styles


@evaluate.command(name="sweep")
@db_option
@vision_options
@cam_options
@judge_backend_options
@click.option("--alpha", "alphas", default=str(DEFAULTS.alpha), show_default=True, callback=lambda c, p, v:
              float_list(v), help="Mask steepnesses, comma-separated.")
@click.option("--beta", "betas", default=str(DEFAULTS.beta), show_default=True, callback=lambda c, p, v:
              float_list(v), help="Mask thresholds, comma-separated.")
@click.option("--prompt-style", "styles", default=DEFAULTS.prompt_style, show_default=True,
              callback=lambda c, p, v: style_list(v), help="Prompt styles, comma-separated "
                                                           f"({', '.join(PROMPT_STYLES)}).")
@threshold_option
@json_option
@user_errors
def eval_sweep(db_path, alphas, betas, styles, threshold, as_json, **given):
    """Judge every stored map under each alpha x beta x prompt style (what is judged already is reused) and print
    the matrix and average score of each: the shape of the paper's Tables 2 (alpha, beta) and 3 (prompt styles).

    \b
    Example:
        localjudge eval sweep --db audit.db --vlm /models/gemma-3-12b-it --alpha 15,25 --beta 0.4,0.6
    """
    results = []
    loader = open_audit(db_path, None, ("judge",), show_progress=False, **given)
    judge = loader.judge_model()  # loaded once, handed to every setting's audit
    loader.store.close()
    for style in styles:
        for alpha in alphas:
            for beta in betas:
                audit = open_audit(db_path, None, ("judge",), show_progress=not as_json, alpha=alpha, beta=beta,
                                   prompt_style=style, **given)
                audit.use_judge(judge)
                with audit.recorded("eval sweep", None):
                    stage = audit.judge(audit.stored_saliency_maps())
                found = matrices(audit.store, threshold, **audit.judgment_filters())
                matrix = found[0] if found else None
                results.append({"alpha": alpha, "beta": beta, "prompt_style": style, "judged_now": stage.computed,
                                "failed_now": stage.failed, "judgments": matrix["judgments"] if matrix else 0,
                                "percent": matrix["percent"] if matrix else None,
                                "average_score": matrix["average_score"] if matrix else None,
                                "intervals": matrix["intervals"] if matrix else None,
                                "bootstrap": matrix["bootstrap"] if matrix else None})
                audit.store.close()
    judge.close(cancel=False)
    if as_json:
        click.echo(json.dumps({"threshold": threshold, "settings": results}, indent=2))
        return
    click.echo(f"{'style':10}{'alpha':>7}{'beta':>6}{'n':>6}{'CH%':>7}{'CL%':>7}{'WH%':>7}{'WL%':>7}{'avg':>6}")
    for r in results:
        p = r["percent"] or {q: float("nan") for q in ("CH", "CL", "WH", "WL")}
        average = "n/a" if r["average_score"] is None else f"{r['average_score']:.2f}"
        click.echo(f"{r['prompt_style']:10}{r['alpha']:>7g}{r['beta']:>6g}{r['judgments']:>6}{p['CH']:>7.1f}"
                   f"{p['CL']:>7.1f}{p['WH']:>7.1f}{p['WL']:>7.1f}{average:>6}")


@evaluate.command(name="canary")
@db_option
@vision_options
@cam_options
@click.option("--artifact", type=click.Choice(("tag", "text", "border")), default="tag", show_default=True,
              help="What is pasted into copies of the images: a coloured tag, a burned-in text box or a frame.")
@click.option("--size", type=click.FloatRange(0.02, 0.5), default=CANARY_DEFAULTS["size"], show_default=True,
              help="The artifact's size as a fraction of the model's view (a tag's side; a frame's width x 4).")
@click.option("--images", "sample", type=click.IntRange(1), default=CANARY_DEFAULTS["images"], show_default=True,
              help="Stored predictions to test (a seeded sample).")
@click.option("--seed", type=int, default=CANARY_DEFAULTS["seed"], show_default=True,
              help="Seeds the sample and the artifact's places.")
@click.option("--judge-quadrants", is_flag=True,
              help="Also ask the judge about each image's view before and after the artifact (each masked by its "
                   "own map) and report the quadrant changes.")
@judge_options
@json_option
@user_errors
def eval_canary(db_path, artifact, size, sample, seed, judge_quadrants, as_json, **given):
    """The planted-shortcut canary: an artifact pasted into copies of a sample of images; per image the change in
    the predicted class's probability, whether the prediction flips, and the map mass moved onto the artifact; the
    class the artifact pulls toward. A model that ignores the artifact shows about 0 on all of them.

    \b
    Example:
        localjudge eval canary --db audit.db --artifact tag --images 100
    """
    from .pipeline.canary import run_canary

    audit = open_audit(db_path, None, ("canary",), show_progress=not as_json, **given)
    with audit.recorded(f"eval canary --artifact {artifact} --size {size:g} --images {sample} --seed {seed}"
                        + (" --judge-quadrants" if judge_quadrants else ""), None):
        found = run_canary(audit, artifact, sample, size, seed, judge=judge_quadrants)
    stage = found.pop("stage")
    if as_json:
        click.echo(json.dumps({"stage": stages_json({"canary": stage})["canary"], **found}, indent=2))
        return
    for error in stage.errors:
        click.echo(f"unreadable: {error['path']}: {error['reason']}", err=True)
    summary = found["summary"]
    if summary is None:
        click.echo("no image could be tested")
        return

    def figure(found: dict) -> str:
        if found["mean"] is None:
            return "n/a"
        interval = "" if found["ci_low"] is None else f" [{found['ci_low']:.3f}, {found['ci_high']:.3f}]"
        return f"{found['mean']:.3f}{interval}"

    click.echo(f"canary: a {artifact} of {size:g} of the view pasted into {summary['images']} images (seed {seed})")
    click.echo(f"  change in the predicted class's probability  {figure(summary['probability_change'])}")
    click.echo(f"  predictions that flip                         {figure(summary['flip_rate'])}")
    click.echo(f"  pull toward {summary['pull']['class']}: its probability rises by {figure(summary['pull'])}")
    click.echo(f"  map mass on the artifact {figure(summary['mass_on_artifact'])}; on the same pixels before "
               f"{figure(summary['mass_there_before'])}; moved {figure(summary['mass_moved'])}; area "
               f"{figure(summary['area'])}")
    click.echo(f"  {'FLAGGED as a shortcut' if summary['flagged'] else 'not flagged'} ({summary['flag_rule']})")
    quadrants = found["quadrants"]
    if quadrants is not None:
        changes = ", ".join(f"{move} {count}" for move, count in quadrants["transitions"].items()) or "none"
        click.echo(f"  quadrant changes (the judge on each view, threshold {quadrants['threshold']}, "
                   f"{quadrants['images']} images labelled and judged): {figure(quadrants['changed'])} changed "
                   f"({changes}); before {quadrants['before']}, after {quadrants['after']}")
    for image in found["top_images"][:5]:
        click.echo(f"  {image['mass_on_artifact'] or 0:.3f}  {image['original']} -> {image['tagged']}  {image['path']}")


@evaluate.command(name="clusters")
@db_option
@click.option("--model", help="Only maps of this vision model.")
@click.option("--cam", help="Only maps of this CAM method.")
@click.option("--target-layer", help="Only maps of this target tensor.")
@click.option("--grid", type=click.IntRange(4, 64), default=CLUSTER_DEFAULTS["grid"], show_default=True,
              help="Maps are compared on a grid x grid downsampling.")
@click.option("--max-clusters", type=click.IntRange(2, 32), default=CLUSTER_DEFAULTS["max_clusters"], show_default=True,
              help="The eigengap chooses at most this many clusters per class.")
@click.option("--neighbours", type=click.IntRange(2), default=CLUSTER_DEFAULTS["neighbours"], show_default=True,
              help="Each map is linked to this many nearest maps (SpRAy's k-nearest-neighbour affinity).")
@click.option("--groups", "groups_file", type=click.Path(exists=True, dir_okay=False),
              help="Cluster per super-class instead of per class: JSON {\"group\": [class indices]} (as eval "
                   "classes --groups).")
@click.option("--min-maps", type=click.IntRange(3), default=CLUSTER_DEFAULTS["min_maps"], show_default=True,
              help="A class with fewer maps is not clustered.")
@click.option("--max-maps", type=click.IntRange(10), default=CLUSTER_DEFAULTS["max_maps"], show_default=True,
              help="A class with more maps is clustered on a seeded sample of this many (the affinity is n x n).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the spectral clustering and the sample.")
@click.option("--beta", type=float, default=DEFAULTS.beta, show_default=True, help="Region mass at this beta.")
@json_option
@user_errors
def eval_clusters(db_path, model, cam, target_layer, grid, max_clusters, neighbours, groups_file, min_maps, max_maps,
                  seed, beta, as_json):
    """Cluster each class's maps (SpRAy: maps on a small grid, a nearest-neighbour graph, spectral clustering, k by
    the eigengap); per cluster
    its size, mean judge score, accuracy, region mass and border share, exemplars, and whether it is a shortcut
    candidate (a minority of the class's maps that look elsewhere than its main cluster). Stored.

    \b
    Example:
        localjudge eval clusters --db audit.db --json
    """
    from .pipeline.clusters import cluster_maps

    store = Store(db_path, create=False)
    groups = read_groups(groups_file) if groups_file else None
    found = cluster_maps(store, grid, max_clusters, min_maps, seed, beta, max_maps=max_maps, neighbours=neighbours,
                         groups=groups, groups_file=str(Path(groups_file).resolve()) if groups_file else None,
                         model=model, cam=cam, target_layer=target_layer)
    if as_json:
        click.echo(json.dumps({"classes": found}, indent=2))
        return
    if not found:
        click.echo(f"no class has {min_maps} or more maps")

    def number(value, digits=2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    for entry in found:
        click.echo(f"\n{entry['class']} ({entry['model']} {entry['cam']}@{entry['target_layer']}): "
                   f"{entry['maps']} maps, "
                   f"{len(entry['clusters'])} clusters")
        for c in entry["clusters"]:
            flag = "  SHORTCUT CANDIDATE: " + "; ".join(c["reasons"]) if c["shortcut_candidate"] else ""
            click.echo(f"  #{c['cluster']} {c['size']:4} maps  score {number(c['score'])}  accuracy "
                       f"{number(c['accuracy'])}  region mass {number(c['mass_in_region'])}  border "
                       f"{number(c['border_share'])}{flag}")
            for path in c["exemplars"]:
                click.echo(f"      {path}")


@evaluate.command(name="background")
@db_option
@vision_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds which background each object gets.")
@json_option
@user_errors
def eval_background(db_path, seed, as_json, **given):
    """Background reliance (the ImageNet-9 test) on the images with ground-truth regions: accuracy on the original,
    only the object, no object, the object on a background of its own class and of another class, and the
    background gap (mixed same minus mixed rand), with intervals, overall and per class. Stored.

    \b
    Example:
        localjudge eval background --db audit.db
    """
    from .pipeline.background import VARIANTS, run_background

    audit = open_audit(db_path, None, ("background",), show_progress=not as_json, **given)
    with audit.recorded(f"eval background --seed {seed}", None):
        found = run_background(audit, seed)
    stage = found.pop("stage")
    if as_json:
        click.echo(json.dumps({"stage": stages_json({"background": stage})["background"], **found}, indent=2))
        return
    for error in stage.errors:
        click.echo(f"unreadable: {error['path']}: {error['reason']}", err=True)

    def line(name: str, figures: dict) -> str:
        cells = []
        for variant in VARIANTS:
            found = figures[variant]
            cells.append("n/a" if found["accuracy"] is None else f"{found['accuracy']:.2f}")
        gap = figures["bg_gap"]
        gap_text = "n/a" if gap["difference"] is None else (
            f"{gap['difference']:+.2f}" + ("" if gap["ci_low"] is None else
                                           f" [{gap['ci_low']:+.2f}, {gap['ci_high']:+.2f}]"))
        return f"{name[:24]:25}{figures['images']:5}" + "".join(f"{c:>13}" for c in cells) + f"  {gap_text}"

    click.echo(f"{'class':25}{'n':>5}" + "".join(f"{v:>13}" for v in VARIANTS) + "  BG-gap (same - rand)")
    click.echo(line("all", found["overall"]))
    overall = found["overall"]
    for variant in VARIANTS:
        v = overall[variant]
        if v["accuracy"] is not None and v["ci_low"] is not None:
            click.echo(f"  {variant:12} {v['accuracy']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}] (n={v['n']})")
    if overall["majority_baseline"] is not None:
        click.echo(f"  trivial baseline (always the commonest labelled class): {overall['majority_baseline']:.3f}")
    for row in found["by_class"]:
        click.echo(line(row["class"], row))


@evaluate.command(name="classes")
@db_option
@reading_threshold_option
@sample_filter_options
@click.option("--by", type=click.Choice(("predicted", "labelled")), default="predicted", show_default=True,
              help="Group each judgment by the class its map explains, or by the image's labelled class.")
@click.option("--groups", "groups_file", type=click.Path(exists=True, dir_okay=False),
              help="Group classes into super-classes: JSON {\"group\": [class indices]} (a class in no group is "
                   "\"other\"; a class in two groups is refused).")
@click.option("--beta", type=float, default=None,
              help="Attended area and region mass at this beta (default: each judge setting's own).")
@click.option("--min-n", type=click.IntRange(1), default=None,
              help="Placed judgments a class needs to be ranked among the classes to inspect (default 5).")
@click.option("--top", type=click.IntRange(1), default=25, show_default=True, help="Classes shown per setting (text).")
@json_option
@user_errors
def eval_classes(db_path, threshold, by, groups_file, beta, min_n, top, as_json, **filters):
    """Per-class attention statistics (n, accuracy, CH/CL/WH/WL shares, mean score, region mass, map entropy,
    attended area, each with its interval) and the classes to inspect first: ranked by how surely their judgments
    disagree with their correctness (CL: right, attention low; WH: wrong, attention high).

    \b
    Example:
        localjudge eval classes --db audit.db --by labelled --json
    """
    from .queries import class_statistics

    groups = read_groups(groups_file) if groups_file else None
    store, threshold, thresholds = open_with_threshold(db_path, threshold)
    found = class_statistics(store, threshold, by, beta, groups, min_n, thresholds, **filters)
    if as_json:
        click.echo(json.dumps({"settings": found}, indent=2))
        return
    if not found:
        click.echo("no successful judgments match")
    for setting in found:
        base = setting["baseline"]
        click.echo(f"\n{describe_setting(setting)}  (by {setting['by']} class, threshold {setting['threshold']})")
        click.echo(f"{'class':28}{'n':>5}{'acc':>7}{'CH%':>6}{'CL%':>6}{'WH%':>6}{'WL%':>6}{'score':>7}"
                   f"{'mass':>7}{'entropy':>8}{'area':>6}")
        for row in setting["groups"][:top]:
            def pct(q):
                value = row["percent"][q]["value"]
                return f"{'':>6}" if value is None else f"{value:>6.0f}"

            def num(key, width=7, digits=2):
                value = row[key]["mean"]
                return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

            click.echo(f"{str(row['group'])[:27]:28}{row['n']:>5}{num('accuracy')}"
                       + "".join(pct(q) for q in ("CH", "CL", "WH", "WL"))
                       + f"{num('average_score')}{num('mass_in_region')}{num('entropy', 8, digits=3)}"
                       + num("attended_area", 6))
        if len(setting["groups"]) > top:
            click.echo(f"... {len(setting['groups']) - top} more classes (--top, --json)")
        overall = base["disagreement"]
        click.echo(f"classes to inspect ({setting['rule']}); the dataset's CL+WH share: "
                   f"{fraction_text(overall)}")
        for rank, row in enumerate(setting["inspect"][:10], 1):
            flag = "  above the dataset's" if row["above_baseline"] else ""
            click.echo(f"  {rank:2}. {row['group']}: {fraction_text(row['disagreement'])}{flag}")


def interval_text(found: dict) -> str:
    """A value with its bootstrap interval ({"value", "ci_low", "ci_high"})."""
    if found["value"] is None:
        return "n/a"
    return f"{found['value']:.3f}" + ("" if found["ci_low"] is None else
                                       f" [{found['ci_low']:.3f}, {found['ci_high']:.3f}]")


def fraction_text(found: dict) -> str:
    if found["share"] is None:
        return "n/a"
    interval = "" if found["ci_low"] is None else f" [{found['ci_low']:.2f}, {found['ci_high']:.2f}]"
    return f"{found['share']:.2f}{interval}"


def read_groups(path: str) -> dict[int, str]:
    """A super-class file: {"group": [class indices]}, as class index -> group (a class in two groups: refused)."""
    try:
        document = json.loads(Path(path).read_text())
        groups = document.get("groups", document)
        found: dict[int, str] = {}
        for name, members in groups.items():
            for index in members:
                if int(index) in found:
                    raise ValueError(f"class {index} is in {found[int(index)]!r} and {name!r}")
                found[int(index)] = str(name)
        return found
    except (OSError, ValueError, AttributeError, TypeError) as error:
        raise click.BadParameter(f"{path}: not a groups file ({error})", param_hint="--groups") from error


@evaluate.command(name="correlate")
@db_option
@click.option("--target", help="The signal the others are correlated with (default: the judge score).")
@click.option("--model", help="Only maps of this vision model.")
@click.option("--cam", help="Only maps of this CAM method.")
@click.option("--beta", type=float, default=DEFAULTS.beta, show_default=True, help="Region scores at this beta.")
@click.option("--steps", type=click.IntRange(1), default=DEFAULTS.faithfulness_steps, show_default=True,
              help="Faithfulness computed with this many steps.")
@click.option("--baseline", type=click.Choice(FAITHFULNESS_BASELINES), default=DEFAULTS.faithfulness_baseline,
              show_default=True, help="Faithfulness computed with this baseline.")
@json_option
@user_errors
def eval_correlate(db_path, target, model, cam, beta, steps, baseline, as_json):
    """Pearson and Spearman correlations, with 95 % intervals and n, between the judge score and every other
    per-map signal in the store (confidence, IoU, Dice, pixel accuracy, F1, the share of the map's mass inside the
    region, deletion, insertion, Average Drop, AOPC): the shape of the paper's Table 1.

    \b
    Example:
        localjudge eval correlate --db audit.db --json
    """
    from .analysis.correlation import correlation_table

    signals = map_signals(Store(db_path, create=False), beta, steps, baseline, model, cam)
    if target is None:
        target = next((name for name in signals if name.startswith("score")), None)
        if target is None:
            raise click.ClickException(f"{db_path}: no judge scores yet; choose another --target from: "
                                       f"{', '.join(signals) or 'none'}")
    table = correlation_table(signals, target)
    if as_json:
        click.echo(json.dumps({"target": target, "signals": list(signals), "correlations": table}, indent=2))
        return
    click.echo(f"correlation with {target}")
    click.echo(f"{'signal':24}{'n':>5}   {'Pearson r [Fisher 95%] [bootstrap]':44}"
               f"{'Spearman rho [Fisher 95%] [bootstrap]':44}")
    for row in table:
        cells = [("n/a" if c["r"] is None else f"{c['r']:+.3f}")
                 + ("" if c["low"] is None else f" [{c['low']:+.2f}, {c['high']:+.2f}]")
                 + ("" if c["ci_low"] is None else f" [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]")
                 for c in (row["pearson"], row["spearman"])]
        click.echo(f"{row['signal']:24}{row['pearson']['n']:>5}   {cells[0]:44}{cells[1]:44}")


@evaluate.command(name="label-issues")
@db_option
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with path and label_ok (1 if the image's given label is right).")
@threshold_option
@click.option("--model", default=DEFAULTS.model, show_default=True, help="The vision model whose labels are checked.")
@click.option("--judge-model", help="Judgments of this judge (needed when the store holds several).")
@click.option("--image-mode", type=click.Choice(IMAGE_MODES), help="Judgments of this image mode.")
@click.option("--cam", help="Judgments of maps of this CAM method.")
@click.option("--target-layer", help="Judgments of maps of this target tensor.")
@click.option("--setting", help="Judgments of the judge setting whose key starts with this (as compare lists them).")
@click.option("--probs-model", help="cleanlab reads this model's stored probabilities (default: --model's). "
                                    "cleanlab expects out-of-sample probabilities: where the labels are --model's own "
                                    "predictions, its probabilities can find nothing.")
@click.option("--probs-model-hash", metavar="HASH", help="--probs-model's predictions of this model hash (or its "
                                                         "start), where the store holds several versions of it.")
@json_option
@user_errors
def eval_label_issues(db_path, truth, threshold, model, judge_model, image_mode, cam, target_layer, setting,
                      probs_model, probs_model_hash, as_json):
    """Suspected label errors by the judge (WH, and CL where labels are the model's own predictions) against
    cleanlab's filters (CL, PNR, LSC, LNM) on the same probabilities: accuracy, precision, recall, F1 per method
    (the label is right = positive), the shape of the paper's Tables 5-6.

    \b
    Example:
        localjudge eval label-issues --db audit.db --truth truth.csv --probs-model efficientnet-lite2
    """
    table = label_issue_table(Store(db_path, create=False), Path(truth), threshold, model, judge_model, image_mode,
                              cam, probs_model, target_layer, setting, probs_model_hash)
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    click.echo(f"{table['samples']} samples, {table['labels_wrong']} with a wrong label; judge "
               f"{table['judge']['judge_model']} ({table['judge']['image_mode']}), score >= {threshold} is high; "
               f"cleanlab reads {table['cleanlab_probabilities']}'s probabilities")
    click.echo(f"{'method':44}{'acc':>7}{'prec':>7}{'recall':>8}{'F1 [95% bootstrap]':>22}{'flagged':>9}"
               f"   F1 - keep-all [95%]")
    for m in table["methods"]:
        f1 = f"{m['f1']:.3f}" + ("" if m["f1_ci_low"] is None else f" [{m['f1_ci_low']:.2f}, {m['f1_ci_high']:.2f}]")
        gap = f"{m['f1_minus_keep_all']:+.3f}" + ("" if m["f1_minus_keep_all_ci_low"] is None else
                                                  f" [{m['f1_minus_keep_all_ci_low']:+.2f}, "
                                                  f"{m['f1_minus_keep_all_ci_high']:+.2f}]")
        click.echo(f"{m['method']:44}{m['accuracy']:>7.3f}{m['precision']:>7.3f}{m['recall']:>8.3f}{f1:>22}"
                   f"{m['flagged']:>9}   {gap}")


@cli.command()
@db_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the report into (index.html, data.js, thumbnails).")
@reading_threshold_option
@sample_filter_options
@scope_options
@click.option("--thumbnail-size", type=click.IntRange(32, 512), default=160, show_default=True,
              help="Side of the thumbnails in pixels.")
@click.option("--images", "images_source", type=click.Path(exists=True),
              help="For a store written with --redact-paths: the folder or manifest the audit read, to find the "
                   "files again (the report still shows only the hashes).")
@click.option("--path-column", default=DEFAULTS.path_column, show_default=True, help="With --images: as for run.")
@json_option
@user_errors
def report(db_path, out_dir, threshold, thumbnail_size, images_source, path_column, as_json, **filters):
    """An offline HTML report: one card per judgment (the model's view, the heatmap, the masked image, prediction and
    label, score, evaluation, justification), filters by quadrant, class, score, model, CAM and judge, the 2x2
    matrix, a per-class table and the score histogram. Open OUT/index.html in any browser; nothing is fetched.

    \b
    Example:
        localjudge report --db audit.db --out report/
    """
    from .report import build_report

    store, threshold, thresholds = open_with_threshold(db_path, threshold)
    locations = None
    if images_source:
        from .data import redacted_locations

        locations = redacted_locations(images_source, path_column)
    written = build_report(store, Path(out_dir), threshold, thresholds, side=thumbnail_size,
                           workers=os.cpu_count() or 1, locations=locations, **scoped(store, filters))
    if as_json:
        click.echo(json.dumps(written, indent=2))
        return
    click.echo(f"wrote {Path(out_dir) / 'index.html'}: {written['samples']} judgments of {written['images']} images, "
               f"{written['thumbnails']} thumbnails, {written['total_bytes'] / 1e6:.1f} MB in "
               f"{written['seconds']:.1f} s")
    for reason in written["unavailable"]:
        click.echo(f"warning: {reason}", err=True)


@cli.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to serve on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--rater", help="The rater's name, filled in on the page.")
@click.option("--order", type=click.Choice(("random", "disagreement")), default="random", show_default=True,
              help="random: a fixed pseudo-random order (any prefix is a fair sample); disagreement: the views two "
                   "judges (--judges) scored most differently first.")
@click.option("--judges", metavar="A,B", help="--order disagreement: the two judges, by name, comma-separated.")
@sample_filter_options
@user_errors
def rate(db_path, host, port, rater, order, judges, **filters):
    """A page on this machine where people rate what the judges were shown, 0-5 with the judge's rubric (keys 0-5,
    back, skip); ratings are stored in the DB at once, and a rater continues where they stopped.

    \b
    Example:
        localjudge rate --db audit.db --rater "Dr. A"
    """
    from .rating import RatingError, RatingServer

    pair = tuple(j.strip() for j in (judges or "").split(",") if j.strip())
    if order == "disagreement" and len(pair) != 2:
        raise click.UsageError("--order disagreement needs --judges A,B: the two judges' names")
    try:
        server = RatingServer(db_path, host, port, rater, disagreement=pair if order == "disagreement" else None,
                              **filters)
    except (RatingError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"rating {len(server.order)} views from {db_path} at {server.url} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.command()
@db_option
@click.option("--rater", "raters", multiple=True, help="Only this rater's ratings (repeatable; default: everyone's).")
@click.option("--human-threshold", type=click.IntRange(0, 5), default=DEFAULTS.threshold, show_default=True,
              help="A person's rating at or above this counts as high.")
@sample_filter_options
@json_option
@user_errors
def calibrate(db_path, raters, human_threshold, as_json, **filters):
    """From people's ratings, the judge threshold that best separates what they call high from low (Cohen's kappa),
    with kappa, weighted kappa and correlations against the judge, per judge setting; stored, so
    `matrix --threshold calibrated` uses it.

    \b
    Example:
        localjudge calibrate --db audit.db --rater "Dr. A"
    """
    from .calibration import calibrate_settings

    from .queries import rater_agreement

    store = Store(db_path, create=False)
    found = calibrate_settings(store, raters, human_threshold, DEFAULTS.threshold, **filters)
    people = rater_agreement(store, raters)
    if as_json:
        click.echo(json.dumps({"human_threshold": human_threshold, "settings": found, "people": people}, indent=2))
        return
    for pair in people:
        click.echo(f"people: {pair['raters'][0]} and {pair['raters'][1]} on {pair['views']} views: weighted kappa "
                   f"{number_with_interval(pair['weighted_kappa'])}, ICC {number_with_interval(pair['icc'])}")
    if not found:
        click.echo("No rated judgments yet: rate some with `localjudge rate`.")
        return
    number = lambda value: "n/a" if value is None else f"{value:.3f}"  # noqa: E731
    for c in found:
        click.echo(describe_setting(c["setting"]))
        click.echo(f"  {c['n']} ratings by {', '.join(c['raters'])}; people high: {c['human_high']}")
        if c["threshold"] is None:
            click.echo(f"  no threshold: {c['reason'] or 'kappa is undefined at every threshold'}")
        else:
            click.echo(f"  threshold {c['threshold']}: kappa {number(c['kappa'])}, accuracy {number(c['accuracy'])}")
        click.echo(f"  scores 0-5: weighted kappa {number_with_interval(c['agreement']['weighted_kappa'])}, ICC "
                   f"{number_with_interval(c['agreement']['icc'])}, Pearson {number(c['pearson']['r'])}, "
                   f"Spearman {number(c['spearman']['r'])}")


@cli.command(name="export")
@db_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="File to write (default: standard output).")
@reading_threshold_option
@sample_filter_options
@user_errors
def export_command(db_path, fmt, out, threshold, **filters):
    """One row per judgment with every stage's outputs (prediction, map, judge answer, quadrant, region and
    faithfulness scores, people's ratings) and the parameters of the runs that made it.

    \b
    Example:
        localjudge export --db audit.db --format csv --out audit.csv
    """
    import sys

    from .export import export_rows, write_export

    store, threshold, thresholds = open_with_threshold(db_path, threshold)
    rows = export_rows(store, threshold, thresholds, **filters)
    if out:
        with open(out, "w", newline="", encoding="utf-8") as handle:
            write_export(rows, fmt, handle)
        click.echo(f"wrote {len(rows)} rows to {out}", err=True)
    else:
        write_export(rows, fmt, sys.stdout)


@cli.command()
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="Also check this database (read only).")
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False), help="Also verify this model bundle.")
@json_option
def doctor(db_path, bundle_dir, as_json):
    """What this machine has (Python, torch, ONNX Runtime, transformers, vLLM, GPUs and providers), whether the
    embedded models match their cards, the offline switches, a database's integrity and free disk. Exits 1 when
    something is wrong.

    \b
    Example:
        localjudge doctor --db audit.db --bundle bundle/
    """
    from .doctor import diagnose

    found = diagnose(Path(db_path) if db_path else None, Path(bundle_dir) if bundle_dir else None)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        for check in found["checks"]:
            click.echo(f"{check['status']:5} {check['check']:32} {check['detail']}")
        click.echo("\nall good" if found["ok"] else "\nsomething is wrong: see the lines marked fail")
    if not found["ok"]:
        raise SystemExit(1)


@cli.group()
def bundle():
    """Model bundles for air-gapped machines: pack with a sha256 manifest, verify file by file."""


@bundle.command(name="create")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--model", default=DEFAULTS.model, show_default=True,
              help="Registered model name, a card .json file, or an .onnx file (with --card).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="State dict (default: embedded).")
@click.option("--card", type=click.Path(exists=True, dir_okay=False), help="Card for --model FILE.onnx.")
@click.option("--vlm", type=click.Path(exists=True, file_okay=False), help="The judge's model directory.")
@json_option
@user_errors
def bundle_create(out, model, weights, card, vlm, as_json):
    """Pack a vision model (card, labels, weights) and a VLM directory into OUT with a sha256 manifest (on a
    connected machine; carry OUT over and run with --bundle OUT).

    \b
    Example:
        localjudge bundle create bundle/ --model resnet18 --weights my-resnet18.pt --vlm /models/Qwen2.5-VL-7B-Instruct
    """
    from .bundle import create_bundle

    made = create_bundle(Path(out), model, Path(weights) if weights else None, Path(vlm) if vlm else None, card)
    if as_json:
        click.echo(json.dumps(made, indent=2))
    else:
        click.echo(f"wrote {made['out']}: {made['files']} files, {made['bytes'] / 1e6:.1f} MB, manifest "
                   f"{made['manifest_hash']}")


@bundle.command(name="verify")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@json_option
@user_errors
def bundle_verify(folder, as_json):
    """Check every file of a bundle against its manifest (size and sha256) and that no other file is there; exits 1
    when something differs.

    \b
    Example:
        localjudge bundle verify bundle/
    """
    from .bundle import verify_bundle

    result = verify_bundle(Path(folder))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for problem in result["problems"]:
            click.echo(f"{problem['file']}: {problem['problem']}")
        click.echo(f"{result['files']} files, manifest {result['manifest_hash']}: "
                   f"{'verified' if result['ok'] else str(len(result['problems'])) + ' problems'}")
    if not result["ok"]:
        raise SystemExit(1)


@cli.group(name="db")
def database():
    """Whole stores: merge stores made on separate machines."""


@database.command(name="merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--into", required=True, type=click.Path(dir_okay=False), help="The store to merge into (created "
                                                                             "if missing).")
@json_option
@user_errors
def db_merge(sources, into, as_json):
    """Merge SOURCES into one store: rows the target lacks are copied with their runs, equal rows are skipped, rows
    with the same key and other values are reported as conflicts (the target's kept). Idempotent.

    \b
    Example:
        localjudge db merge shard1.db shard2.db --into audit.db
    """
    from .store.merge import merge_stores

    report = merge_stores([Path(s) for s in sources], Path(into))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for source in report["sources"]:
        added = ", ".join(f"{n} {t}" for t, n in source["added"].items()) or "nothing new"
        click.echo(f"{source['source']}: {added}")
    for conflict in report["conflicts"][:20]:
        click.echo(f"conflict: {conflict['table']} {conflict['key']} from {conflict['source']} differs in "
                   f"{', '.join(conflict['columns'])} (kept the target's)", err=True)
    if len(report["conflicts"]) > 20:
        click.echo(f"... {len(report['conflicts']) - 20} more conflicts (see --json)", err=True)
    click.echo(f"merged into {into}: {report['added']} rows added, {len(report['conflicts'])} conflicts")


@database.command(name="runs")
@db_option
@json_option
@user_errors
def db_runs(db_path, as_json):
    """Every run recorded in the store, newest first: its id (give its start to --run), command, status, times,
    source and how many images it read.

    \b
    Example:
        localjudge db runs --db audit.db
    """
    from .queries import run_list

    found = run_list(Store(db_path, create=False))
    if as_json:
        click.echo(json.dumps({"runs": found}, indent=2))
        return
    for r in found:
        click.echo(f"{r['id'][:12]}  {r['command']:14} {r['status'] or '':9} {r['started_at'] or '':26} "
                   f"{r['images']:>7} images  {r['inputs'] or ''}")


@cli.group()
def models():
    """Vision models localjudge knows (model cards under models/)."""


@models.command(name="export")
@click.argument("model")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="State dict for the model.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Class names instead of the card's (one per line, or CSV index,name[,description]).")
@click.option("--random-weights", is_flag=True, help="Export a seeded random network (tests and benchmarks).")
@click.option("--static-batch", type=click.IntRange(1), help="A fixed batch size instead of a dynamic one.")
@user_errors
def models_export(model, out, weights, labels, random_weights, static_batch):
    """Export MODEL to ONNX with its target-layer activations and their gradient (dynamic batch), checked against
    torch; writes OUT and its card OUT.json (plus the label list).

    \b
    Example:
        localjudge models export resnet18 --weights my-resnet18.pt --labels labels.csv --out resnet18.onnx
    """
    from .vision import require_weights, resolve_card
    from .vision.onnx_export import export_onnx

    card = resolve_card(model, labels=labels)
    require_weights(card, weights, random_weights)
    path = export_onnx(card, Path(weights) if weights else None, Path(out), static_batch)
    click.echo(f"wrote {path} and {path.with_suffix('.json')} (checked against torch)")


@models.command(name="card")
@click.argument("model")
@click.option("--labels", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The model's class names: one per line, or CSV index,name[,description].")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="A state dict the card is checked against (built and loaded once): it must fit the labels.")
@click.option("--name", help="The card's name (default: OUT's file name without .json).")
@click.option("--task", type=click.Choice(("classification", "multilabel")),
              help="multilabel: one sigmoid per class, each class at or above --finding-threshold a finding with its "
                   "own map and judgment (default: MODEL's task).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The card .json to write.")
@user_errors
def models_card(model, labels, weights, name, task, out):
    """Write a card for your own model: MODEL's architecture, preprocessing and target tensor (a registered name or
    a card file), with your label list (copied beside OUT, so the two move together). Pass the card as --model
    and the weights as --weights to every stage.

    \b
    Example:
        localjudge models card densenet121 --labels findings.csv --weights chexnet.pt --out chexnet.json
        localjudge run xrays/ --db audit.db --model chexnet.json --weights chexnet.pt
    """
    from .vision import resolve_card
    from .vision.cards import write_user_card

    out = Path(out)
    base = resolve_card(model, labels=labels)
    if task and base.task == "segmentation":
        raise click.ClickException(f"{model}: a segmentation model's task is its own")
    if task:
        base = dataclasses.replace(base, task=task)
    if base.framework == "onnx":
        raise click.ClickException(f"{model}: an ONNX graph comes with its own card; pass --labels to `models "
                                   "export` instead")
    if weights:  # refused before anything is written: weights that do not fit, named key by key and shape by shape
        from .vision.torch_backend import build_module

        build_module(base, Path(weights))
    card = write_user_card(base, out, name or out.stem)
    classes = len(card.label_list().names)
    click.echo(f"wrote {out} ({card.architecture}, {classes} classes"
               f"{', checked against ' + weights if weights else ''})")


@models.command(name="list")
@json_option
def models_list(as_json):
    """List registered vision models.

    \b
    Example:
        localjudge models list --json
    """
    cards = list_cards()
    if as_json:
        click.echo(json.dumps([{k: v for k, v in c.__dict__.items()} for c in cards], indent=2))
        return
    for card in cards:
        weights = "embedded" if card.weights.startswith("package:") else "--weights FILE"
        click.echo(f"{card.name:20} {card.task:15} {card.framework:26} {card.crop}px  layer={card.target_tensor:12} "
                   f"weights: {weights}")


if __name__ == "__main__":
    cli()
