"""The hospital's own model: any number of classes from the user's labels, weights that do not fit named key by key,
random weights refused unless asked for (and then said everywhere), a card written from the command line, DenseNet121
at its post-ReLU target on both backends, and a real trained 2-class model audited end to end."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
import torchvision

from localjudge.data import LabelList, LabelsError
from localjudge.store import unpack_array
from localjudge.vision import load_card, open_model, with_labels
from localjudge.vision.preprocess import to_tensor

from .conftest import invoke, invoke_json, write_manifest
from .own_models import dog_manifest, imagenet_rows, is_dog, make_dog_model
from .test_report import open_report


def test_label_lists_one_per_line_or_csv_with_descriptions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("Atelectasis\nCardiomegaly\n\n")
    found = LabelList.from_file(plain)
    assert found.names == ("Atelectasis", "Cardiomegaly") and found.description(1) == ""
    table = tmp_path / "table.csv"
    table.write_text("index,name,description\n1,Cardiomegaly,an enlarged cardiac silhouette\n0,Atelectasis,\n")
    found = LabelList.from_file(table)
    assert found.names == ("Atelectasis", "Cardiomegaly")  # in index order, not file order
    assert found.description(1) == "an enlarged cardiac silhouette" and found.description(0) == ""
    assert found.names_digest() == LabelList.from_file(plain).names_digest()  # the same classes, other words
    gap = tmp_path / "gap.csv"
    gap.write_text("index,name\n0,a\n2,b\n")
    with pytest.raises(LabelsError, match=r"gap\.csv: the indices must be 0 to 1"):
        LabelList.from_file(gap)
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("0,normal\n1,tuberculosis\n")
    with pytest.raises(LabelsError, match=r"headerless\.csv: a CSV label list needs a header"):
        LabelList.from_file(headerless)
    hole = tmp_path / "hole.txt"
    hole.write_text("a\n\nb\n")
    with pytest.raises(LabelsError, match=r"hole\.txt: class 1 has no name"):
        LabelList.from_file(hole)


@pytest.fixture(scope="module")
def three_photos(tmp_path_factory, data_dir):
    rows = imagenet_rows(data_dir)
    picked = [r for r in rows if is_dog(r)][:2] + [r for r in rows if not is_dog(r)][:1]
    return dog_manifest(data_dir, picked, tmp_path_factory.mktemp("three") / "three.csv")


@pytest.fixture(scope="module")
def two_class_resnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resnet2")
    module = torchvision.models.resnet18(weights=None, num_classes=2)
    torch.save(module.state_dict(), folder / "two.pt")
    (folder / "two.txt").write_text("not dog\ndog\n")
    (folder / "three.txt").write_text("a\nb\nc\n")
    return folder


def test_weights_that_do_not_fit_name_the_keys_and_shapes(tmp_path, three_photos, two_class_resnet):
    weights = two_class_resnet / "two.pt"
    result = invoke("predict", three_photos, "--db", tmp_path / "a.db", "--model", "resnet18", "--weights", weights,
                    expect_ok=False)
    assert result.exit_code == 1
    assert "fc.weight: file [2, 512], model [1000, 512]" in result.output and "fc.bias: file [2], model [1000]" in \
        result.output
    assert "head has 2 outputs: pass --labels FILE" in result.output
    wrong = invoke("predict", three_photos, "--db", tmp_path / "a.db", "--model", "resnet18", "--weights", weights,
                   "--labels", two_class_resnet / "three.txt", expect_ok=False)
    assert "resnet18 with 3 classes" in wrong.output and "model [3, 512]" in wrong.output
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    missing = invoke("predict", three_photos, "--db", tmp_path / "a.db", "--model", "resnet18", "--weights", other,
                     expect_ok=False)
    assert "unexpected keys (layer1.2.conv1.weight" in missing.output
    # the labels that fit: 2 classes, named from the file, stored by name
    fits = invoke_json("predict", three_photos, "--db", tmp_path / "a.db", "--model", "resnet18", "--weights",
                       weights, "--labels", two_class_resnet / "two.txt")
    assert fits["predict"]["computed"] == 3
    with sqlite3.connect(tmp_path / "a.db") as conn:
        labels = {row[0] for row in conn.execute("select predicted_label from predictions")}
        probs = [unpack_array(row[0], (-1,), np.float32) for row in conn.execute("select probs from predictions")]
    assert labels <= {"dog", "not dog"} and all(p.shape == (2,) for p in probs)


def test_a_card_for_your_own_model_from_the_command_line(tmp_path, three_photos, two_class_resnet):
    out = tmp_path / "cards" / "mine.json"
    written = invoke("models", "card", "resnet18", "--labels", two_class_resnet / "two.txt", "--weights",
                     two_class_resnet / "two.pt", "--out", out)
    assert "2 classes, checked against" in written.output
    card = load_card(str(out))
    assert (card.name, card.architecture, card.weights, card.target_layer) == ("mine", "resnet18", "user", "layer4")
    assert card.label_list().names == ("not dog", "dog") and (tmp_path / "cards" / card.labels).is_file()
    refused = invoke("models", "card", "resnet18", "--labels", two_class_resnet / "three.txt", "--weights",
                     two_class_resnet / "two.pt", "--out", tmp_path / "bad.json", expect_ok=False)
    assert refused.exit_code == 1 and "head has 2 outputs" in refused.output
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob("bad.labels*"))  # nothing written
    assert invoke_json("predict", three_photos, "--db", tmp_path / "m.db", "--model", out, "--weights",
                       two_class_resnet / "two.pt")["predict"]["computed"] == 3


def test_random_weights_are_refused_unless_asked_for_and_then_said_everywhere(tmp_path, three_photos, tiny_vlms_bpe512,
                                                                             browser):
    db = tmp_path / "r.db"
    refused = invoke("run", three_photos, "--db", db, "--model", "resnet18", expect_ok=False)
    assert refused.exit_code == 1 and "--random-weights" in refused.output and "--weights FILE" in refused.output
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from predictions").fetchone()[0] == 0
    labels = tmp_path / "dogs.txt"
    labels.write_text("not dog\ndog\n")
    both = invoke("run", three_photos, "--db", db, "--model", "resnet18", "--random-weights", "--weights",
                  tmp_path / "dogs.txt", expect_ok=False)
    assert both.exit_code == 1 and "give one or the other" in both.output
    # the images labelled by index in the user's list: only that list can name them
    by_index = tmp_path / "by-index.csv"
    by_index.write_text("".join(line if n == 0 else line.replace(",not dog", ",0").replace(",dog", ",1")
                                for n, line in enumerate(three_photos.read_text().splitlines(keepends=True))))
    run = ["--model", "resnet18", "--random-weights", "--labels", labels]
    invoke_json("run", by_index, "--db", db, *run, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--max-new-tokens", "256")
    with sqlite3.connect(db) as conn:
        config = json.loads(conn.execute("select config from runs where command = 'run'").fetchone()[0])
    assert config["random_weights"] is True and config["labels"] == str(labels)
    found = invoke_json("matrix", "--db", db)["matrices"]
    assert found and all(m["model_weights"] == "random weights" for m in found)
    text = invoke("matrix", "--db", db).output
    assert "resnet18 (random weights)" in text and "describes a seeded random network" in text
    exported = json.loads(invoke("export", "--db", db, "--format", "json").stdout)
    assert exported and {row["model_weights"] for row in exported} == {"random weights"}
    invoke("report", "--db", db, "--out", tmp_path / "report")
    page, _ = open_report(browser, tmp_path / "report")
    assert "Random weights: resnet18" in page.inner_text("#weights")
    page.close()
    data = json.loads((tmp_path / "report" / "data.js").read_text().split(" = ", 1)[1].rstrip().rstrip(";"))
    shown = {row[data["fields"].index("label")] for row in data["rows"]}
    assert shown == {"dog", "not dog"}  # labels 0 and 1 by the run's own label list, not the card's ImageNet names
    assert "random weights" in invoke("summary", "--db", db).output
    # a trained model's outputs say nothing of the kind
    lite = tmp_path / "lite.db"
    invoke_json("run", three_photos, "--db", lite, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--max-new-tokens", "256")
    assert all(m["model_weights"] is None for m in invoke_json("matrix", "--db", lite)["matrices"])
    assert "random" not in invoke("matrix", "--db", lite).output


@pytest.mark.slow
@pytest.mark.parametrize("classes", [14])  # CheXNet's 14 findings (2 classes: the dog model's path; 46 s saved)
def test_densenet121_on_both_backends_at_its_post_relu_target(tmp_path, data_dir, classes):
    """CheXNet's architecture with a head of the user's size (seeded random weights, asked for by name): the target
    is relu(features.norm5), the map its classifier pools; `models export` and a run on each backend agree."""
    from localjudge.data import load_rgb

    labels = tmp_path / "findings.txt"
    labels.write_text("".join(f"finding {i}\n" for i in range(classes)))
    card = with_labels(load_card("densenet121"), labels)
    assert card.target_tensor == "relu(features.norm5)"
    rows = imagenet_rows(data_dir)[::100][:4]
    batch = to_tensor([load_rgb(data_dir / "imagenet-sample" / r["file"]) for r in rows], card)
    on_torch = open_model(card, None, "cpu", "torch")
    reference = torchvision.models.densenet121(weights=None, num_classes=classes)
    reference.load_state_dict(on_torch.module.state_dict())  # torchvision's own forward on the same weights
    with torch.no_grad():
        assert torch.allclose(on_torch.forward_outputs(batch), reference.eval()(batch), atol=1e-5)
    _, activations, _ = on_torch.activations_and_gradients(batch, None)
    assert activations.min() >= 0 and (activations == 0).any()  # post-ReLU
    graph = tmp_path / "dn.onnx"
    refused = invoke("models", "export", "densenet121", "--labels", labels, "--out", graph, expect_ok=False)
    assert refused.exit_code == 1 and "--random-weights" in refused.output
    invoke("models", "export", "densenet121", "--labels", labels, "--random-weights", "--out", graph)
    manifest = write_manifest(tmp_path / "four.csv", [{"path": str(data_dir / "imagenet-sample" / r["file"]),
                                                       "label": ""} for r in rows])
    maps = {}
    for name, model in {"torch": ["--model", "densenet121", "--labels", labels], "onnx": ["--model", graph]}.items():
        db = tmp_path / f"{name}.db"
        for stage in (["predict", manifest], ["explain", "--cam", "gradcam++"]):
            invoke_json(*stage, "--db", db, *model, "--random-weights")
        with sqlite3.connect(db) as conn:
            maps[name] = {sha: unpack_array(blob, (h, w)) for sha, blob, h, w in conn.execute(
                "select image_sha256, map, height, width from saliency_maps where method = 'gradcam++'")}
            assert {t for (t,) in conn.execute("select distinct target_layer from saliency_maps")} == {
                "relu(features.norm5)"}
    assert maps["torch"].keys() == maps["onnx"].keys() and len(maps["torch"]) == 4
    pearson = [float(np.corrcoef(maps["torch"][k].ravel(), maps["onnx"][k].ravel())[0, 1]) for k in maps["torch"]]
    assert np.isfinite(pearson).all(), pearson  # a flat map has no correlation: it must not pass unseen
    worst = min(pearson)
    assert worst >= 0.99, f"Grad-CAM++ torch vs ONNX Runtime: worst Pearson {worst:.4f}"
    # the graph holds random weights: refused without asking, and said when asked
    alone = invoke("predict", manifest, "--db", tmp_path / "x.db", "--model", graph, expect_ok=False)
    assert alone.exit_code == 1 and "exported from a seeded random network" in alone.output
    assert all(m["model_weights"] == "random weights" for m in invoke_json("summary", "--db", tmp_path / "onnx.db"
                                                                          )["models"])
    wrong = tmp_path / "three.txt"
    wrong.write_text("a\nb\nc\n" if classes != 3 else "a\nb\n")
    mismatch = invoke("predict", manifest, "--db", tmp_path / "y.db", "--model", graph, "--labels", wrong,
                      "--random-weights", expect_ok=False)
    assert mismatch.exit_code == 1 and f"the graph has {classes} outputs" in mismatch.output


@pytest.mark.slow
def test_a_trained_two_class_model_is_audited_end_to_end_on_both_backends(tmp_path, data_dir, tiny_vlms_bpe512):
    """A real model: Lite0's real features with a logistic-regression head fitted here (dog / not dog) on the even
    rows of imagenet-sample; audited on held-out odd rows, as a user would: a card from the command line, a run on
    torch, an export and a run on ONNX Runtime."""
    rows = imagenet_rows(data_dir)
    weights, labels = make_dog_model(data_dir, tmp_path / "model", rows[0:400:2])
    held_out = [r for r in rows[1::2] if is_dog(r)][:4] + [r for r in rows[1::2] if not is_dog(r)][:4]
    manifest = dog_manifest(data_dir, held_out, tmp_path / "held-out.csv")
    card = tmp_path / "dogs.json"
    invoke("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--out", card)
    judge = ["--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--max-new-tokens", "256"]
    on_torch = invoke_json("run", manifest, "--db", tmp_path / "torch.db", "--model", card, "--weights", weights,
                           "--backend", "torch", *judge)
    assert on_torch["predict"]["computed"] == 8 and on_torch["explain"]["computed"] == 8
    summary = invoke_json("summary", "--db", tmp_path / "torch.db")
    accuracy = summary["models"][0]["top1_accuracy"]
    assert accuracy >= 0.75, f"the fitted head is a real classifier: held-out accuracy {accuracy}"
    found = invoke_json("matrix", "--db", tmp_path / "torch.db")["matrices"]
    assert len(found) == 1 and found[0]["model_weights"] is None
    assert sum(found[0]["counts"].values()) + sum(found[0]["unlabelled"].values()) == found[0]["judgments"]
    graph = tmp_path / "dogs.onnx"
    invoke("models", "export", card, "--weights", weights, "--out", graph)
    assert load_card(str(graph.with_suffix(".json"))).label_list().names == ("not dog", "dog")
    on_onnx = invoke_json("run", manifest, "--db", tmp_path / "onnx.db", "--model", graph, *judge)
    assert on_onnx["predict"]["computed"] == 8
    with sqlite3.connect(tmp_path / "torch.db") as a, sqlite3.connect(tmp_path / "onnx.db") as b:
        torch_labels = dict(a.execute("select image_sha256, predicted_label from predictions"))
        onnx_labels = dict(b.execute("select image_sha256, predicted_label from predictions"))
    assert torch_labels == onnx_labels  # the same classifier on both engines
    assert set(torch_labels.values()) <= {"dog", "not dog"}
    # without a card: the registered architecture with --weights and --labels predicts the same
    invoke_json("predict", manifest, "--db", tmp_path / "plain.db", "--model", "efficientnet-lite0", "--weights",
                weights, "--labels", labels, "--backend", "torch")
    with sqlite3.connect(tmp_path / "plain.db") as conn:
        assert dict(conn.execute("select image_sha256, predicted_label from predictions")) == torch_labels


def test_the_head_hint_only_when_only_the_classifier_differs():
    from localjudge.vision.torch_backend import state_mismatch

    model = {"conv.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10)}
    head = {**model, "fc.weight": torch.zeros(2, 8), "fc.bias": torch.zeros(2)}
    assert "the file's head has 2 outputs" in state_mismatch(model, head)
    # a wider backbone differs in the first dimension of other tensors too: no claim about the head
    wider = {"conv.weight": torch.zeros(2, 3, 3, 3), "fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}
    found = state_mismatch(model, wider)
    assert "conv.weight: file [2, 3, 3, 3], model [8, 3, 3, 3]" in found and "head has" not in found
    assert state_mismatch(model, dict(model)) == ""


@pytest.fixture(scope="module")
def multilabel_model(tmp_path_factory, data_dir):
    """The real multilabel model of the seg-photos' categories (own_models.make_multilabel_model), made once."""
    from .own_models import make_multilabel_model, seg_rows

    out = tmp_path_factory.mktemp("multilabel")
    weights, labels, classes = make_multilabel_model(data_dir, out, seg_rows(data_dir))
    card = out / "objects.json"
    invoke("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--task", "multilabel",
           "--out", card)
    return {"weights": weights, "labels": labels, "classes": classes, "card": card}


