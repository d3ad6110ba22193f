"""The reference vision backend: the model in PyTorch, CAMs through pytorch-grad-cam's hooks."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .cards import ModelCard, WeightsError, embedded_weights_path


class RandomWeightsWarning(UserWarning):
    pass


def build_module(card: ModelCard, weights: Path | None) -> torch.nn.Module:
    """The card's architecture with as many outputs as its label list names, and its weights (the given file, the
    embedded ones, else seeded random ones, which the caller has been asked for: vision.require_weights)."""
    classes = len(card.label_list().names)
    if card.framework == "efficientnet-lite-pytorch":
        from efficientnet_lite_pytorch import EfficientNet

        module = EfficientNet.from_name(card.architecture, num_classes=classes)
    elif card.framework == "torchvision":
        import torchvision

        # Seeded so a model without weights is the same model on every run (its predictions are keyed by it).
        with torch.random.fork_rng():
            torch.manual_seed(0)
            extra = {"weights_backbone": None, "aux_loss": False} if card.task == "segmentation" else {}
            module = torchvision.models.get_model(card.architecture, weights=None, num_classes=classes, **extra)
        module = ARCHITECTURE_WRAPPERS.get(card.architecture, lambda m: m)(module)
    else:
        raise WeightsError(f"{card.card_path}: unknown framework {card.framework!r}")
    weights = weights or embedded_weights_path(card)
    if weights is not None:
        load_state_dict(module, weights, f"{card.architecture} with {classes} classes ({card.labels})")
    else:
        warnings.warn(f"{card.name}: no --weights given, so its weights are random (seeded); its predictions and "
                      "maps mean nothing. Pass --weights FILE for an audit.", RandomWeightsWarning, stacklevel=2)
    if card.task == "segmentation":
        module = SegmentationOutput(module)
    return module.eval()


class DenseNetWithReLU(torch.nn.Module):
    """torchvision's DenseNet with the ReLU after its last BatchNorm (`features.norm5`) as a module of its own
    (`relu`), where torchvision applies it as a function in `forward`: the same computation and the same state dict
    keys, and a module the card can name as the one that applies the target tensor's activation (see
    `prepare_target`), so the target is the post-ReLU map the classifier pools (CheXNet's)."""

    def __init__(self, densenet: torch.nn.Module):
        super().__init__()
        self.features = densenet.features
        self.relu = torch.nn.ReLU()
        self.classifier = densenet.classifier

    def forward(self, x):
        out = self.relu(self.features(x))
        out = torch.nn.functional.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


# Architectures rebuilt around torchvision's module so their target tensor is some module's output.
ARCHITECTURE_WRAPPERS = {name: DenseNetWithReLU for name in ("densenet121", "densenet161", "densenet169",
                                                               "densenet201")}


def load_state_dict(module: torch.nn.Module, weights: Path, expected: str = "this architecture") -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error).upper():  # not a refused object: a damaged or foreign file
            raise WeightsError(f"{weights}: not a loadable state dict ({str(error).splitlines()[0][:300]})") from error
        # Loading with weights_only=False would run whatever the file's pickle asks for; it is never done.
        raise WeightsError(f"{weights}: refused: the file holds pickled Python objects beyond tensors, which could "
                           "run code when loaded; save a plain state dict (torch.save(model.state_dict(), path)) "
                           f"and pass that ({str(error).splitlines()[-1].strip()[:200]})") from error
    except Exception as error:  # torch raises several types for a bad file; all mean the same to a user
        raise WeightsError(f"{weights}: not a loadable state dict ({error})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{weights}: not a state dict (a mapping of parameter names to tensors)")
    # Segmentation checkpoints carry an auxiliary head used only in training; DataParallel saves add "module.".
    state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    mismatch = state_mismatch(module.state_dict(), state)
    if mismatch:
        raise WeightsError(f"{weights}: does not fit {expected}: {mismatch}")
    module.load_state_dict(state, strict=True)


