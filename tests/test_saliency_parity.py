"""Acceptance of the CAM engine: on 50 real images, our maps on both backends (torch, ONNX Runtime) match
pytorch-grad-cam's for every method it also has (Pearson >= 0.99 per map); plain CAM matches its definition;
segmentation maps match SemanticSegmentationTarget on DeepLabv3-ResNet50."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from localjudge.data import load_rgb
from localjudge.saliency.engine import CamEngine, CamUnavailable
from localjudge.testing.gradcam_reference import REFERENCE_CLASSES, PytorchGradCam
from localjudge.vision import load_card, main_class, open_model
from localjudge.vision.preprocess import to_tensor

from .test_vision import small_card

IMAGES = 50
CHUNK = 10
MODELS = ["efficientnet-lite0", "resnet18", "convnext_tiny", "maxvit_t"]
# the two largest (random-weight) networks on 20 of the images: the parity of two implementations needs no more, and
# on 50 they took five minutes of the suite
FEWER_IMAGES = {"convnext_tiny": 20, "maxvit_t": 20}
SHARED_PASS_METHODS = [m for m in REFERENCE_CLASSES if m != "scorecam"]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        # A flat map (every weight negative, so ReLU leaves nothing: seen with random MaxViT weights) has no
        # correlation; it matches only another flat map of the same value.
        return 1.0 if np.allclose(a, b, atol=1e-6) else 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def assert_maps_match(ours: np.ndarray, reference: np.ndarray, what: str, threshold: float = 0.99):
    correlations = [pearson(a, b) for a, b in zip(ours, reference)]
    worst = min(correlations)
    assert worst >= threshold, f"{what}: worst Pearson {worst:.4f} (image {int(np.argmin(correlations))})"


@pytest.fixture(scope="module")
def pictures(data_dir):
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[::10][:IMAGES]  # 50 classes spread over the label range
    return [load_rgb(data_dir / "imagenet-sample" / r["file"]) for r in rows]


def reference_maps(model, batch, targets) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's maps for every method that shares one forward/backward pass: its own GradCAM object runs
    the pass, then each method's own code turns those activations and gradients into maps."""
    maps = {method: [] for method in SHARED_PASS_METHODS}
    shared = GradCAM(model=model.module, target_layers=[model.target_layer])
    try:
        for start in range(0, len(targets), CHUNK):
            x = batch[start:start + CHUNK]
            chunk_targets = [ClassifierOutputTarget(t) for t in targets[start:start + CHUNK]]
            shared(input_tensor=x, targets=chunk_targets)
            for method in SHARED_PASS_METHODS:
                cam = REFERENCE_CLASSES[method](model=model.module, target_layers=[model.target_layer])
                own = cam.activations_and_grads
                own.release()
                cam.activations_and_grads = shared.activations_and_grads
                maps[method].append(cam.aggregate_multi_layers(cam.compute_cam_per_layer(x, chunk_targets, False)))
                cam.activations_and_grads = own  # its __del__ clears whatever it holds: not the shared pass
    finally:
        shared.activations_and_grads.release()
    return {method: np.concatenate(parts) for method, parts in maps.items()}


def our_maps(model, method, batch, targets) -> np.ndarray:
    engine = CamEngine(method, model)
    return np.concatenate([engine.compute(batch[s:s + CHUNK], targets[s:s + CHUNK])
                           for s in range(0, len(targets), CHUNK)])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_parity_with_pytorch_grad_cam_on_both_backends(name, pictures):
    card = load_card(name)
    torch_model = open_model(card, None, "cpu", "torch")
    onnx_model = open_model(card, None, "cpu", "onnx")  # exported once into the test's cache, checked on export
    count = FEWER_IMAGES.get(name, IMAGES)
    batch = to_tensor(pictures[:count], card)
    targets = torch_model.predict(batch).argmax(axis=1).tolist()
    reference = reference_maps(torch_model, batch, targets)
    for method in SHARED_PASS_METHODS:
        for model in (torch_model, onnx_model):
            ours = our_maps(model, method, batch, targets)
            assert ours.shape == reference[method].shape == (count, card.crop, card.crop)
            assert_maps_match(ours, reference[method], f"{name} {method} on {model.backend}")