@pytest.mark.slow
def test_a_multilabel_model_gets_a_map_and_a_judgment_per_finding(tmp_path, data_dir, tiny_vlms_bpe512):
    """A real multilabel model: one logistic head per category on Lite0's real features, fitted on the seg-photos
    (17 of which show several labelled objects). Every finding of an image (sigmoid >= 0.5) gets its own map and
    judgment, told that finding's name; each is right or wrong by the image's labels; the matrix counts findings."""
    from .own_models import make_multilabel_model, objects_of, seg_rows

    rows = seg_rows(data_dir)
    weights, labels, classes = make_multilabel_model(data_dir, tmp_path / "model", rows)
    several = [r for r in rows if len(objects_of(r)) > 1][:4]
    picked = several + [r for r in rows if len(objects_of(r)) == 1][:2]
    manifest = write_manifest(tmp_path / "six.csv", [{"path": str(data_dir / "seg-photos" / r["file"]),
                                                       "label": ";".join(objects_of(r))} for r in picked])
    card = tmp_path / "objects.json"
    invoke("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--task", "multilabel",
           "--out", card)
    db = tmp_path / "multi.db"
    stages = invoke_json("run", manifest, "--db", db, "--model", card, "--weights", weights,
                         "--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--max-new-tokens", "256")
    with sqlite3.connect(db) as conn:
        probs = [unpack_array(b, (-1,), np.float32) for (b,) in conn.execute("select probs from predictions")]
        maps = conn.execute("select s.image_sha256, s.target_index, p.label_indices from saliency_maps s "
                            "join predictions p on p.id = s.prediction_id").fetchall()
        judged = conn.execute("select j.saliency_id, s.target_index from judgments j join saliency_maps s "
                              "on s.id = j.saliency_id").fetchall()
    findings = {}
    for p in probs:
        assert not np.isclose(p.sum(), 1.0) or len(p) == 1  # a sigmoid per class, not a softmax
    for sha, target, _ in maps:
        findings.setdefault(sha, set()).add(target)
    expected = sum(int((p >= 0.5).sum()) for p in probs)
    assert len(maps) == expected == stages["explain"]["computed"] and len(judged) == expected
    assert max(len(f) for f in findings.values()) >= 2  # an image with several objects: several maps
    # the fitted heads find the labelled objects of the images they were fitted on
    right = sum(target in json.loads(indices) for _, target, indices in maps)
    assert right >= 0.75 * len(maps)
    found = invoke_json("matrix", "--db", db)["matrices"]
    assert len(found) == 1 and sum(found[0]["counts"].values()) == len(judged) - sum(
        found[0]["unlabelled"].values())
    assert found[0]["counts"]["CH"] + found[0]["counts"]["CL"] == right
    per = {f["finding"]: f for f in found[0]["by_finding"]}
    with sqlite3.connect(db) as conn:
        names = dict(conn.execute("select target_label, count(*) from saliency_maps group by target_label"))
    assert {name: f["judgments"] for name, f in per.items()} == names and set(names) <= set(classes)
    assert "per finding" in invoke("matrix", "--db", db).output
    exported = json.loads(invoke("export", "--db", db, "--format", "json").stdout)
    assert len(exported) == len(judged) and {row["target_label"] for row in exported} == set(names)
    # explain on its own finds every map made
    assert invoke_json("explain", "--db", db, "--model", card, "--weights", weights)["explain"]["computed"] == 0


