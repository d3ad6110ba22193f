"""The ONNX Runtime engine from the command line: `run --backend onnx`, `models export`, bring-your-own ONNX with a
card, and `maps`."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from localjudge.store import Store, unpack_array
from localjudge.vision import load_card
from localjudge.vision.torch_backend import build_module, find_layer

from .conftest import invoke, invoke_json, seg_photos_manifest


@pytest.mark.slow
def test_onnx_backend_gives_the_torch_top1_on_all_500_images(tmp_path, imagenet_manifest):
    db = tmp_path / "backends.db"
    invoke("predict", imagenet_manifest, "--db", db, "--batch-size", "32", "--backend", "torch")
    stages = invoke_json("predict", imagenet_manifest, "--db", db, "--batch-size", "32", "--backend", "onnx")
    assert stages["predict"]["computed"] == 500  # another backend is another model for the store
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select image_sha256, backend, predicted_index from predictions").fetchall()
        provider = conn.execute("select execution_provider from runs where config like '%\"onnx\"%'").fetchone()[0]
    by_backend = {"torch": {}, "onnx": {}}
    for sha, backend, predicted in rows:
        by_backend[backend][sha] = predicted
    assert len(by_backend["torch"]) == len(by_backend["onnx"]) == 500
    assert by_backend["torch"] == by_backend["onnx"]
    assert provider == "CPUExecutionProvider"


def test_the_default_backend_is_onnx_runtime_where_it_is_installed_and_is_recorded(tmp_path, data_dir):
    """--backend auto: the test extra installs onnxruntime, onnx and onnxscript, so a CPU run settles on ONNX Runtime
    and records that, not "auto"; eval sanity (which randomises torch parameters) settles on torch."""
    from localjudge.vision import auto_backend

    assert auto_backend("cpu") == auto_backend("auto") == "onnx"  # no GPU here
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:2]
    manifest = tmp_path / "two.csv"
    manifest.write_text("path,label\n" + "".join(f"{data_dir / 'imagenet-sample' / r['file']},{r['imagenet_index']}\n"
                                                  for r in rows))
    db = tmp_path / "auto.db"
    invoke_json("predict", manifest, "--db", db)
    with sqlite3.connect(db) as conn:
        config = json.loads(conn.execute("select config from runs").fetchone()[0])
        backends = {r[0] for r in conn.execute("select backend from predictions")}
        provider = conn.execute("select execution_provider from runs").fetchone()[0]
    assert config["backend"] == "onnx" and backends == {"onnx"} and provider == "CPUExecutionProvider"
    again = invoke_json("predict", manifest, "--db", db, "--backend", "onnx")
    assert again["predict"]["computed"] == 0  # auto and onnx are the same model for the store
    # a store whose predictions were made on torch (before auto was the default) is read on torch, not made again
    older = tmp_path / "older.db"
    invoke_json("predict", manifest, "--db", older, "--backend", "torch")
    reused = invoke_json("explain", "--db", older)
    assert reused["explain"]["computed"] == 2  # the torch predictions found and explained
    with sqlite3.connect(older) as conn:
        settled = [json.loads(c)["backend"] for (c,) in conn.execute("select config from runs order by rowid")]
        assert {r[0] for r in conn.execute("select backend from predictions")} == {"torch"}
    assert settled == ["torch", "torch"]


def test_auto_falls_back_to_torch_where_onnx_runtime_cannot_run_the_model(tmp_path, data_dir, monkeypatch):
    """--backend auto without the exporter (one of onnxruntime, onnx, onnxscript missing) or, on a GPU, without
    onnxruntime-gpu's CUDA provider settles on torch, and the run records torch; with the provider it is ONNX
    Runtime. (The packages' absence is made by hiding them from importlib's finder; onnxruntime's providers list and
    torch's CUDA check are replaced for the GPU cases, which cannot run here.)"""
    import importlib.util

    import onnxruntime
    import torch

    from localjudge.vision import auto_backend

    find_spec = importlib.util.find_spec
    for hidden in ("onnxruntime", "onnx", "onnxscript"):
        with monkeypatch.context() as patch:
            patch.setattr(importlib.util, "find_spec", lambda name, package=None, hidden=hidden: None
                          if name == hidden else find_spec(name, package))
            assert auto_backend("cpu") == auto_backend("auto") == "torch", hidden
            if hidden == "onnxscript":  # and a run made so records the backend it settled on
                invoke_json("predict", seg_photos_manifest(data_dir, tmp_path / "one.csv", 1), "--db",
                            tmp_path / "fallback.db")
                with sqlite3.connect(tmp_path / "fallback.db") as conn:
                    config = json.loads(conn.execute("select config from runs").fetchone()[0])
                    assert config["backend"] == "torch"
                    assert {r[0] for r in conn.execute("select backend from predictions")} == {"torch"}
    cpu_only = [p for p in onnxruntime.get_available_providers() if p != "CUDAExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: cpu_only)  # onnxruntime, not -gpu
    assert auto_backend("cuda") == auto_backend("cuda:1") == "torch"  # a GPU asked for, no CUDA provider
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_backend("auto") == "torch"  # a GPU here, no CUDA provider: torch on the GPU
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *cpu_only])
    assert auto_backend("cuda") == auto_backend("auto") == auto_backend("cpu") == "onnx"


