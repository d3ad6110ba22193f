"""Export a registered torch model to ONNX with everything the CAM family needs and no autograd at run time.

The graph takes the image batch, a cotangent on the model's output and a flag `main`, and returns the output, the
target layer's activations A, d<explained, output>/dA and `explained`: the cotangent given where main is 0, where it
is 1 the one the graph chooses from its own output for the image's main class (a one-hot of a classifier's top
logit; a segmentation model's region of its largest non-background class: `vision.main_class` and
`saliency.engine.cotangent_for`'s rule, read from logits rather than scores, so the backend checks the choice). So
predicting and explaining the predicted class is one run, not a forward to learn the class and then a second to
explain it.

Why this shape rather than a separate head graph: the gradient is traced inside the same graph, so ONNX Runtime
computes it in the same pass as the forward, from activations it already holds, and only the ops after the target
layer are differentiated (a few percent of a forward); a split graph would copy A between two sessions and needs a
head extracted by hand per architecture. The trick that makes autograd
exportable at all (see shared/docs/architecture.md): trace the function with make_fx into plain aten ops, then
export that graph with the dynamo exporter; symbolic tracing keeps the batch dimension dynamic."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .cards import ModelCard
from .torch_backend import build_module, prepare_target

ONNX_NAMES = {"input": "input", "cotangent": "cotangent", "main": "main", "output": "output",
              "activations": "activations", "gradients": "gradients", "explained": "explained"}
# Largest |onnx - torch| relative to the largest |torch|. Outputs and activations must agree to 1e-3. Gradients
# through bilinear upsampling (segmentation heads) go through ScatterND(add) in ONNX Runtime, which drifts up to
# ~3e-2 of the largest value on DeepLabv3 while keeping the gradient's pattern (Pearson > 0.9997); the maps built
# from it are tested against pytorch-grad-cam. So gradients must agree to 5e-2 and correlate to 0.999.
TOLERANCE = {"output": 1e-3, "activations": 1e-3, "gradients": 5e-2}
MIN_GRADIENT_CORRELATION = 0.999


class ExportError(UserError):
    pass


def main_class_cotangent(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """The cotangent explaining each image's main class, from the model's own outputs, in ops ONNX has (no one_hot,
    no indexing by a tensor). Ties go to the lowest class, as numpy's and ONNX's argmax break them."""
    classes = torch.arange(outputs.shape[1], device=outputs.device)
    if task == "segmentation":  # the region of the class with the largest predicted area other than the background
        regions = outputs.argmax(dim=1)[:, None] == classes[None, :, None, None]
        counts = regions.flatten(2).to(torch.float32).sum(dim=2)
        foreground = counts[:, 1:]
        main = torch.where(foreground.sum(dim=1) > 0, foreground.argmax(dim=1) + 1, counts.argmax(dim=1))
        return (regions & (classes[None, :, None, None] == main[:, None, None, None])).to(outputs.dtype)
    return (classes[None, :] == outputs.argmax(dim=1)[:, None]).to(outputs.dtype)


class _OutputsWithGradient(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module, task: str):
        super().__init__()
        self.model = model
        self.layer = layer
        self.task = task

    def forward(self, x, cotangent, main):
        captured = {}
        handle = self.layer.register_forward_hook(lambda module, inputs, output: captured.setdefault("a", output))
        try:
            output = self.model(x)
        finally:
            handle.remove()
        activations = captured["a"]
        # a blend rather than a branch: the graph has no control flow, and main is exactly 0 or 1
        explained = main * main_class_cotangent(output.detach(), self.task) + (1 - main) * cotangent
        (gradients,) = torch.autograd.grad(output, activations, grad_outputs=explained)
        return output, activations, gradients, explained


def _contiguous_outputs(module: torch.nn.Module) -> list:
    # Autograd differentiates a view of a non-contiguous tensor (ConvNeXt's permute -> flatten) with as_strided
    # ops that have no ONNX form; making every module's output contiguous avoids them and costs nothing for
    # outputs that already are.
    return [m.register_forward_hook(lambda _m, _i, out: out.contiguous() if isinstance(out, torch.Tensor) else out)
            for m in module.modules()]


def _convolution_input_gradient(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                                output_padding, groups, output_mask):
    """convolution_backward has no ONNX form; the gradient with respect to the input is a transposed convolution
    with the same weights (ONNX ConvTranspose). Only that gradient is ever asked for here (the weights are
    constants of the graph), which is what segmentation heads after the target layer need."""
    if transposed or output_mask[1] or output_mask[2]:
        return NotImplemented
    spatial = range(len(stride))
    if all(st == 1 for st in stride) and all(d * (weight.shape[2 + i] - 1) >= padding[i]
                                              for i, d in zip(spatial, dilation)):
        # Stride 1: a plain convolution with the flipped, in/out-swapped kernel. ONNX Runtime's ConvTranspose
        # drifts (2.8e-2 relative) with DeepLab's dilated ASPP kernels; its Conv does not.
        out_channels, in_per_group = weight.shape[0], weight.shape[1]
        kernel = weight.flip(*[2 + i for i in spatial])
        kernel = kernel.reshape(groups, out_channels // groups, in_per_group, *weight.shape[2:]).transpose(1, 2)
        kernel = kernel.reshape(groups * in_per_group, out_channels // groups, *weight.shape[2:])
        flipped_padding = [dilation[i] * (weight.shape[2 + i] - 1) - padding[i] for i in spatial]
        grad_input = torch.ops.aten.convolution.default(grad_output, kernel, None, list(stride), flipped_padding,
                                                        list(dilation), False, [0] * len(stride), groups)
        return grad_input, None, None
    extra = [input.shape[2 + i] - ((grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                   + dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in spatial]
    grad_input = torch.ops.aten.convolution.default(grad_output, weight, None, stride, padding, dilation, True,
                                                    extra, groups)
    return grad_input, None, None


def decompositions() -> dict:
    table = dict(torch._decomp.core_aten_decompositions())
    table[torch.ops.aten.convolution_backward.default] = _convolution_input_gradient
    return table


def trace(card: ModelCard, weights: Path | None, static_batch: int | None = None):
    """The model and its exportable function (x, cotangent, main) -> (output, activations, gradients, explained); with a
    static_batch the trace is concrete (much faster for window-attention models such as MaxViT, whose symbolic
    trace takes many minutes) and the graph takes batches of exactly that size."""
    from torch.fx.experimental.proxy_tensor import make_fx

    module = build_module(card, weights)
    wrapper = _OutputsWithGradient(module, prepare_target(module, card), card.task).eval()

    def outputs_with_gradient(x, cotangent, main):
        with torch.enable_grad():
            return wrapper(x.detach().requires_grad_(False), cotangent, main)

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        output_shape = module(torch.zeros(1, 3, card.crop, card.crop)).shape[1:]
    # The symbolic trace gives equal sizes one symbol: a batch the size of the head (a 2-class model traced at batch
    # 2) would be fixed with it, so the example batch is a size no other dimension has.
    batch = static_batch or next(b for b in (2, 3, 5, 7, 11) if b not in (*output_shape, card.crop, 3))
    x = torch.randn(batch, 3, card.crop, card.crop, generator=generator)
    cotangent = torch.randn(x.shape[0], *output_shape, generator=generator)
    main = torch.ones(1)
    handles = _contiguous_outputs(module)
    mode = {"tracing_mode": "real"} if static_batch else {"tracing_mode": "symbolic", "_allow_non_fake_inputs": True}
    try:
        graph = make_fx(outputs_with_gradient, decomposition_table=decompositions(),
                        **mode)(x, cotangent, main)
    finally:
        for handle in handles:
            handle.remove()
    return graph, outputs_with_gradient, (x, cotangent, main), tuple(output_shape)


def export_onnx(card: ModelCard, weights: Path | None, out: Path, static_batch: int | None = None) -> Path:
    """Write OUT (.onnx) and its card OUT.json; refuse (and remove the file) if ONNX Runtime disagrees with torch."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    static_batch = static_batch or card.export_batch
    graph, reference, example, output_shape = trace(card, weights, static_batch)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = None if static_batch else ({0: batch}, {0: batch}, None)
    chatter = io.StringIO()  # the exporter prints its progress; keep the CLI's output ours
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, example, dynamo=True,
                input_names=[ONNX_NAMES["input"], ONNX_NAMES["cotangent"], ONNX_NAMES["main"]],
                output_names=[ONNX_NAMES["output"], ONNX_NAMES["activations"], ONNX_NAMES["gradients"],
                              ONNX_NAMES["explained"]],
                dynamic_shapes=dynamic, optimize=True)
            program.save(str(out))
    except Exception as error:
        raise ExportError(f"{card.name}: ONNX export failed ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:300]})") from error
    try:
        check_against_torch(out, reference, output_shape, card, static_batch)
    except ExportError:
        out.unlink(missing_ok=True)
        raise
    write_card(card, out, weights)
    return out


