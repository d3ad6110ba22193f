"""The recognizer judge: EfficientNet-Lite2 (real weights) reads the masked image; its probability mass on the
predicted class and its siblings becomes a 0-5 score by fixed thresholds."""

from __future__ import annotations

import csv
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from localjudge.judge import JudgeRequest, parse_answer
from localjudge.judge.recognizer import RecognizerJudge, score_for, sibling_groups
from localjudge.saliency.masking import masked_image

from .conftest import invoke, invoke_json, seg_photos_manifest


def test_thresholds():
    assert [score_for(m) for m in (0.9, 0.5, 0.3, 0.25, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005, 0.0)] == [
        5, 5, 4, 4, 3, 2, 2, 1, 1, 0, 0]


def test_siblings_come_from_the_category_groups():
    siblings, names, digest = sibling_groups()
    assert {151, 207, 268} <= siblings[162] and "dog" in names[162]  # Chihuahua ... Mexican hairless, beagle
    assert 1 not in siblings  # a goldfish belongs to no VOC/COCO category: it stands alone
    assert len(digest) == 16


@pytest.fixture(scope="module")
def recognizer():
    return RecognizerJudge(device="cpu", design="black")


@pytest.fixture(scope="module")
def photos(data_dir):
    with open(data_dir / "imagenet-sample" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:20]
    return [(Image.open(data_dir / "imagenet-sample" / r["file"]).convert("RGB").resize((448, 448)),
             int(r["imagenet_index"]), r["class_name"]) for r in rows]


def test_a_visible_object_scores_high_and_a_blacked_out_one_low(recognizer, photos):
    visible = recognizer.judge([JudgeRequest(image=i, label=n, prompt="", label_index=k) for i, k, n in photos])
    black = Image.new("RGB", (448, 448))
    hidden = recognizer.judge([JudgeRequest(image=black, label=n, prompt="", label_index=k) for _, k, n in photos])
    visible_scores = [parse_answer(o.raw_text).score for o in visible]
    hidden_scores = [parse_answer(o.raw_text).score for o in hidden]
    assert np.mean(visible_scores) >= 3.5 and np.mean(hidden_scores) <= 1.0
    answer = json.loads(visible[0].raw_text)
    assert answer["evaluation"].startswith("[templated by the recognizer judge]")
    assert "efficientnet-lite2" in answer["evaluation"] and str(answer["score"]) in answer["justification"]


def test_a_request_without_a_class_index_is_a_stored_failure_not_a_score(recognizer, photos):
    output = recognizer.judge([JudgeRequest(image=photos[0][0], label="x", prompt="", label_index=None)])[0]
    assert output.error and "ImageNet-1k class index" in output.error


def test_run_without_a_vlm_is_judged_by_the_recognizer(tmp_path, data_dir):
    manifest = seg_photos_manifest(data_dir, tmp_path / "five.csv", 5)
    db = tmp_path / "recognizer.db"
    result = invoke("run", manifest, "--db", db)
    assert "recognizer:efficientnet-lite2" in result.stdout  # the matrix names its judge
    note = next(line for line in result.stdout.splitlines() if line.startswith("note: the recognizer"))
    assert "design) is a classifier standing in for a VLM judge, a proxy" in note and "Pearson" in note  # its worth
    assert "has not been checked" in result.stderr  # no reliability card yet
    with sqlite3.connect(db) as conn:
        judged = conn.execute("select judge_backend, judge_model, status, score, decoding from judgments").fetchall()
        config, = conn.execute("select config from runs where command = 'run'").fetchone()
    assert len(judged) == 5 and all(b == "recognizer" and s == "ok" and 0 <= sc <= 5 for b, _, s, sc, _ in judged)
    assert json.loads(judged[0][4])["thresholds"][0] == [0.5, 5]
    assert json.loads(config)["judge"] == "recognizer"  # the resolved judge is what the run records
    again = invoke_json("run", manifest, "--db", db)
    assert again["judge"]["computed"] == 0 and not again["judge"]["model_loaded"]