@pytest.mark.slow
def test_scorecam_parity_on_both_backends(pictures):
    # One image: ScoreCAM runs one forward pass per channel (512 for ResNet18), on every implementation.
    card = load_card("resnet18")
    torch_model = open_model(card, None, "cpu", "torch")
    onnx_model = open_model(card, None, "cpu", "onnx")
    batch = to_tensor(pictures[:1], card)
    targets = torch_model.predict(batch).argmax(axis=1).tolist()
    with ScoreCAM(model=torch_model.module, target_layers=[torch_model.target_layer]) as cam:
        cam.batch_size = 64
        reference = cam(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in targets])
    for model in (torch_model, onnx_model):
        assert_maps_match(CamEngine("scorecam", model).compute(batch, targets), reference, f"scorecam {model.backend}")


def test_plain_cam_is_its_definition(pictures):
    card = load_card("resnet18")
    torch_model = open_model(card, None, "cpu", "torch")
    batch = to_tensor(pictures[:8], card)
    targets = torch_model.predict(batch).argmax(axis=1).tolist()
    _, activations, _ = torch_model.activations_and_gradients(batch, None)
    class_weights = torch_model.module.fc.weight.detach()[targets]  # w_k^c of Zhou et al.
    definition = torch.relu(torch.einsum("bk,bkhw->bhw", class_weights, activations))
    definition = torch.nn.functional.interpolate(definition[:, None], size=(224, 224), mode="bilinear",
                                                 align_corners=False)[:, 0].numpy()
    for model in (torch_model, open_model(card, None, "cpu", "onnx")):
        assert_maps_match(CamEngine("cam", model).compute(batch, targets), definition, f"cam {model.backend}",
                          threshold=0.999)


def test_cam_is_refused_without_a_linear_head():
    model = open_model(load_card("convnext_tiny"), None, "cpu", "torch")
    with pytest.raises(CamUnavailable, match="linear head"):
        CamEngine("cam", model)


@pytest.mark.slow
def test_segmentation_parity_with_semantic_segmentation_target(pictures, tmp_path):
    card = small_card("deeplabv3_resnet50", tmp_path, side=224)
    torch_model = open_model(card, None, "cpu", "torch")
    onnx_model = open_model(card, None, "cpu", "onnx")
    batch = to_tensor(pictures[:3], card)
    targets = [main_class(s, "segmentation") for s in torch_model.predict(batch)]
    for method in ("gradcam", "layercam", "gradcam++"):
        with PytorchGradCam(method, torch_model) as reference:
            expected = reference.compute(batch, targets)
        for model in (torch_model, onnx_model):
            assert_maps_match(CamEngine(method, model).compute(batch, targets), expected,
                              f"deeplabv3 {method} on {model.backend}")


def test_onnx_gradients_are_the_same_on_every_run(pictures, tmp_path):
    """DeepLab's head upsamples bilinearly; the gradient of that is a ScatterND that adds, which ONNX Runtime's CPU
    kernel runs racily on several threads (maps differed up to 1 % from run to run). Such graphs compute gradients
    on one thread."""
    card = small_card("deeplabv3_resnet50", tmp_path, side=224)
    onnx_model = open_model(card, None, "cpu", "onnx")
    assert onnx_model.gradient_session is not onnx_model.session
    batch = to_tensor(pictures[:3], card)
    runs = [CamEngine("gradcam", onnx_model).compute(batch, [17, 17, 17]) for _ in range(3)]
    assert all(np.array_equal(runs[0], run) for run in runs[1:])
    assert open_model(load_card("resnet18"), None, "cpu", "onnx").gradient_session is not None


@pytest.mark.parametrize("name", ["efficientnet-lite0", "deeplabv3_resnet50"])
def test_predicting_and_explaining_in_one_pass_gives_the_two_passes_results(name, pictures, tmp_path):
    """A run predicts a class and explains it from one forward pass (torch: the explained class is chosen from that
    pass's own outputs; ONNX Runtime: the exported graph chooses it itself, in the same run). The scores are bit for
    bit `predict`'s (a separate inference-mode pass), the maps bit for bit `compute`'s on those classes, and they match
    pytorch-grad-cam's own hooks and backward pass on them (an independent implementation)."""
    segmenter = name.startswith("deeplab")
    card = small_card(name, tmp_path, side=224) if segmenter else load_card(name)
    batch = to_tensor(pictures[:2 if segmenter else 4], card)
    torch_model = open_model(card, None, "cpu", "torch")
    for model in (torch_model, open_model(card, None, "cpu", "onnx")):
        scores = model.predict(batch)
        targets = [main_class(s, card.task) for s in scores]
        for method in ("gradcam", "eigencam") if segmenter else ("gradcam", "gradcam++", "eigencam"):
            engine = CamEngine(method, model)
            one_scores, one_maps, _ = engine.predict_and_compute(batch)
            what = f"{name} {method} {model.backend}"
            assert np.array_equal(one_scores, scores), what
            assert np.array_equal(one_maps, engine.compute(batch, targets)), what
            if method != "eigencam":
                with PytorchGradCam(method, torch_model) as reference:
                    assert_maps_match(one_maps, reference.compute(batch, targets), what)