def state_mismatch(expected: dict, given: dict, shown: int = 5) -> str:
    """What keeps a state dict from loading into a module, in words: the keys missing from the file, the keys the
    module does not have, and the tensors whose shapes differ (with a hint where only the classifier's differ);
    "" when it fits."""
    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(expected[k].shape) != tuple(given[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing from the file ({listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({listed(unexpected)})")
    if shapes:
        parts.append("shapes differ: " + "; ".join(f"{k}: file {list(given[k].shape)}, model "
                                                  f"{list(expected[k].shape)}" for k in shapes[:shown])
                     + (f" and {len(shapes) - shown} more" if len(shapes) > shown else ""))
        # only the classifier differs: every differing tensor is one output per class, the file's and the model's
        classes = {expected[k].shape[0] for k in shapes if expected[k].ndim >= 1}
        if not missing and not unexpected and len(classes) == 1 and all(given[k].ndim >= 1 for k in shapes) and all(
                tuple(given[k].shape[1:]) == tuple(expected[k].shape[1:]) for k in shapes):
            heads = {given[k].shape[0] for k in shapes}
            if len(heads) == 1:
                parts.append(f"the file's head has {heads.pop()} outputs: pass --labels FILE naming that many "
                             "classes (one per line, or CSV index,name[,description])")
    return "; ".join(parts)


def find_layer(module: torch.nn.Module, dotted: str) -> torch.nn.Module:
    layer = module
    for part in dotted.split("."):
        try:
            layer = getattr(layer, part)  # also finds numbered children of Sequential, ModuleList, ModuleDict
        except AttributeError:
            raise WeightsError(f"no layer {dotted!r} in {type(module).__name__} (at {part!r})") from None
    return layer


ACTIVATIONS = {"relu": (torch.nn.functional.relu, 0.0, float("inf")),  # cards.TARGET_ACTIVATIONS: (fn, range)
               "relu6": (torch.nn.functional.relu6, 0.0, 6.0)}


class ReappliedActivation(torch.nn.Module):
    """An idempotent activation (relu, relu6) as the architecture's own module, applied again after the target
    tensor was made post-activation: the same values everywhere (where the input already lies in the activation's
    range, the input itself), and there the gradient passes unchanged, bounds included. The plain activation would
    zero the gradient where the target tensor sits exactly on a bound (0 for most of a ReLU6 map, 6 where it
    saturates), which is not the gradient of the head after that tensor (for GAP + linear: w_k / hw everywhere)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.function, self.low, self.high = ACTIVATIONS[name]

    def forward(self, x):
        return torch.where((x >= self.low) & (x <= self.high), x, self.function(x))


def prepare_target(module: torch.nn.Module, card: ModelCard) -> torch.nn.Module:
    """The module whose output, as the rest of the model sees it, is the card's target tensor. Where the card names
    an activation, a forward hook applies it to that output for good and the architecture's own module that
    applies it next becomes a `ReappliedActivation`; the model's outputs stay bit for bit what they were, and every
    later hook (ours, pytorch-grad-cam's, the ONNX export's) sees the post-activation tensor and its gradient."""
    layer = find_layer(module, card.target_layer)
    if card.target_activation:
        function = ACTIVATIONS[card.target_activation][0]
        example = torch.randn(1, 3, card.crop, card.crop, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = module(example)
        layer.register_forward_hook(lambda _module, _inputs, output: function(output))
        parent_name, _, name = card.activation_module.rpartition(".")
        parent = find_layer(module, parent_name) if parent_name else module
        find_layer(module, card.activation_module)  # a clear error where the card names no such module
        setattr(parent, name, ReappliedActivation(card.target_activation))
        with torch.no_grad():
            after = module(example)
        if not torch.equal(before, after):  # the card's claim, checked: the activation is applied right after
            raise WeightsError(f"{card.card_path}: applying {card.target_activation} to {card.target_layer} changes "
                               f"the model's outputs: {card.activation_module} does not apply it right after "
                               "that layer; fix target_activation and activation_module")
    return layer


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here (use --device cpu or auto)")
    return chosen


class SegmentationOutput(torch.nn.Module):
    """torchvision segmentation models return {"out": ..., "aux": ...}; the audit needs the main output only."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


class _LeafAtLayer:
    """Forward hook that makes the target layer's output a fresh leaf of the autograd graph and switches gradient
    recording on from there: the layers before it run as plain inference, and the backward pass covers only the
    head after it, instead of pytorch-grad-cam's full forward with autograd on every layer."""

    def __init__(self, layer: torch.nn.Module, track_gradient: bool):
        self.track_gradient = track_gradient
        self.activations: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        leaf = output.detach()
        if self.track_gradient:
            torch.set_grad_enabled(True)
            leaf.requires_grad_(True)
        self.activations = leaf
        return leaf.clone() if self.track_gradient else leaf  # a clone: in-place ops after it must not touch the leaf


class TorchVisionModel:
    """VisionModel on PyTorch; `module` and `target_layer` are also what pytorch-grad-cam hooks into."""

    backend = "torch"
    provides_gradients = True

    def __init__(self, card: ModelCard, weights: Path | None = None, device: str = "auto"):
        self.card = card
        self.device = resolve_device(device)
        self.module = build_module(card, weights).to(self.device)
        self.target_layer = prepare_target(self.module, card)
        self.source = f"the torch model {card.name}"
        self.execution_provider = f"torch:{self.device.type}"
        self._output_shape: tuple[int, ...] | None = None

    @torch.inference_mode()
    def forward_outputs(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch.to(self.device)).float()

    def output_shape(self, batch: torch.Tensor) -> tuple[int, ...]:
        if self._output_shape is None:
            self._output_shape = tuple(self.forward_outputs(batch[:1]).shape[1:])
        return self._output_shape

    def predict(self, batch: torch.Tensor) -> np.ndarray:
        return class_scores(self.forward_outputs(batch), self.card.task)

    def activations_and_gradients(self, batch: torch.Tensor, cotangent: torch.Tensor | None):
        """Model output, target-layer activations and d<cotangent, output>/d(activations) (None without one)."""
        outputs, activations, gradients, _ = self.outputs_and_gradients(batch, lambda outputs: cotangent,
                                                                        cotangent is not None)
        return outputs, activations, gradients

    def outputs_and_gradients(self, batch: torch.Tensor, cotangent_for, gradients: bool = True):
        """One forward pass: the model's outputs, the target layer's activations, and (with `gradients`) the
        gradient of <cotangent, outputs> with respect to them, the cotangent chosen by `cotangent_for(outputs)` from
        this pass's own outputs, so predicting a class and explaining it cost one forward pass. Returns the outputs,
        the activations, the gradients (or None) and the cotangent."""
        hook = _LeafAtLayer(self.target_layer, track_gradient=gradients)
        try:
            with torch.no_grad():
                outputs = self.module(batch.to(self.device))
            activations = hook.activations
            cotangent = cotangent_for(outputs.detach().float())
            found = None
            if gradients:
                (found,) = torch.autograd.grad(outputs, activations, grad_outputs=cotangent.to(outputs.dtype))
        finally:
            hook.handle.remove()
        return outputs.detach().float(), activations.detach().float(), found, cotangent


def class_scores(outputs: torch.Tensor, task: str) -> np.ndarray:
    """Per-image class scores: softmax of a classifier's logits (a multilabel model's: a sigmoid each); for
    segmentation, each class's share of the image's pixels by the predicted mask (the main object is the class with
    the largest non-background share)."""
    if task == "segmentation":
        predicted = outputs.argmax(dim=1).flatten(1)
        counts = torch.nn.functional.one_hot(predicted, outputs.shape[1]).sum(dim=1).float()
        return (counts / predicted.shape[1]).cpu().numpy()
    if task == "multilabel":  # one sigmoid per class, as the model was trained
        return torch.sigmoid(outputs.float()).cpu().numpy()
    return torch.softmax(outputs.float(), dim=1).cpu().numpy()