def test_the_recognizer_refuses_a_model_with_other_labels(tmp_path, data_dir):
    voc = tmp_path / "voc.db"
    image = data_dir / "seg-photos" / "images"
    result = invoke("run", image, "--db", voc, "--model", "lraspp_mobilenet_v3_large", "--random-weights",
                    expect_ok=False)
    assert result.exit_code != 0 and "recognizer judge reads ImageNet-1k classes" in result.output


def test_the_recognizer_never_grades_its_own_weights(data_dir, tmp_path):
    """Auditing EfficientNet-Lite2 (the recognizer's model) with the recognizer: EfficientNet-Lite1 judges, and the
    judgments say so (name, hash and decoding); any other model is still judged by Lite2."""
    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db = tmp_path / "self.db"
    invoke("run", manifest, "--db", db, "--model", "efficientnet-lite2")
    invoke("run", manifest, "--db", db)
    with sqlite3.connect(db) as conn:
        judges = dict(conn.execute("select distinct p.model, j.judge_model || ' ' || j.decoding from judgments j "
                                   "join predictions p on p.id = j.prediction_id").fetchall())
    assert judges["efficientnet-lite2"].startswith("recognizer:efficientnet-lite1 ")
    assert json.loads(judges["efficientnet-lite2"].split(" ", 1)[1])["model"] == "efficientnet-lite1"
    assert judges["efficientnet-lite0"].startswith("recognizer:efficientnet-lite2 ")
    # Lite2's weights under a card of another name are still Lite2's
    from localjudge.vision import load_card

    copy = json.loads(open(load_card("efficientnet-lite2").card_path).read())
    copy.update(name="my-classifier", labels=str(load_card("efficientnet-lite2").card_path).replace(
        "efficientnet-lite2.json", "labels/imagenet-1k.csv"))
    (tmp_path / "mine.json").write_text(json.dumps(copy))
    other = tmp_path / "mine.db"
    invoke("run", manifest, "--db", other, "--model", tmp_path / "mine.json")
    with sqlite3.connect(other) as conn:
        (judge,) = conn.execute("select distinct j.judge_model from judgments j join predictions p on "
                                "p.id = j.prediction_id where p.model = 'my-classifier'").fetchone()
    assert judge == "recognizer:efficientnet-lite1"


@pytest.fixture(scope="module")
def designs():
    return {design: RecognizerJudge(device="cpu", design=design) for design in ("mean", "crop", "relative")}


def _scores(judge, requests):
    return [json.loads(o.raw_text)["score"] for o in judge.judge(requests)]


def test_each_design_classifies_what_it_says(designs, recognizer, photos):
    """Known answers per design. A mask of ones hides nothing: every design sees the whole view, and 'relative' keeps
    all of the class's mass (score 5). A square mask: 'crop' classifies exactly that square of the view. A mask of
    zeros: 'mean' classifies a plain image of the normalisation mean, and its class mass is small."""
    image, index, name = photos[0]
    ones, zeros = np.ones((448, 448), np.float32), np.zeros((448, 448), np.float32)
    square = zeros.copy()
    square[100:300, 50:250] = 1.0

    def ask(view, mask, shown):
        return JudgeRequest(image=shown, label=name, prompt="", label_index=index, view=view, mask=mask)

    whole = _scores(recognizer, [ask(None, None, image)])
    assert _scores(designs["mean"], [ask(image, ones, image)]) == whole
    assert _scores(designs["crop"], [ask(image, ones, image)]) == whole
    assert _scores(designs["relative"], [ask(image, ones, image)]) == [5]
    black_square = Image.fromarray((np.asarray(image) * square[..., None]).astype(np.uint8))
    def justification(judge, request):  # the measured mass, to three decimals, and the score
        return json.loads(judge.judge([request])[0].raw_text)["justification"]

    assert (justification(designs["crop"], ask(image, square, black_square))
            == justification(recognizer, ask(None, None, image.crop((50, 100, 250, 300)))))
    # crop and mean draw from the view and the mask, so the pipeline hands them no image (reads_image); with
    # nothing attended above one half, crop classifies the masked image A = I * M, drawn from those two
    assert (justification(designs["crop"], ask(image, square, None))
            == justification(designs["crop"], ask(image, square, black_square)))
    faint = np.full((448, 448), 0.3, np.float32)
    assert (justification(designs["crop"], ask(image, faint, None))
            == justification(recognizer, ask(None, None, masked_image(image, None, 0, 0, faint))))
    mean = Image.new("RGB", (448, 448), tuple(int(c * 255 + 0.5) for c in designs["mean"].card.mean))
    assert (justification(designs["mean"], ask(image, zeros, Image.new("RGB", (448, 448))))
            == justification(recognizer, ask(None, None, mean)))
    # relative, a class absent from the whole view: its mass on the masked image is not "all of the little there is"
    absent = next(k for k in range(1000) if k not in sibling_groups()[0].get(index, {index}))
    absent_request = JudgeRequest(image=image, label="absent", prompt="", label_index=absent, view=image, mask=ones)
    assert json.loads(designs["relative"].judge([absent_request])[0].raw_text)["score"] <= 1
    # without a view (a canary's blank image) every design classifies the image it is handed
    blank = Image.new("RGB", (448, 448), (128, 128, 128))
    assert {d: _scores(j, [ask(None, None, blank)]) for d, j in designs.items()} == {
        d: _scores(recognizer, [ask(None, None, blank)]) for d in designs}


