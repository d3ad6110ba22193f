"""CAMs read the tensor their definition assumes: the post-activation feature map. Checked by known answers, not by
parity with a library pointed at the same layer: for a global-average-pool + linear head, Grad-CAM, XGradCAM,
HiResCAM and CAM all equal relu(sum_k w_ck A_k), with w the classifier's own weights and A the features computed by
the architecture's own code."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from localjudge.saliency.engine import CamEngine
from localjudge.vision import load_card, open_model
from localjudge.vision.cards import CardError
from localjudge.vision.preprocess import to_tensor
from localjudge.vision.torch_backend import build_module

from .conftest import invoke, invoke_json, write_manifest

EQUAL_ON_A_LINEAR_HEAD = ("cam", "gradcam", "xgradcam", "hirescam")


@pytest.fixture(scope="module")
def imagenet_rows(data_dir):
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def pictures(data_dir, rows):
    from localjudge.data import load_rgb

    return [load_rgb(data_dir / "imagenet-sample" / r["file"]) for r in rows]


def features_and_weights(name: str, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The post-activation features and the classifier's weights, from a freshly built model's own code."""
    card = load_card(name)
    module = build_module(card, None)
    with torch.no_grad():
        if card.framework == "efficientnet-lite-pytorch":  # the package's own: _swish(_bn1(_conv_head(x)))
            return module.extract_features(batch), module._fc.weight.detach()
        if card.architecture == "densenet121":  # torchvision's DenseNet.forward: F.relu(features(x))
            return torch.relu(module.features(batch)), module.classifier.weight.detach()
        return torch.nn.Sequential(*list(module.children())[:-2])(batch), module.fc.weight.detach()  # to layer4


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2", "resnet18",
                                  pytest.param("densenet121", marks=pytest.mark.slow)])  # its export: minutes
def test_gradient_methods_equal_cam_by_definition_on_a_linear_head(name, data_dir, imagenet_rows):
    card = load_card(name)
    assert card.linear_head
    batch = to_tensor(pictures(data_dir, imagenet_rows[5::50][:10]), card)
    features, weights = features_and_weights(name, batch)
    assert features.min() >= 0  # post-activation
    torch_model = open_model(card, None, "cpu", "torch")
    targets = torch_model.predict(batch).argmax(axis=1).tolist()
    definition = torch.relu(torch.einsum("bk,bkhw->bhw", weights[targets], features))
    definition = torch.nn.functional.interpolate(definition[:, None], size=batch.shape[2:], mode="bilinear",
                                                 align_corners=False)[:, 0].numpy()
    for model in (torch_model, open_model(card, None, "cpu", "onnx")):
        for method in EQUAL_ON_A_LINEAR_HEAD:
            maps = CamEngine(method, model).compute(batch, targets)
            worst = min(pearson(m, d) for m, d in zip(maps, definition))
            assert worst >= 0.999, f"{name} {method} on {model.backend}: worst Pearson {worst:.4f}"


def test_the_target_activation_leaves_the_models_outputs_as_they_were(data_dir, imagenet_rows):
    card = load_card("efficientnet-lite0")
    batch = to_tensor(pictures(data_dir, imagenet_rows[:4]), card)
    with torch.no_grad():
        plain = build_module(card, None)(batch)
    assert torch.equal(open_model(card, None, "cpu", "torch").forward_outputs(batch), plain)


