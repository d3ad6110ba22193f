"""Every default of a run lives here; the CLI reads its defaults from this object and the store records it whole.
Which backend a run uses, and whether its options fit together, is settled once, by `pipeline.open_audit`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunConfig:
    # vision stage
    model: str = "efficientnet-lite0"
    weights: str | None = None
    # a card whose weights are the user's runs only with --weights, or with random weights asked for by name
    random_weights: bool = False
    # a label list instead of the card's (one name per line, or CSV index,name[,description]): the model has as many
    # classes as it names, and each name's description is given to the judge
    labels: str | None = None
    # a verified model bundle (localjudge bundle create): its card, weights and VLM, named by its manifest's hash
    bundle: str | None = None
    # --bundle: hash each file's bytes (False), or take the store's cached hash while path, size and mtime are unchanged
    trust_hash_cache: bool = False
    bundle_hash: str | None = None
    card: str | None = None  # a card for --model FILE.onnx (default: FILE.json beside it)
    # auto (settled when a run opens: ONNX Runtime where it is installed for the device, torch otherwise) | torch | onnx
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 16
    # multilabel models: a class whose probability reaches this is a finding (a card may give one per class); each
    # finding of an image gets its own map and judgment
    finding_threshold: float = 0.5
    # multilabel models: what is explained and judged, the model's findings, or (labelled) also each labelled finding
    # it missed; a target is right where the model's call on it agrees with the image's labels
    targets: str = "findings"  # findings | labelled
    # saliency stage
    cam: str = "gradcam"
    # masking (paper Eq. 1): M = 1 / (1 + exp(alpha * (beta - v)))
    alpha: float = 15.0
    beta: float = 0.6
    image_mode: str = "masked"  # masked | heatmap
    prompt_style: str = "original"  # original | concise | extended (the paper's Table 3)
    # what the judge is told each image is: None reads it from the image (a DICOM file's modality and body part,
    # else "photo"); a text names it for every image of the run ("chest radiograph", "skin photograph")
    image_kind: str | None = None
    # judge stage
    judge: str = "auto"  # auto: transformers with --vlm DIR, else the recognizer
    # What the recognizer judge classifies: the masked image (black), the masked image on the normalisation mean
    # (mean), the view cropped to the attended region (crop), or the masked image's class mass relative to the
    # whole view's (relative); see judge.recognizer
    recognizer_design: str = "crop"
    vlm: str | None = None
    judge_batch_size: int = 64  # requests handed to the judge at once, and stored together
    # An in-process judge whose calls fail (raise: CUDA out of memory, a broken model) this many batches in a row stops
    # the run, with what it judged stored, rather than walk the whole dataset writing failures
    judge_failure_limit: int = 2
    # Two runs on one store split the judge work: each claims a batch's judgments before judging them, for this long
    # at most (a run that dies on this machine frees its claims at once; one on another machine after this time)
    judge_lease_seconds: float = 1800.0
    max_new_tokens: int = 512
    temperature: float = 0.0
    # The judge sees the model's view of the image (the centre crop), upscaled to this side so a
    # real VLM gets enough pixels; the tiny test VLMs downscale it anyway.
    judge_image_size: int = 448
    # vLLM engine (--judge vllm); max_num_seqs applies to the transformers judge as well
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 32  # answers written at once (vLLM engine; the transformers judge too)
    tensor_parallel_size: int = 1  # vLLM: the model split over this many GPUs of one machine
    data_parallel_size: int = 1  # this many copies of the judge (one per GPU group): Ray actors on this machine
    # --ray [ADDRESS]: the vision and judge stages on a Ray cluster ("local" starts one on this machine)
    ray: str | None = None
    ray_workers: int | None = None  # actors per stage (default: the cluster's GPUs, else half its CPUs)
    # OpenAI-compatible server (--judge openai): loopback only, unless a host is allowed by name
    base_url: str | None = None
    api_model: str | None = None  # default: the one model the server lists
    allow_hosts: tuple[str, ...] = ()
    insecure_http: bool = False  # plain http to an allowed host other than loopback (images, key in the clear)
    api_concurrency: int = 4  # requests in flight at once
    api_timeout: float = 300.0  # seconds to wait for one answer
    api_retries: int = 3  # more tries after a timeout, a refused connection, a 5xx or a 429
    api_backoff: float = 1.0  # seconds before the first retry; doubled for each next one
    # progress where stderr is no terminal (a scheduler, a log file): a line every this many seconds, with rate and
    # time left (on a terminal: a bar)
    progress_seconds: float = 60.0
    # overlapped run: how many vision batches of maps may wait for the judge (bounds how far vision runs ahead)
    queue_batches: int = 4
    # faithfulness (eval faithfulness): curve points as torchcam's DeletionInsertionMetric, and the fill of removed
    # positions: zeros of the normalised input (the dataset mean colour; torchcam's default) or black
    faithfulness_steps: int = 20
    faithfulness_baseline: str = "zeros"
    # analysis
    threshold: int = 3  # score >= threshold counts as "high"
    # ingest
    path_column: str = "path"
    label_column: str = "label"
    # DICOM: a window (centre, width) instead of the file's own; part of every prediction's preprocessing
    dicom_window: tuple[float, float] | None = None
    # store a hash of each file path instead of the path (paths can name patients); the files are read in the run
    redact_paths: bool = False
    # "K/N": only the K-th of N deterministic slices of the inputs (by image hash), for a run split over machines
    shard: str | None = None
    # ground-truth object regions (evaluation): mask files named by image stem, a manifest column of mask paths,
    # or COCO-style boxes
    masks: str | None = None
    mask_column: str | None = None
    mask_label_column: str | None = None  # the class each --mask-column mask is the region of (a row per finding)
    boxes: str | None = None

    def replace(self, **changes) -> "RunConfig":
        """A copy with the given fields changed; None means "not given" (an option left out keeps the default). A
        name that is no field is an error: a misspelt option must not be dropped without a word."""
        unknown = sorted(set(changes) - FIELDS)
        if unknown:
            raise TypeError(f"RunConfig has no field {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        """The inverse of `to_json` (JSON has no tuples: those fields come back as lists and are made tuples)."""
        fields = json.loads(text)
        for name in TUPLE_FIELDS:
            if fields.get(name) is not None:
                fields[name] = tuple(fields[name])
        return cls(**fields)


FIELDS = frozenset(f.name for f in dataclasses.fields(RunConfig))
TUPLE_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if str(f.type).startswith("tuple"))
DEFAULTS = RunConfig()

IMAGE_MODES = ("masked", "heatmap")
# Reading the store: bootstrap intervals (analysis.bootstrap) and sanity checks (eval sanity). Not run parameters:
# they are reported beside the numbers they produce.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
SANITY_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam")
SANITY_IMAGES = 20
SANITY_SEED = 0
# eval clusters (SpRAy): the grid maps are compared on, each map's nearest neighbours, the most clusters the eigengap
# may choose, the fewest maps a class needs to be clustered, the most it is clustered on (a seeded sample)
CLUSTER_DEFAULTS = {"grid": 16, "neighbours": 10, "max_clusters": 8, "min_maps": 6, "max_maps": 2000}
# eval canary: the artifact's side as a share of the view, the stored predictions tested, the seed
CANARY_DEFAULTS = {"size": 0.15, "images": 50, "seed": 0}
JUDGE_CHECK_SAMPLE = 50  # stored maps the judge's canaries are drawn on (eval judge-check)
JUDGE_CHECK_SEED = 0
FAITHFULNESS_BASELINES = ("zeros", "black")


def home() -> Path:
    """localjudge's own folder for what it makes once and reuses (ONNX exports): $LOCALJUDGE_HOME, else
    ~/.cache/localjudge."""
    return Path(os.environ.get("LOCALJUDGE_HOME") or Path.home() / ".cache" / "localjudge")