def test_every_design_has_its_measured_worth():
    from localjudge.judge.recognizer import DESIGNS, MEASURED

    assert set(MEASURED) == set(DESIGNS) and all("Pearson" in MEASURED[d] for d in DESIGNS)


def test_the_design_is_recorded_and_keys_its_judgments(tmp_path, data_dir):
    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db = tmp_path / "designs.db"
    invoke("run", manifest, "--db", db)
    invoke("judge", "--db", db, "--recognizer-design", "black")  # the default is crop
    with sqlite3.connect(db) as conn:
        decodings = [json.loads(d) for (d,) in conn.execute("select decoding from judgments")]
        configs = [json.loads(c)["recognizer_design"] for (c,) in conn.execute("select config from runs")]
    assert sorted(d.get("design", "black") for d in decodings) == ["black"] * 3 + ["crop"] * 3
    assert "crop" in configs and "black" in configs
    # each design's matrix carries its own measured worth
    notes = [m["judge_caveat"] for m in invoke_json("matrix", "--db", db)["matrices"]]
    assert sorted(n.split("(")[1].split(" ")[0] for n in notes) == ["black", "crop"]
    assert "design) is a classifier standing in" in invoke("matrix", "--db", db).stdout
    result = invoke("judge", "--db", db, "--recognizer-design", "sepia", expect_ok=False)
    assert result.exit_code == 2 and "sepia" in result.output


def test_an_exported_graph_of_the_recognizers_weights_is_judged_by_another(tmp_path):
    """A graph says which weights it was exported from (its card's source_weights_sha256, written by `models export`),
    so Lite2 exported to ONNX, under any name, is judged by Lite1, and Lite0's graph by Lite2. (The .onnx files here
    are empty: choosing the judge reads only the cards; the export itself is tested in test_onnx_cli.)"""
    from localjudge.config import RunConfig
    from localjudge.judge.recognizer import recognizer_for
    from localjudge.vision import load_card
    from localjudge.vision.onnx_export import write_card

    for name, expected in (("efficientnet-lite2", "efficientnet-lite1"), ("efficientnet-lite0", "efficientnet-lite2")):
        graph = tmp_path / f"renamed-{name}.onnx"
        graph.touch()
        write_card(load_card(name), graph)
        assert recognizer_for(RunConfig(model=str(graph))) == expected


@pytest.mark.slow
def test_the_design_comparison_on_a_test_sized_subset(tmp_path):
    """scripts/recognizer_designs.py on 12 seg-photos and 12 imagenet-sample images: one row per design, each with
    its correlations, label-issue F1s and card (the full run's table is in the README)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "designs.md"
    result = subprocess.run([sys.executable, root / "scripts" / "recognizer_designs.py", "--images", "12", "--seg",
                             "12", "--designs", "black,crop", "--out", out], capture_output=True, text=True,
                            cwd=root / "scripts", timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == ["black", "crop"]
    for row in rows:
        assert all(cell.strip() for cell in row) and row[-1].split()[0] in ("usable", "doubtful", "unusable")
        assert row[5].count("[") == 2  # the judge's and the WH rule's F1, each with its interval