def test_the_gradient_at_the_target_is_the_heads_own(data_dir, imagenet_rows):
    """For GAP + linear after the target, dS/dA_kij = w_ck / hw at every position, on a bound of ReLU6 (0, 6) too."""
    card = load_card("efficientnet-lite0")
    model = open_model(card, None, "cpu", "torch")
    batch = to_tensor(pictures(data_dir, imagenet_rows[:2]), card)
    target = model.predict(batch).argmax(axis=1)
    cotangent = torch.zeros(2, 1000)
    cotangent[torch.arange(2), torch.as_tensor(target)] = 1.0
    _, activations, gradients = model.activations_and_gradients(batch, cotangent)
    assert (activations == 0).float().mean() > 0.3 and (activations == 6).any()  # many positions on a bound
    weights = model.module._fc.weight.detach()[torch.as_tensor(target)]
    hw = activations.shape[2] * activations.shape[3]
    expected = (weights / hw)[:, :, None, None].expand_as(gradients)
    assert torch.allclose(gradients, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_gradcam_plusplus_and_layercam_give_no_all_zero_map(data_dir, imagenet_rows):
    """On all 500 imagenet-sample photos with the default model (at the pre-activation layer, Grad-CAM++ blacked
    out 3 of 20). Both methods read one forward and backward pass per batch."""
    from localjudge.saliency.methods import METHODS

    card = load_card("efficientnet-lite0")
    model = open_model(card, None, "cpu", "torch")
    flat: dict[str, list[int]] = {"gradcam++": [], "layercam": []}
    for start in range(0, len(imagenet_rows), 50):
        batch = to_tensor(pictures(data_dir, imagenet_rows[start:start + 50]), card)

        def top_class(outputs: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(outputs.argmax(dim=1), outputs.shape[1]).float()

        _, activations, gradients, _ = model.outputs_and_gradients(batch, top_class)
        for method in flat:
            maps = torch.relu(METHODS[method]().cam_image(activations, gradients)).flatten(1)
            flat[method] += [start + int(n) for n in torch.nonzero(maps.amax(1) == maps.amin(1)).flatten()]
    assert len(imagenet_rows) == 500 and flat == {"gradcam++": [], "layercam": []}


def test_xgradcam_and_gradcam_agree_on_the_default_model(data_dir, imagenet_rows, tmp_path):
    """`explain --cam xgradcam` and `--cam gradcam` on 30 photos (they were anti-correlated at the pre-activation
    layer)."""
    import sqlite3

    from localjudge.store import unpack_array

    manifest = write_manifest(tmp_path / "thirty.csv", [
        {"path": str(data_dir / "imagenet-sample" / r["file"]), "label": r["imagenet_index"]}
        for r in imagenet_rows[1::16][:30]])
    db = tmp_path / "xg.db"
    invoke("predict", manifest, "--db", db)
    for method in ("gradcam", "xgradcam"):
        assert invoke_json("explain", "--db", db, "--cam", method)["explain"]["computed"] == 30
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select prediction_id, method, target_layer, height, width, map from saliency_maps "
                            "order by prediction_id").fetchall()
    assert {r[2] for r in rows} == {"relu6(_bn1)"}
    maps = {}
    for prediction, method, _, height, width, blob in rows:
        maps.setdefault(prediction, {})[method] = unpack_array(blob, (height, width))
    correlations = [pearson(m["gradcam"], m["xgradcam"]) for m in maps.values()]
    assert len(correlations) == 30 and min(correlations) >= 0.99


def test_a_card_with_an_unknown_activation_is_refused(tmp_path):
    card = json.loads(open(load_card("efficientnet-lite0").card_path).read())
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**card, "target_activation": "gelu"}))
    with pytest.raises(CardError, match="target_activation 'gelu'"):
        load_card(str(path))
    path.write_text(json.dumps({**card, "activation_module": None}))
    with pytest.raises(CardError, match="go together"):
        load_card(str(path))


def test_degenerate_maps_by_definition():
    from localjudge.saliency.engine import FLAT_SPAN, degenerate

    cams = torch.zeros(5, 7, 7)
    cams[1] = 5.0  # constant
    cams[2] = 1.0
    cams[2, 3, 3] += FLAT_SPAN / 10  # float noise on a constant
    cams[3] = -torch.rand(7, 7)  # no positive evidence: ReLU leaves zeros
    cams[4, 2:5, 2:5] = 1.0  # a finding
    reasons = degenerate(cams)
    assert reasons[0].startswith("all-zero") and reasons[3].startswith("all-zero")
    assert reasons[1].startswith("flat") and reasons[2].startswith("flat")
    assert reasons[4] is None


def test_all_zero_maps_are_stored_as_map_failures_and_never_judged(data_dir, tmp_path):
    """A model whose target activations are all zero (EfficientNet-Lite0 with its head's BatchNorm zeroed): every
    map is stored with its reason, counted in `summary`, listed in the report, and no judgment is made of it."""
    import sqlite3

    from localjudge.vision.cards import embedded_weights_path

    from .conftest import seg_photos_manifest

    card = load_card("efficientnet-lite0")
    state = torch.load(embedded_weights_path(card), map_location="cpu", weights_only=True)
    state["_bn1.weight"].zero_()
    state["_bn1.bias"].zero_()
    weights = tmp_path / "dead-head.pt"
    torch.save(state, weights)
    manifest = seg_photos_manifest(data_dir, tmp_path / "four.csv", 4)
    db = tmp_path / "dead.db"
    stages = invoke_json("run", manifest, "--db", db, "--weights", weights)
    assert stages["explain"]["computed"] == 4
    assert stages["judge"]["rows"] == 0 and stages["judge"]["computed"] == 0
    with sqlite3.connect(db) as conn:
        failures = [r[0] for r in conn.execute("select failure from saliency_maps")]
        assert conn.execute("select count(*) from judgments").fetchone()[0] == 0
    assert len(failures) == 4 and all(f.startswith("all-zero map") for f in failures)
    summary = invoke_json("summary", "--db", db)
    assert summary["maps_failed"] == 4 and len(summary["map_failures"]) == 4
    assert invoke_json("judge", "--db", db, "--weights", weights)["judge"]["rows"] == 0  # not judged later either
    report = invoke_json("report", "--db", db, "--out", tmp_path / "report")
    assert report["map_failures"] == 4 and "all-zero map" in (tmp_path / "report" / "data.js").read_text()
    # the healthy model in the same store is judged as ever
    assert invoke_json("run", manifest, "--db", db)["judge"]["computed"] == 4


def test_a_card_whose_activation_claim_is_false_is_refused(tmp_path):
    """The first block's projection BatchNorm feeds a linear bottleneck: no ReLU6 follows it, so a card claiming one
    would change the model. The check forward pass sees the outputs change and refuses the card."""
    from localjudge.vision.cards import WeightsError

    card = json.loads(open(load_card("efficientnet-lite0").card_path).read())
    card.update(target_layer="_blocks.0._bn2", labels=str(load_card("efficientnet-lite0").card_path).replace(
        "efficientnet-lite0.json", "labels/imagenet-1k.csv"))
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="changes the model's outputs"):
        open_model(load_card(str(path)), None, "cpu", "torch")