@pytest.mark.slow
def test_missed_findings_are_explained_and_wrong_and_regions_are_per_finding(tmp_path, data_dir, tiny_vlms_bpe512,
                                                                            multilabel_model):
    """--targets labelled: each labelled finding the model misses gets its map and judgment too, and counts as wrong
    (the model's call disagrees with the label); a found finding is right where it is labelled. With each mask's
    class (--mask-label-column), a map is measured against its own finding's mask only: the map of a person on a
    photo whose mask is the horse gets no region score. What is a target follows the newest run's threshold and
    --targets, for every stored map (an unlabelled photo's findings included)."""
    from .own_models import objects_of, seg_rows

    rows = seg_rows(data_dir)
    classes = multilabel_model["classes"]
    picked = [r for r in rows if len(objects_of(r)) > 1][:3] + [r for r in rows if len(objects_of(r)) == 1][:2]
    # the last photo is also labelled with a category it does not show: a finding the model should miss
    shown = objects_of(picked[-1])
    absent = next(c for c in ("cat", "bus", "chair", "bird") if c in classes and c not in shown)
    # the third photo is unlabelled: its targets are its findings, right or wrong by nothing
    manifest = write_manifest(tmp_path / "five.csv", [
        {"path": str(data_dir / "seg-photos" / r["file"]),
         "label": "" if r is picked[2] else ";".join(objects_of(r) + ([absent] if r is picked[-1] else [])),
         "mask": str(data_dir / "seg-photos" / r["mask"]), "finding": objects_of(r)[0]} for r in picked])
    db = tmp_path / "missed.db"
    model = ("--model", multilabel_model["card"], "--weights", multilabel_model["weights"])
    invoke_json("run", manifest, "--db", db, *model, "--targets", "labelled", "--vlm", tiny_vlms_bpe512["qwen2_5_vl"],
                "--max-new-tokens", "256", "--mask-column", "mask", "--mask-label-column", "finding")
    with sqlite3.connect(db) as conn:
        predictions = conn.execute("select id, probs, label_indices from predictions").fetchall()
        maps = conn.execute("select id, prediction_id, target_index, target_label, finding, target_probability "
                            "from saliency_maps").fetchall()
        judged = dict(conn.execute("select saliency_id, score from judgments where status = 'ok'").fetchall())
        asked = {sid for (sid,) in conn.execute("select saliency_id from judgments")}  # answered or not
        scored = dict(conn.execute("select saliency_id, iou from region_scores").fetchall())
        masks = dict(conn.execute("select i.sha256, g.label from ground_truth g join images i on "
                                  "i.sha256 = g.image_sha256").fetchall())
        image_of = dict(conn.execute("select id, image_sha256 from saliency_maps").fetchall())
    # every finding and every labelled class is a target, and each map says which it is
    expected, found_at = set(), {}
    for pid, blob, indices in predictions:
        probs = unpack_array(blob, (-1,), np.float32)
        found_at[pid] = probs
        expected |= {(pid, int(i)) for i in set(np.flatnonzero(probs >= 0.5)) | set(json.loads(indices or "[]"))}
    assert {(m[1], m[2]) for m in maps} == expected
    for _, pid, target, _, finding, probability in maps:
        assert finding == int(found_at[pid][target] >= 0.5) and probability == pytest.approx(found_at[pid][target])
    missed = [m for m in maps if m[4] == 0]
    failed = [m[3] for m in maps if m[0] not in judged]
    assert absent in {m[3] for m in missed}  # the premise: the model does not see a cat (or bus...) on this photo
    labelled = {pid: set(json.loads(indices)) for pid, _, indices in predictions if indices}
    unlabelled = {pid for pid, _, indices in predictions if not indices}
    assert len(unlabelled) == 1
    right = sum(m[4] == 1 and m[2] in labelled[m[1]] for m in maps if m[0] in judged and m[1] in labelled)
    wrong = sum(m[4] == 0 or m[2] not in labelled[m[1]] for m in maps if m[0] in judged and m[1] in labelled)
    matrix = invoke_json("matrix", "--db", db)["matrices"][0]
    counts = matrix["counts"]
    assert counts["CH"] + counts["CL"] == right and counts["WH"] + counts["WL"] == wrong >= 1, failed
    assert sum(matrix["unlabelled"].values()) == sum(m[1] in unlabelled for m in maps if m[0] in judged) >= 1
    assert {f["finding"] for f in matrix["by_finding"]} == {m[3] for m in maps if m[0] in judged}
    exported = json.loads(invoke("export", "--db", db, "--format", "json").stdout)
    assert sorted((r["target_label"], r["finding"]) for r in exported) == sorted(
        (m[3], m[4]) for m in maps if m[0] in asked)
    # summary: recall and precision over the labelled findings, counted here from the probabilities themselves
    calls = invoke_json("summary", "--db", db)["models"][0]["findings"]
    reported = {pid: set(np.flatnonzero(found_at[pid] >= 0.5).tolist()) for pid in labelled}
    hits = sum(len(labelled[pid] & reported[pid]) for pid in reported)
    total = sum(len(labelled[pid]) for pid in reported)
    extra = sum(len(reported[pid] - labelled[pid]) for pid in reported)
    assert {k: calls[k] for k in ("images", "labelled", "found", "missed", "not_labelled")} == {
        "images": len(picked) - 1, "labelled": total, "found": hits, "missed": total - hits, "not_labelled": extra}
    assert calls["recall"]["value"] == pytest.approx(hits / total) and calls["missed"] >= 1
    assert calls["recall"]["ci_low"] <= calls["recall"]["value"] <= calls["recall"]["ci_high"]
    assert f"{total - hits} missed" in invoke("summary", "--db", db).output
    # regions: each map against its own finding's mask; other findings of the photo have none
    own = {m[0] for m in maps if m[3] == masks[image_of[m[0]]]}
    assert set(scored) == own and len(own) == len(picked) and len(maps) > len(own)
    regions = invoke_json("eval", "regions", "--db", db, *model, "--mask-column", "mask", "--mask-label-column",
                          "finding", "--manifest", manifest)
    per = {f["finding"]: f["maps"] for f in regions["means"]["by_finding"]}
    assert per == {name: sum(m[3] == name for m in maps if m[0] in own) for name in set(masks.values())}
    assert regions["means"]["maps"] == len(own)
    # judge-check: the full view is asked of every sampled target that is labelled (found or missed), none other
    invoke_json("eval", "judge-check", "--db", db, *model, "--vlm", tiny_vlms_bpe512["qwen2_5_vl"], "--max-new-tokens",
                "16", "--sample", "6")
    with sqlite3.connect(db) as conn:
        sampled = {sid for (sid,) in conn.execute("select saliency_id from canary_judgments where kind = 'blank'")}
        full = {sid for (sid,) in conn.execute("select saliency_id from canary_judgments where kind = 'full_view'")}
        (model_name,) = conn.execute("select distinct model from predictions").fetchone()
    target_of = {m[0]: (m[1], m[2]) for m in maps}
    assert full == {s for s in sampled if target_of[s][0] in labelled and target_of[s][1] in labelled[target_of[s][0]]}
    assert sampled - full  # the sample holds a target that is not labelled (or an unlabelled photo's)
    # label issues are found for single-label models only
    truth = write_manifest(tmp_path / "truth.csv", [{"path": str(data_dir / "seg-photos" / r["file"]),
                                                     "label_ok": 1} for r in picked])
    refused = invoke("eval", "label-issues", "--db", db, "--truth", truth, "--model", model_name, expect_ok=False)
    assert refused.exit_code != 0 and "multilabel" in refused.output
    # a threshold above every finding: the same maps, each now a miss (marked again, not made again)
    again = invoke_json("explain", "--db", db, *model, "--targets", "labelled", "--finding-threshold", "0.999999")
    assert again["explain"]["computed"] == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from saliency_maps where finding = 1").fetchone() == (0,)
    # now only labelled classes are targets (each a miss); a finding of the old threshold without a label is none,
    # on the unlabelled photo too
    now = invoke_json("matrix", "--db", db)["matrices"][0]
    assert now["judgments"] == sum(m[1] in labelled and m[2] in labelled[m[1]] for m in maps if m[0] in judged)
    assert now["counts"]["CH"] + now["counts"]["CL"] == 0 and sum(now["unlabelled"].values()) == 0
    # a run without --targets labelled, at the first threshold: the missed findings are no targets again
    invoke_json("explain", "--db", db, *model)
    findings_only = invoke_json("matrix", "--db", db)["matrices"][0]
    assert findings_only["judgments"] == sum(m[4] == 1 for m in maps if m[0] in judged)
    assert findings_only["counts"]["CH"] + findings_only["counts"]["CL"] == right
    assert findings_only["counts"]["WH"] + findings_only["counts"]["WL"] == sum(
        m[4] == 1 and m[2] not in labelled[m[1]] for m in maps if m[0] in judged and m[1] in labelled)


def test_targets_labelled_is_for_multilabel_models(tmp_path, three_photos):
    result = invoke("predict", three_photos, "--db", tmp_path / "x.db", "--targets", "labelled", expect_ok=False)
    assert result.exit_code != 0 and "--targets labelled" in result.output and "multilabel" in result.output
