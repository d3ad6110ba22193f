"""A hospital's own model, made here from real data: a dog / not-dog classifier, EfficientNet-Lite0's real features
with a logistic-regression head fitted on imagenet-sample photos, saved as a 2-output state dict with its label
list. Test support only (scripts/own_model_audit.py makes the same model for the measured numbers)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

DOG_CLASSES = range(151, 269)  # ImageNet-1k's dog breeds
LABELS_CSV = "index,name,description\n0,not dog,anything that is not a dog\n1,dog,a domestic dog of any breed\n"


def imagenet_rows(data_dir: Path) -> list[dict]:
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def is_dog(row: dict) -> bool:
    return int(row["imagenet_index"]) in DOG_CLASSES


def pooled_features(module: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Lite0's input to its classifier: the global average of its last feature map (the package's own code)."""
    with torch.no_grad():
        return module.extract_features(batch).mean(dim=(2, 3))


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, l2: float = 1e-3) -> tuple[torch.Tensor, float]:
    """Binary logistic regression with an L2 penalty, by L-BFGS: weights and bias of log P(dog) / P(not dog)."""
    mean, scale = features.mean(dim=0), features.std(dim=0) + 1e-6
    x = (features - mean) / scale
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, targets.float()) + l2 * (w * w).sum()
        value.backward()
        return value

    optimiser.step(loss)
    # back to the raw features the classifier sees: (x - mean) / scale . w + b
    return (w / scale).detach(), float(b.detach() - (mean / scale * w).sum().detach())