def test_scorecam_in_one_pass_gives_the_two_passes_results(pictures):
    """ScoreCAM runs forward passes of its own (one per channel) after the one that predicts."""
    card = load_card("resnet18")
    model = open_model(card, None, "cpu", "torch")
    batch = to_tensor(pictures[:1], card)
    scores, maps, _ = CamEngine("scorecam", model).predict_and_compute(batch)
    assert np.array_equal(scores, model.predict(batch))
    assert np.array_equal(maps, CamEngine("scorecam", model).compute(batch, scores.argmax(axis=1).tolist()))


def test_the_graphs_choice_of_the_explained_class_by_hand():
    """The exported graph chooses the cotangent of each image's main class itself (one run predicts and explains).
    Known answers: a classifier's top logit (a tie to the lower class, as numpy's argmax); a segmentation model's
    region of its largest non-background class, or the background's where nothing else is predicted. The engine's
    own rule (main_class of the scores, then cotangent_for) gives the same."""
    from localjudge.saliency.engine import cotangent_for
    from localjudge.vision.onnx_export import main_class_cotangent
    from localjudge.vision.torch_backend import class_scores

    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 5.0, 1.0]])
    assert main_class_cotangent(logits, "classification").tolist() == [[0, 1, 0], [1, 0, 0]]
    # image 0 predicts [[0, 2], [2, 1]] (class 2 the largest foreground); image 1 only background
    predicted = torch.tensor([[[0, 2], [2, 1]], [[0, 0], [0, 0]]])
    outputs = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    chosen = main_class_cotangent(outputs, "segmentation")
    expected = torch.zeros(2, 3, 2, 2)
    expected[0, 2] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    expected[1, 0] = 1.0
    assert torch.equal(chosen, expected)
    for task, out in (("classification", logits), ("segmentation", outputs)):
        targets = [main_class(row, task) for row in class_scores(out, task)]
        assert torch.equal(main_class_cotangent(out, task), cotangent_for(tuple(out.shape), task, targets, out, "cpu"))


class CountingSession:
    """ONNX Runtime's session, counting its runs (a wrapper of the third-party object, not of our code)."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run_with_iobinding(self, binding):
        self.runs += 1
        return self.session.run_with_iobinding(binding)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_one_onnx_run_predicts_and_explains_the_main_class(pictures):
    """On an exported graph, predicting and explaining the predicted class is one run of ONNX Runtime; a cotangent
    other than the graph's choice costs a second run and gives exactly the gradients asked for."""
    model = open_model(load_card("efficientnet-lite0"), None, "cpu", "onnx")
    assert model.chooses_main_class
    counting = CountingSession(model.session)
    model.session = model.gradient_session = counting
    batch = to_tensor(pictures[:4], model.card)
    scores, maps, _ = CamEngine("gradcam", model).predict_and_compute(batch)
    assert counting.runs == 1
    assert np.array_equal(scores, model.predict(batch))

    other = torch.zeros(4, 1000)
    other[:, 7] = 1.0  # class 7 for every image: the main class of none of them
    assert all(int(row.argmax()) != 7 for row in scores)
    counting.runs = 0
    _, activations, gradients, cotangent = model.outputs_and_gradients(batch, lambda outputs: other)
    assert counting.runs == 2 and torch.equal(cotangent, other)
    _, expected_activations, expected = model.activations_and_gradients(batch, other)
    assert torch.equal(gradients, expected) and torch.equal(activations, expected_activations)


def test_a_graph_that_cannot_choose_the_class_runs_twice_with_the_same_results(pictures):
    """A gradient graph without the `main` input (exported elsewhere, or by localjudge before EXPORT_GRAPH 2): the
    outputs first, then the gradient run; the same scores and maps as the one-run path, bit for bit. And a method
    without gradients is one plain run either way."""
    model = open_model(load_card("efficientnet-lite0"), None, "cpu", "onnx")
    counting = CountingSession(model.session)
    model.session = model.gradient_session = counting
    batch = to_tensor(pictures[:4], model.card)
    one = CamEngine("gradcam", model).predict_and_compute(batch)
    model.chooses_main_class = False  # as for a graph without `main`
    counting.runs = 0
    two = CamEngine("gradcam", model).predict_and_compute(batch)
    assert counting.runs == 2
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    counting.runs = 0
    CamEngine("eigencam", model).predict_and_compute(batch)
    assert counting.runs == 1
