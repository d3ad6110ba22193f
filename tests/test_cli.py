"""The CLI on real images: accuracy of the embedded classifier, the stages on their own, what a changed parameter
redoes, the parse-failure path, and clear errors for bad input."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys

import pytest
import torch
import torchvision

from localjudge.store import Store

from .conftest import invoke, invoke_json, write_manifest


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory, data_dir):
    rows = list(csv.DictReader(open(data_dir / "imagenet-sample" / "labels.csv", newline="")))[:4]
    folder = tmp_path_factory.mktemp("small")
    return write_manifest(folder / "four.csv", [
        {"path": str(data_dir / "imagenet-sample" / r["file"]), "label": r["wnid"]} for r in rows])


@pytest.mark.slow
def test_predict_efficientnet_lite0_top1_on_imagenet_sample(tmp_path, imagenet_manifest):
    db = tmp_path / "imagenet.db"
    invoke("predict", imagenet_manifest, "--db", db, "--batch-size", "32")
    summary = invoke_json("summary", "--db", db)
    assert summary["images"] == 500 and summary["predictions"] == 500 and summary["labelled_predictions"] == 500
    assert summary["top1_accuracy"] >= 0.75, summary["top1_accuracy"]
    with sqlite3.connect(db) as conn:
        top5, correct, predicted = conn.execute("select top5, correct, predicted_index from predictions").fetchone()
    top5 = json.loads(top5)
    assert len(top5) == 5 and top5[0]["index"] == predicted
    assert all(a["probability"] >= b["probability"] for a, b in zip(top5, top5[1:]))


def test_stages_on_their_own_and_a_changed_parameter_redoes_only_what_depends_on_it(
        tmp_path, small_manifest, tiny_vlms_bpe512):
    db = tmp_path / "stages.db"
    assert invoke_json("predict", small_manifest, "--db", db)["predict"]["computed"] == 4
    assert invoke_json("explain", "--db", db)["explain"]["computed"] == 4
    qwen = tiny_vlms_bpe512["qwen2_5_vl"]
    assert invoke_json("judge", "--db", db, "--vlm", qwen)["judge"]["computed"] == 4
    before = Store(db).row_counts()
    # The heatmap mode is a new judgment of the same maps: no prediction or map is recomputed.
    heatmap = invoke_json("run", small_manifest, "--db", db, "--vlm", qwen, "--image-mode", "heatmap")
    assert not heatmap["predict"]["model_loaded"] and not heatmap["explain"]["model_loaded"]
    assert heatmap["judge"]["computed"] == 4
    # So is another beta.
    assert invoke_json("judge", "--db", db, "--vlm", qwen, "--beta", "0.4")["judge"]["computed"] == 4
    after = Store(db).row_counts()
    assert after["predictions"] == before["predictions"] == 4 and after["saliency_maps"] == 4
    assert after["judgments"] == before["judgments"] + 8
    assert after["prompts"] == 2
    matrices = invoke_json("matrix", "--db", db)["matrices"]
    # a heatmap overlay reads no beta: its setting holds none
    assert sorted((m["image_mode"], m["beta"] or 0) for m in matrices) == [("heatmap", 0), ("masked", 0.4),
                                                                           ("masked", 0.6)]
    text = invoke("matrix", "--db", db, "--image-mode", "heatmap").output
    assert "heatmap" in text and "correct" in text and "wrong" in text


def test_unparseable_answers_are_stored_as_failures_and_not_counted(tmp_path, small_manifest, tiny_vlms_bpe512):
    db = tmp_path / "fail.db"
    # Eight new tokens cannot hold the JSON object: every answer is cut off.
    stages = invoke_json("run", small_manifest, "--db", db, "--vlm", tiny_vlms_bpe512["gemma3"],
                         "--max-new-tokens", "8")
    assert stages["judge"]["failed"] == 4
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select status, failure_kind, score, raw_text, error, output_tokens from judgments").fetchall()
    assert len(rows) == 4
    for status, kind, score, raw, error, output_tokens in rows:
        assert (status, kind, score) == ("failed", "parse", None)
        assert raw.startswith("{") and "cut off at --max-new-tokens 8" in error and output_tokens == 8
    summary = invoke_json("summary", "--db", db)
    assert summary["judgments_failed"] == 4 and summary["judgments_succeeded"] == 0
    assert invoke_json("matrix", "--db", db)["matrices"] == []
    # A parse failure is an answer, not a crash: running again does not retry it.
    again = invoke_json("run", small_manifest, "--db", db, "--vlm", tiny_vlms_bpe512["gemma3"], "--max-new-tokens", "8")
    assert not again["judge"]["model_loaded"]


def test_transformers_judge_without_a_vlm_is_a_usage_error(tmp_path, small_manifest):
    result = invoke("judge", "--db", tmp_path / "none.db", "--judge", "transformers", expect_ok=False)
    assert result.exit_code == 2 and "--judge transformers needs --vlm DIR" in result.output


def test_user_weights_for_a_torchvision_model(tmp_path, small_manifest):
    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    db = tmp_path / "resnet.db"
    # torch: the weights' own hash (ONNX Runtime prefixes its export format; test_onnx_cli covers that backend)
    invoke("predict", small_manifest, "--db", db, "--model", "resnet18", "--weights", weights, "--backend", "torch")
    invoke("predict", small_manifest, "--db", db, "--model", "resnet18", "--random-weights",
           "--backend", "torch")  # seeded: other rows
    with sqlite3.connect(db) as conn:
        hashes = {h for (h,) in conn.execute("select distinct model_hash from predictions")}
    assert len(hashes) == 2 and any(h.startswith("sha256:") for h in hashes)


def test_bad_weights_file_is_a_clear_error(tmp_path, small_manifest):
    weights = tmp_path / "broken.pt"
    weights.write_text("not a state dict")
    result = invoke("predict", small_manifest, "--db", tmp_path / "w.db", "--model", "resnet18", "--weights",
                    weights, expect_ok=False)
    assert result.exit_code == 1
    assert "broken.pt" in result.output and "not a loadable state dict" in result.output
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    result = invoke("predict", small_manifest, "--db", tmp_path / "w.db", "--model", "resnet18", "--weights",
                    wrong, expect_ok=False)
    assert "wrong.pt" in result.output and "does not fit" in result.output


def test_unsupported_vlm_is_refused_before_any_work(tmp_path, small_manifest):
    vlm = tmp_path / "llama"
    vlm.mkdir()
    (vlm / "config.json").write_text('{"model_type": "llama"}')
    db = tmp_path / "v.db"
    result = invoke("run", small_manifest, "--db", db, "--vlm", vlm, expect_ok=False)
    assert result.exit_code == 1 and "'llama' is not supported" in result.output
    assert Store(db).row_counts()["predictions"] == 0


def test_unknown_model_lists_the_known_ones(tmp_path, small_manifest):
    result = invoke("predict", small_manifest, "--db", tmp_path / "m.db", "--model", "vgg", expect_ok=False)
    assert "unknown model 'vgg'" in result.output and "efficientnet-lite0" in result.output


def test_models_list():
    cards = json.loads(invoke("models", "list", "--json").stdout)
    names = {c["name"] for c in cards}
    assert {"efficientnet-lite0", "resnet18", "efficientnet_b1", "convnext_tiny", "maxvit_t"} <= names
    lite0 = next(c for c in cards if c["name"] == "efficientnet-lite0")
    assert lite0["task"] == "classification" and lite0["crop"] == 224 and lite0["target_layer"]


@pytest.mark.parametrize("program", [[sys.executable, "-m", "localjudge"], ["localjudge"]])
def test_both_entry_points(program):
    if program == ["localjudge"]:
        program = [str(__import__("pathlib").Path(sys.executable).with_name("localjudge"))]
    result = subprocess.run(program + ["models", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "efficientnet-lite0" in result.stdout


def test_a_corrected_label_updates_correctness_without_new_rows(tmp_path, small_manifest, data_dir):
    db = tmp_path / "labels.db"
    invoke("predict", small_manifest, "--db", db)
    first = invoke_json("summary", "--db", db)
    rows = list(csv.DictReader(open(small_manifest, newline="")))
    # Relabel every image with the class the model did not predict (tench, index 0, is wrong for three of four).
    relabelled = write_manifest(tmp_path / "relabelled.csv", [{"path": r["path"], "label": "0"} for r in rows])
    again = invoke_json("predict", relabelled, "--db", db)
    assert not again["predict"]["model_loaded"]
    second = invoke_json("summary", "--db", db)
    assert second["predictions"] == first["predictions"] == 4
    assert second["top1_accuracy"] != first["top1_accuracy"]
    with sqlite3.connect(db) as conn:
        labels = {label for (label,) in conn.execute("select label from images")}
    assert labels == {"0"}


def test_a_changed_file_is_never_explained_as_the_picture_it_replaced(tmp_path, data_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    source = data_dir / "seg-photos" / "images"
    (folder / "a.jpg").write_bytes((source / "coco_000000000009.jpg").read_bytes())
    db = tmp_path / "changed.db"
    invoke("predict", folder, "--db", db)
    (folder / "a.jpg").write_bytes((source / "coco_000000000073.jpg").read_bytes())  # same path, other picture
    stages = invoke_json("explain", "--db", db)
    assert stages["explain"]["computed"] == 0 and stages["explain"]["failed"] == 1
    assert "changed since it was ingested" in stages["explain"]["errors"][0]["reason"]
    assert Store(db).row_counts()["saliency_maps"] == 0


def test_an_unlabelled_source_keeps_the_labels_and_paths_are_absolute(tmp_path, small_manifest, data_dir,
                                                                      monkeypatch):
    db = tmp_path / "keep.db"
    invoke("predict", small_manifest, "--db", db)
    folder = tmp_path / "plain"
    folder.mkdir()
    for row in csv.DictReader(open(small_manifest, newline="")):
        (folder / row["path"].rsplit("/", 1)[-1]).symlink_to(row["path"])
    monkeypatch.chdir(tmp_path)
    invoke("predict", "plain", "--db", db)  # a relative folder, no labels
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select path, label from images").fetchall()
    assert all(label for _, label in rows)
    assert all(path.startswith(str(tmp_path / "plain")) for path, _ in rows)


def test_judge_image_size_is_part_of_a_judgment(tmp_path, small_manifest, tiny_vlms_bpe512):
    db = tmp_path / "size.db"
    qwen = tiny_vlms_bpe512["qwen2_5_vl"]
    invoke("run", small_manifest, "--db", db, "--vlm", qwen)
    again = invoke_json("judge", "--db", db, "--vlm", qwen, "--judge-image-size", "224")
    assert again["judge"]["computed"] == 4
    assert len(invoke_json("matrix", "--db", db)["matrices"]) == 2


def test_clear_errors_for_a_missing_database_an_empty_folder_and_a_missing_gpu(tmp_path, small_manifest):
    result = invoke("summary", "--db", tmp_path / "none.db", expect_ok=False)
    assert result.exit_code == 1 and "no such database" in result.output
    assert not (tmp_path / "none.db").exists()
    not_a_db = tmp_path / "x.db"
    not_a_db.write_text("hello")
    assert "not a localjudge database" in invoke("matrix", "--db", not_a_db, expect_ok=False).output
    (tmp_path / "empty").mkdir()
    assert "no images found" in invoke("predict", tmp_path / "empty", "--db", tmp_path / "e.db",
                                       expect_ok=False).output
    if not torch.cuda.is_available():
        result = invoke("predict", small_manifest, "--db", tmp_path / "g.db", "--device", "cuda", expect_ok=False)
        assert "no CUDA GPU" in result.output