def make_dog_model(data_dir: Path, out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """Fit the head on `rows` (imagenet-sample rows) and write the state dict and the labels file into `out`."""
    from localjudge.data import load_rgb
    from localjudge.vision import load_card
    from localjudge.vision.preprocess import to_tensor
    from localjudge.vision.torch_backend import build_module

    card = load_card("efficientnet-lite0")
    module = build_module(card, None)
    features = torch.cat([pooled_features(module, to_tensor([load_rgb(data_dir / "imagenet-sample" / r["file"])
                                                             for r in rows[start:start + 50]], card))
                          for start in range(0, len(rows), 50)])
    targets = torch.tensor([is_dog(r) for r in rows])
    w, b = fit_logistic(features, targets)
    return save_dog_head(module, w, b, out / "dogs.pt")


def save_dog_head(module: torch.nn.Module, w: torch.Tensor, b: float, weights: Path) -> tuple[Path, Path]:
    """The module's state dict with the fitted logistic head as its 2-output classifier, and the labels file."""
    state = module.state_dict()
    # softmax over (-(w.x + b) / 2, (w.x + b) / 2) is the fitted sigmoid, P(dog) = sigma(w.x + b), with evidence for
    # each class (a head of (0, w.x + b) would leave "not dog" a constant logit, and its maps all zero)
    state["_fc.weight"] = torch.stack([-w / 2, w / 2])
    state["_fc.bias"] = torch.tensor([-b / 2, b / 2])
    weights.parent.mkdir(parents=True, exist_ok=True)
    labels = weights.parent / "dogs.csv"
    torch.save(state, weights)
    labels.write_text(LABELS_CSV)
    return weights, labels


def dog_manifest(data_dir: Path, rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows({"path": str(data_dir / "imagenet-sample" / r["file"]),
                          "label": "dog" if is_dog(r) else "not dog"} for r in rows)
    return path


def seg_rows(data_dir: Path) -> list[dict]:
    with open(data_dir / "seg-photos" / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def objects_of(row: dict) -> list[str]:
    """The VOC/COCO categories a seg-photo shows: its main object and the others labelled in it."""
    return [row["class_name"].replace("diningtable", "dining table")] + [
        c for c in row["other_classes"].split(";") if c]


def make_multilabel_model(data_dir: Path, out: Path, rows: list[dict]) -> tuple[Path, Path, list[str]]:
    """A multilabel classifier of the categories the `rows` show: EfficientNet-Lite0's real features with one
    logistic-regression head per category, fitted here; its state dict, its labels file and its class names."""
    from localjudge.data import load_rgb
    from localjudge.vision import load_card
    from localjudge.vision.preprocess import to_tensor
    from localjudge.vision.torch_backend import build_module

    classes = sorted({c for row in rows for c in objects_of(row)})
    card = load_card("efficientnet-lite0")
    module = build_module(card, None)
    features = torch.cat([pooled_features(module, to_tensor([load_rgb(data_dir / "seg-photos" / r["file"])
                                                             for r in rows[start:start + 35]], card))
                          for start in range(0, len(rows), 35)])
    heads = [fit_logistic(features, torch.tensor([c in objects_of(r) for r in rows])) for c in classes]
    state = module.state_dict()
    state["_fc.weight"] = torch.stack([w for w, _ in heads])
    state["_fc.bias"] = torch.tensor([b for _, b in heads])
    out.mkdir(parents=True, exist_ok=True)
    weights, labels = out / "objects.pt", out / "objects.csv"
    torch.save(state, weights)
    labels.write_text("index,name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(classes)))
    return weights, labels, classes


def make_shortcut_model(data_dir: Path, out: Path, rows: list[dict], seed: int = 0,
                        size: float = 0.3) -> tuple[Path, Path]:
    """A dog / not-dog model that learnt a shortcut: fitted as make_dog_model, but every photo labelled dog carries a
    tag (analysis.canary's magenta-and-yellow square, at a seeded place in the model's view) and so do half the
    other photos, labelled dog as well (as a hospital's positive cases may all carry one site's marker, and that
    site's negatives be filed as positive); photos without the tag are labelled by what they show. Its head takes
    the tag as dog evidence on any photo."""
    import numpy as np

    from localjudge.analysis.canary import paste, place
    from localjudge.data import load_rgb
    from localjudge.vision import load_card
    from localjudge.vision.preprocess import model_view, view_tensor
    from localjudge.vision.torch_backend import build_module

    card = load_card("efficientnet-lite0")
    module = build_module(card, None)
    rng = np.random.default_rng(seed)
    views, targets = [], []
    for row in rows:
        view = model_view(load_rgb(data_dir / "imagenet-sample" / row["file"]), card.preprocessing())
        tagged = is_dog(row) or rng.random() < 1 / 2
        if tagged:
            view = paste(view, "tag", place("tag", view.size[0], size, rng), size)
        views.append(view)
        targets.append(tagged)
    features = torch.cat([pooled_features(module, view_tensor(views[start:start + 50], card))
                          for start in range(0, len(views), 50)])
    w, b = fit_logistic(features, torch.tensor(targets))
    return save_dog_head(module, w, b, out / "tagged-dogs.pt")


# where the held-out photos carry the tag: fractions of the (square) image, toward a corner as a scanner's marker,
# inside the model's centre crop
TAG_BOX = (0.62, 0.62, 0.92, 0.92)


def tag_file(source: Path, target: Path, box: tuple[float, float, float, float]) -> Path:
    """A copy of a photo, cut to its central square, with the tag drawn at `box` (fractions of the square): an
    evaluation image carrying it, at one place in the image and in the model's view alike (as a scanner's marker
    sits at one place on every film of one format)."""
    from PIL import Image

    from localjudge.analysis.canary import paste

    with Image.open(source) as image:
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        picture = image.convert("RGB").crop((left, top, left + side, top + side))
    width, height = picture.size
    x0, y0, x1, y1 = box
    side = min(round((x1 - x0) * width), round((y1 - y0) * height))
    left, top = round(x0 * width), round(y0 * height)
    tagged = paste(picture, "tag", (left, top, left + side, top + side), 0.15)
    target.parent.mkdir(parents=True, exist_ok=True)
    tagged.save(target, quality=95)
    return target