def test_models_export_writes_a_checked_graph_and_its_card(tmp_path):
    out = tmp_path / "lite0.onnx"
    result = invoke("models", "export", "efficientnet-lite0", "--out", out)
    assert "checked against torch" in result.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["task"] == "classification" and card["crop"] == 224 and card["mean"] == [0.485, 0.456, 0.406]
    assert card["onnx_names"]["gradients"] == "gradients" and card["onnx_file"] == "lite0.onnx"
    assert out.with_suffix(".labels.csv").is_file()
    assert card["source_weights_sha256"] == load_card("efficientnet-lite0").weights_sha256  # what the graph holds
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # image and cotangent: a dynamic batch; the flag choosing the main class's cotangent: one number
    assert [(i.name, i.shape) for i in session.get_inputs()] == [
        ("input", ["batch", 3, 224, 224]), ("cotangent", ["batch", 1000]), ("main", [1])]
    assert card["onnx_names"]["main"] == "main" and card["onnx_names"]["explained"] == "explained"


@pytest.fixture(scope="module")
def foreign_onnx(tmp_path_factory):
    """A graph exported elsewhere: logits and the activations only, no gradient, with a hand-written card."""
    folder = tmp_path_factory.mktemp("byo")
    card = load_card("resnet18")
    module = build_module(card, None)
    layer = find_layer(module, card.target_layer)

    class LogitsAndFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, x):
            captured = {}
            handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
            logits = self.model(x)
            handle.remove()
            return logits, captured["a"]

    path = folder / "classifier.onnx"
    torch.onnx.export(LogitsAndFeatures().eval(), (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                      input_names=["pixels"], output_names=["scores", "features"],
                      dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}, "features": {0: "n"}})
    card_path = folder / "classifier-card.json"
    fields = {k: v for k, v in card.__dict__.items() if k != "card_path"}
    fields.update(name="hospital-classifier", framework="onnx", weights="onnx", mean=list(card.mean),
                  std=list(card.std), labels=str(Path(card.card_path).parent / card.labels),
                  onnx_names={"input": "pixels", "output": "scores", "activations": "features"})
    card_path.write_text(json.dumps(fields))
    return path, card_path