def check_against_torch(path: Path, reference, output_shape, card: ModelCard, static_batch: int | None) -> None:
    import onnxruntime

    from .onnx_backend import has_reducing_scatter

    # checked as it runs: the outputs on all threads, the gradients of a graph that accumulates in a scatter on one
    # (onnx_backend)
    plain = session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if has_reducing_scatter(path):  # a second session only where it runs apart (a large graph takes long to load)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    size = static_batch or 4  # a dynamic graph is checked at a batch size the trace (2, 3, 5, ...) never has
    x = torch.randn(size, 3, card.crop, card.crop, generator=generator)
    cotangent = torch.randn(size, *output_shape, generator=generator)
    inputs = {ONNX_NAMES["input"]: x.numpy(), ONNX_NAMES["cotangent"]: cotangent.numpy()}
    given = session.run(None, {**inputs, ONNX_NAMES["main"]: np.zeros(1, np.float32)})
    expected = [t.detach().numpy() for t in reference(x, cotangent, torch.zeros(1))[:3]]
    compare(path, given[:3], expected)
    if plain is not session:  # the outputs as predict makes them, where the gradients run apart
        compare(path, plain.run([ONNX_NAMES["output"], ONNX_NAMES["activations"]],
                                {**inputs, ONNX_NAMES["main"]: np.zeros(1, np.float32)}), expected[:2])
    # main = 1: the graph's choice must be exactly what the torch function chooses from the graph's own outputs (from
    # torch's, a pixel where two classes tie within float error could go either way), and its gradients torch's
    # for that choice
    chosen = session.run(None, {**inputs, ONNX_NAMES["main"]: np.ones(1, np.float32)})
    wanted = main_class_cotangent(torch.from_numpy(chosen[0]), card.task).numpy()
    if not np.array_equal(chosen[3], wanted):
        raise ExportError(f"{path}: the graph explains other classes than its outputs' main classes; export refused")
    compare(path, chosen[:3], [t.detach().numpy() for t in reference(x, torch.from_numpy(wanted), torch.zeros(1))[:3]])


