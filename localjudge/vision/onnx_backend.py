"""The ONNX Runtime backend: CUDAExecutionProvider when onnxruntime-gpu and a GPU are there, the CPU otherwise.

Inputs and outputs go through IO binding to torch tensors on the provider's device, so a batch, its activations and
its gradients stay on the GPU between ONNX Runtime and the CAM methods; on the CPU the same binding is zero-copy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .cards import CardError, ModelCard
from .torch_backend import class_scores

# "main" and "explained" are bound only where the graph has them (localjudge's exports since EXPORT_GRAPH 2)
DEFAULT_NAMES = {"input": "input", "output": "output", "activations": "activations", "main": "main",
                 "explained": "explained"}


def onnx_path(card: ModelCard) -> Path:
    path = Path(card.onnx_file)
    if not path.is_absolute():
        path = Path(card.card_path).parent / path
    return path


class OnnxVisionModel:
    backend = "onnx"

    def __init__(self, card: ModelCard, device: str = "auto"):
        import onnxruntime

        self.card = card
        self.path = onnx_path(card)
        if not self.path.is_file():
            raise CardError(f"{self.path}: ONNX file not found (named by the card {card.card_path})")
        self.names = {**DEFAULT_NAMES, **(card.onnx_names or {})}
        self.provides_gradients = bool(self.names.get("gradients") and self.names.get("cotangent"))
        self.source = f"the ONNX graph {self.path.name}"
        available = onnxruntime.get_available_providers()
        want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if want_cuda and "CUDAExecutionProvider" not in available:
            if device.startswith("cuda"):
                raise CardError("--device cuda with the onnx backend needs onnxruntime-gpu "
                                "(pip install 'localjudge[onnx-gpu]'); providers here: " + ", ".join(available))
            want_cuda = False
        device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        providers = ([("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"] if want_cuda
                     else ["CPUExecutionProvider"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = int(os.environ.get("LOCALJUDGE_ORT_THREADS", "0"))
        # On the CPU the run's vision stage and its judge (the recognizer) run their sessions at once on the same
        # cores; threads that spin while waiting for work take the cores the other session needs (measured: 26.0
        # images/s against 24.8 with spinning, scripts/bench_run.py, 500 photos on 2 cores). $LOCALJUDGE_ORT_SPIN=1
        # lets them spin (a machine with cores to spare).
        if not want_cuda and os.environ.get("LOCALJUDGE_ORT_SPIN") != "1":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        self.execution_provider = self.session.get_providers()[0]
        # ONNX Runtime's CPU ScatterND/ScatterElements with reduction="add" (the gradient of a bilinear upsampling,
        # as in DeepLab's head) race when run on several threads: the same map came out up to 1 % different from
        # run to run. Gradients of such a graph run on a one-thread session; everything else keeps all threads.
        self.gradient_session = self.session
        if self.execution_provider == "CPUExecutionProvider" and options.intra_op_num_threads != 1 and (
                has_reducing_scatter(self.path)):
            single = onnxruntime.SessionOptions()
            single.log_severity_level = 3
            single.intra_op_num_threads = 1
            self.gradient_session = onnxruntime.InferenceSession(str(self.path), single, providers=providers)
        on_gpu = self.execution_provider == "CUDAExecutionProvider"
        self.device = torch.device("cuda", device_id) if on_gpu else torch.device("cpu")
        self._outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self._inputs = {i.name for i in self.session.get_inputs()}
        # a graph exported by localjudge since EXPORT_GRAPH 2 can choose the main class's cotangent itself
        self.chooses_main_class = (self.provides_gradients and self.names.get("main") in self._inputs
                                   and self.names.get("explained") in self._outputs)
        input_batch = next(i.shape[0] for i in self.session.get_inputs() if i.name == self.names["input"])
        # Graphs exported with a fixed batch (often 1) are fed in chunks of that size, the last one padded.
        self.fixed_batch = input_batch if isinstance(input_batch, int) else None
        for role in ("output", "activations"):
            if self.names[role] not in self._outputs:
                raise CardError(f"{card.card_path}: the graph has no output {self.names[role]!r} ({role}); "
                                f"its outputs: {', '.join(self._outputs)}")
        classes, named = self._outputs[self.names["output"]][1:2], len(card.label_list().names)
        if classes and isinstance(classes[0], int) and classes[0] != named:
            raise CardError(f"{self.path}: the graph has {classes[0]} outputs, its labels "
                            f"({card.labels}) name {named} classes; pass --labels FILE naming {classes[0]}")

    def _static_shape(self, name: str, batch: int) -> tuple[int, ...] | None:
        dims = self._outputs[name]
        rest = dims[1:]
        return (batch, *rest) if all(isinstance(d, int) for d in rest) else None

    def _run(self, batch: torch.Tensor, cotangent: torch.Tensor | None, wanted: list[str],
             main: bool = False) -> list[torch.Tensor]:
        size = self.fixed_batch
        if size is None or batch.shape[0] == size:
            return self._run_once(batch, cotangent, wanted, main)
        parts = []
        for start in range(0, batch.shape[0], size):
            chunk = batch[start:start + size]
            pad = size - chunk.shape[0]
            chunk_cotangent = None if cotangent is None else cotangent[start:start + size]
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))])
                if chunk_cotangent is not None:
                    chunk_cotangent = torch.cat(
                        [chunk_cotangent, chunk_cotangent.new_zeros((pad, *chunk_cotangent.shape[1:]))])
            parts.append([t[:size - pad] for t in self._run_once(chunk, chunk_cotangent, wanted, main)])
        return [torch.cat(tensors) for tensors in zip(*parts)]

    def _run_once(self, batch: torch.Tensor, cotangent: torch.Tensor | None, wanted: list[str],
                  main: bool = False) -> list[torch.Tensor]:
        session = self.gradient_session if cotangent is not None or main else self.session
        binding = session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        x = batch.to(self.device, torch.float32).contiguous()
        binding.bind_input(self.names["input"], kind, index, np.float32, tuple(x.shape), x.data_ptr())
        keep = [x]  # the bound buffers must outlive the run
        if self.names.get("cotangent") in self._inputs:
            if cotangent is None:
                shape = self._static_shape(self.names["output"], x.shape[0])
                if shape is None:
                    raise CardError(f"{self.source}: a cotangent input needs an output of fixed size")
                cotangent = torch.zeros(shape, device=self.device)
            c = cotangent.to(self.device, torch.float32).contiguous()
            binding.bind_input(self.names["cotangent"], kind, index, np.float32, tuple(c.shape), c.data_ptr())
            keep.append(c)
        if self.names.get("main") in self._inputs:
            flag = torch.full((1,), 1.0 if main else 0.0, device=self.device)
            binding.bind_input(self.names["main"], kind, index, np.float32, (1,), flag.data_ptr())
            keep.append(flag)
        results: list[torch.Tensor | None] = []
        for name in wanted:
            shape = self._static_shape(name, x.shape[0])
            if shape is None:  # a graph with dynamic output dims: let ONNX Runtime allocate, copy afterwards
                binding.bind_output(name, kind, index)
                results.append(None)
            else:
                buffer = torch.empty(shape, dtype=torch.float32, device=self.device)
                binding.bind_output(name, kind, index, np.float32, shape, buffer.data_ptr())
                results.append(buffer)
        session.run_with_iobinding(binding)
        allocated = binding.get_outputs()
        return [r if r is not None else torch.from_numpy(allocated[i].numpy()).to(self.device)
                for i, r in enumerate(results)]

    def output_shape(self, batch: torch.Tensor) -> tuple[int, ...]:
        shape = self._static_shape(self.names["output"], 1)
        if shape is None:
            shape = tuple(self._run(batch[:1], None, [self.names["output"]])[0].shape)
        return shape[1:]

    def forward_outputs(self, batch: torch.Tensor) -> torch.Tensor:
        return self._run(batch, None, [self.names["output"]])[0]

    def predict(self, batch: torch.Tensor) -> np.ndarray:
        return class_scores(self.forward_outputs(batch), self.card.task)

    def activations_and_gradients(self, batch: torch.Tensor, cotangent: torch.Tensor | None):
        names = [self.names["output"], self.names["activations"]]
        if cotangent is not None:
            if not self.provides_gradients:
                raise CardError(f"{self.source} provides no gradient output")
            names.append(self.names["gradients"])
        outputs = self._run(batch, cotangent, names)
        return outputs[0], outputs[1], outputs[2] if cotangent is not None else None

    def outputs_and_gradients(self, batch: torch.Tensor, cotangent_for, gradients: bool = True):
        """As the torch backend's, but the graph takes the cotangent as an input. Without gradients, one plain run.
        A graph that can choose the main class's cotangent itself does so in the same run as the outputs; that
        choice is a guess, kept only where it equals `cotangent_for(outputs)` (the caller's rule: its classes come
        from the scores, the graph's from the logits, which tie differently at saturation) for the whole batch,
        else the batch's gradients run again for the caller's cotangent. Another graph runs twice: the outputs
        first, then the gradients of the cotangent chosen from them."""
        if not gradients:
            outputs, activations = self._run(batch, None, [self.names["output"], self.names["activations"]])
            return outputs, activations, None, cotangent_for(outputs)
        if not self.chooses_main_class:
            outputs = self.forward_outputs(batch)
            cotangent = cotangent_for(outputs)
            _, activations, found = self.activations_and_gradients(batch, cotangent)
            return outputs, activations, found, cotangent
        names = [self.names[role] for role in ("output", "activations", "gradients", "explained")]
        outputs, activations, found, guessed = self._run(batch, None, names, main=True)
        cotangent = cotangent_for(outputs)
        if not torch.equal(cotangent.to(guessed.device, guessed.dtype), guessed):
            _, _, found = self.activations_and_gradients(batch, cotangent)
        return outputs, activations, found, cotangent


def has_reducing_scatter(path: Path) -> bool:
    """Whether the graph holds a ScatterND or ScatterElements that accumulates (reduction other than none)."""
    try:
        import onnx
    except ImportError:  # cannot look inside: assume the worst, and keep gradients on one thread
        return True
    graph = onnx.load(str(path), load_external_data=False).graph
    for node in graph.node:
        if node.op_type in ("ScatterND", "ScatterElements"):
            if any(a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute):
                return True
    return False