def test_bring_your_own_onnx_offers_only_the_methods_its_graph_supports(tmp_path, foreign_onnx, data_dir):
    graph, card = foreign_onnx
    manifest = tmp_path / "m.csv"
    rows = list(csv.DictReader(open(data_dir / "imagenet-sample" / "labels.csv", newline="")))[:3]
    manifest.write_text("path,label\n" + "".join(f"{data_dir / 'imagenet-sample' / r['file']},{r['imagenet_index']}\n"
                                                  for r in rows))
    db = tmp_path / "byo.db"
    assert invoke_json("predict", manifest, "--db", db, "--model", graph, "--card", card)["predict"]["computed"] == 3
    assert invoke_json("explain", "--db", db, "--model", graph, "--card", card, "--cam", "eigencam"
                       )["explain"]["computed"] == 3
    refused = invoke("explain", "--db", db, "--model", graph, "--card", card, "--cam", "gradcam", expect_ok=False)
    assert refused.exit_code == 1
    assert "needs the gradient" in refused.output and "eigencam" in refused.output
    with sqlite3.connect(db) as conn:
        assert {m for (m,) in conn.execute("select distinct model from predictions")} == {"hospital-classifier"}
        assert {b for (b,) in conn.execute("select distinct backend from predictions")} == {"onnx"}


def test_maps_writes_every_stored_map_with_an_index(tmp_path, data_dir):
    rows = list(csv.DictReader(open(data_dir / "imagenet-sample" / "labels.csv", newline="")))[:3]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{data_dir / 'imagenet-sample' / r['file']},{r['wnid']}\n"
                                                  for r in rows))
    db = tmp_path / "maps.db"
    invoke("predict", manifest, "--db", db)
    invoke("explain", "--db", db, "--cam", "gradcam")
    invoke("explain", "--db", db, "--cam", "layercam")
    out = tmp_path / "maps"
    assert "wrote 6 maps" in invoke("maps", "--db", db, "--out", out).output
    index = list(csv.DictReader(open(out / "index.csv", newline="")))
    assert len(index) == 6
    assert set(index[0]) >= {"image_path", "image_sha256", "model", "backend", "method", "target_class", "file"}
    store = Store(db)
    for entry in index:
        saved = np.load(out / entry["file"])
        assert saved.dtype == np.float32 and saved.shape == (224, 224)
        row = next(store.query("select map, height, width, target_index from saliency_maps where id = ?",
                               [entry["file"][:-4]]))
        assert np.array_equal(saved, unpack_array(row["map"], (row["height"], row["width"])))
        assert int(entry["target_class"]) == row["target_index"] and entry["backend"] == "onnx"  # the default here


def test_a_cached_export_is_verified_by_its_bytes_and_its_graph_names_the_predictions(tmp_path, data_dir,
                                                                                      monkeypatch):
    """The export cache is not trusted by its card's existence: a same-size change to the graph, with its mtime
    restored, is caught when the export is taken from the cache and the graph exported again; the graph's sha256 is
    part of the model's identity on ONNX Runtime, and so of every prediction's key (issue 20)."""
    import os
    import warnings

    from localjudge.store import sha256_file
    from localjudge.vision import exported_card, model_hash, resolve_card

    monkeypatch.setenv("LOCALJUDGE_HOME", str(tmp_path / "home"))  # a cache of this test's own
    card = resolve_card("efficientnet-lite0")
    weights = "sha256:" + card.weights_sha256
    exported = exported_card(card, None, weights)
    graph = Path(exported.card_path).with_suffix(".onnx")
    assert exported.onnx_sha256 == sha256_file(graph)
    identity = model_hash(card, None, sha256_file, "onnx")
    assert identity == f"localjudge-onnx-v1:{weights}:graph-sha256:{exported.onnx_sha256}"

    stat = graph.stat()
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle of the weights: same size
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sha256_file(graph) != exported.onnx_sha256
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = exported_card(card, None, weights)
    assert any("not the graph its card names" in str(w.message) for w in caught)
    assert sha256_file(graph) == again.onnx_sha256  # exported again, and verified
    assert again.onnx_sha256 == exported.onnx_sha256  # the export is byte for byte the same here

    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    manifest = tmp_path / "one.csv"
    manifest.write_text(f"path,label\n{data_dir / 'imagenet-sample' / row['file']},{row['imagenet_index']}\n")
    db = tmp_path / "graph.db"
    invoke_json("predict", manifest, "--db", db, "--backend", "onnx")
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("select model_hash from predictions").fetchone()
    assert stored == identity