def compare(path: Path, actual: list, expected: list) -> None:
    for name, got, want in zip(("output", "activations", "gradients"), actual, expected):
        if got.shape != want.shape:
            raise ExportError(f"{path}: {name} has shape {got.shape} in ONNX Runtime, {want.shape} in torch")
        error = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-12))
        if not error <= TOLERANCE[name]:
            raise ExportError(f"{path}: {name} differs from torch by {error:.2e} (relative); export refused")
        if name == "gradients" and np.abs(want).max() > 0:
            correlation = float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
            if not correlation >= MIN_GRADIENT_CORRELATION:
                raise ExportError(f"{path}: gradients correlate with torch's only to {correlation:.5f}; "
                                  "export refused")


def write_card(card: ModelCard, onnx_path: Path, weights: Path | None = None) -> Path:
    """The card beside the graph, with a copy of the label list, so the pair can be moved as one, and the sha256 of
    the weights the graph holds (none for a seeded random initialisation)."""
    from . import embedded_weights_path
    from ..store import sha256_file

    source = weights or embedded_weights_path(card)
    source_labels = Path(card.card_path).parent / card.labels
    labels = onnx_path.with_suffix(".labels" + (source_labels.suffix or ".txt"))
    if source_labels.resolve() != labels.resolve():  # a card of one's own beside its graph already has it there
        shutil.copyfile(source_labels, labels)
    fields = {k: v for k, v in card.__dict__.items() if k != "card_path"}
    fields.update({
        "framework": "onnx", "weights": "onnx", "onnx_file": onnx_path.name, "onnx_names": dict(ONNX_NAMES),
        "mean": list(card.mean), "std": list(card.std), "labels": labels.name,
        "description": f"{card.name} exported to ONNX by localjudge. {card.description}",
        "source_weights_sha256": sha256_file(Path(source)) if source else card.source_weights_sha256,
        "random_weights": card.random_weights or (source is None and card.framework != "onnx"),
        "onnx_sha256": sha256_file(onnx_path),
    })
    card_path = onnx_path.with_suffix(".json")
    card_path.write_text(json.dumps(fields, indent=2) + "\n")
    return card_path
