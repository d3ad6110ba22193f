"""Per-class statistics (eval classes): known answers of the pure functions, and the command on a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from localjudge.analysis.classes import attended_area, class_table, disagreement, map_entropy

from .conftest import invoke, invoke_json


def test_map_entropy_and_attended_area_known_answers():
    assert map_entropy(np.ones((4, 4))) == pytest.approx(1.0)
    one = np.zeros((4, 4))
    one[1, 2] = 0.7
    assert map_entropy(one) == pytest.approx(0.0)
    two = np.zeros((2, 2))
    two[0] = 1.0  # half the pixels, equal mass: log 2 / log 4
    assert map_entropy(two) == pytest.approx(0.5)
    assert map_entropy(np.zeros((3, 3))) is None
    ramp = np.array([[0.0, 0.59], [0.6, 1.0]])
    assert attended_area(ramp, 0.6) == 0.5


def test_the_class_whose_judgments_surely_disagree_is_ranked_first():
    """Three classes by hand: 'a' all CL (right, low: 10 of 10 disagree), 'b' half CH half WH (5 of 10), 'c' all CH
    (0 of 10); 'd' has 2 judgments, both WH (too few to rank). The dataset's share is 17 / 32."""
    groups = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"] * 2, dtype=object)
    correct = np.array([1] * 10 + [1, 0] * 5 + [1] * 10 + [0, 0], dtype=float)
    scores = np.array([1] * 10 + [5] * 10 + [5] * 10 + [5, 5], dtype=float)
    table = class_table(groups, correct, scores, 3, {"mass": np.r_[np.full(10, 0.2), np.full(22, np.nan)]})
    rows = {row["group"]: row for row in table["groups"]}
    assert rows["a"]["counts"] == {"CH": 0, "CL": 10, "WH": 0, "WL": 0}
    assert rows["b"]["counts"] == {"CH": 5, "CL": 0, "WH": 5, "WL": 0}
    assert rows["b"]["accuracy"]["mean"] == 0.5 and rows["a"]["average_score"]["mean"] == 1.0
    assert rows["a"]["disagreement"]["share"] == 1.0 and rows["b"]["disagreement"]["share"] == 0.5
    assert rows["a"]["mass"] == {"mean": pytest.approx(0.2), "n": 10, "ci_low": pytest.approx(0.2),
                                 "ci_high": pytest.approx(0.2)}
    assert rows["c"]["mass"]["mean"] is None
    assert table["baseline"]["disagreement"]["share"] == pytest.approx(17 / 32)  # 10 CL + 5 WH + 2 WH ('d')
    assert [row["group"] for row in table["inspect"]] == ["a", "b", "c"]  # 'd': too few to rank
    assert rows["a"]["above_baseline"] and not rows["c"]["above_baseline"]
    low, high = rows["b"]["disagreement"]["ci_low"], rows["b"]["disagreement"]["ci_high"]
    assert 0.1 < low < 0.5 < high < 0.9  # ten judgments: a wide interval around one half


def test_wilson_interval_by_hand_and_a_small_class_does_not_outrank_a_large_one():
    """Wilson 95 %: 5 of 5 -> [0.566, 1]; 90 of 100 -> [0.826, 0.945] (by the closed form). A class of 5 judgments
    that all disagree ranks below a class of 100 of which 90 do (a bootstrap of the 5 would be [1, 1] and rank it
    first)."""
    from localjudge.analysis.classes import wilson_interval

    assert wilson_interval(5, 5) == (pytest.approx(0.5655, abs=1e-4), 1.0)
    assert wilson_interval(90, 100) == (pytest.approx(0.8256, abs=1e-4), pytest.approx(0.9448, abs=1e-4))
    assert wilson_interval(0, 10)[0] == 0.0
    groups = np.array(["small"] * 5 + ["large"] * 100, dtype=object)
    correct = np.ones(105)
    scores = np.array([1] * 5 + [1] * 90 + [5] * 10, dtype=float)  # CL: right, low
    table = class_table(groups, correct, scores, 3, {})
    assert [row["group"] for row in table["inspect"]] == ["large", "small"]


def test_unlabelled_judgments_are_not_placed():
    share, low, high = disagreement(np.array(["unlabelled", "CL", "CH"], dtype=object))
    assert share == 0.5
    assert disagreement(np.array(["unlabelled"], dtype=object)) == (None, None, None)


@pytest.mark.slow
def test_eval_classes_on_real_photos(tmp_path, data_dir):
    """18 seg-photos, Lite0, the recognizer judge, masks as regions: per predicted class and per labelled class,
    the counts add up to the matrix; a super-class file groups them."""
    manifest = data_dir / "seg-photos" / "labels.csv"
    db = tmp_path / "classes.db"
    invoke("run", manifest, "--path-column", "file", "--label-column", "imagenet_indices", "--db", db,
           "--mask-column", "mask", "--shard", "1/4")
    matrix = invoke_json("matrix", "--db", db)["matrices"][0]
    (predicted,) = invoke_json("eval", "classes", "--db", db)["settings"]
    (labelled,) = invoke_json("eval", "classes", "--db", db, "--by", "labelled")["settings"]
    for table in (predicted, labelled):
        assert sum(row["n"] for row in table["groups"]) == matrix["judgments"]
        for q in ("CH", "CL", "WH", "WL"):
            assert sum(row["counts"][q] for row in table["groups"]) == matrix["counts"][q]
        assert table["baseline"]["counts"] == matrix["counts"]
        assert all(0 < row["entropy"]["mean"] <= 1 and 0 <= row["attended_area"]["mean"] <= 1
                   for row in table["groups"])
        assert any(row["mass_in_region"]["n"] for row in table["groups"])
    # a right prediction's labelled class is its predicted class; a horse photo is labelled sorrel (339)
    assert "sorrel" in {row["group"] for row in labelled["groups"]}
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"groups": {"horses": [339, 603]}}))
    (grouped,) = invoke_json("eval", "classes", "--db", db, "--by", "labelled", "--groups", groups)["settings"]
    sizes = {row["group"]: row["n"] for row in grouped["groups"]}
    assert set(sizes) <= {"horses", "other"} and sum(sizes.values()) == matrix["judgments"]
    assert sizes["horses"] == sum(row["n"] for row in labelled["groups"] if row["group"] in ("sorrel", "horse_cart"))
    text = invoke("eval", "classes", "--db", db).output
    assert "classes to inspect" in text and "sorrel" in text


def test_the_imagenet_super_class_file_covers_every_class_once_at_its_named_boundaries(data_dir):
    """scripts/imagenet_superclasses.json: each of the 1000 classes in exactly one group, and the groups' ranges
    start and end where the class names say (checked against imagenet_classes.csv)."""
    import csv
    import json
    from pathlib import Path

    groups = json.loads((Path(__file__).resolve().parents[1] / "scripts" / "imagenet_superclasses.json").read_text())
    members = sorted(i for indices in groups["groups"].values() for i in indices)
    assert members == list(range(1000))
    with open(data_dir / "imagenet_classes.csv", newline="") as handle:
        names = {int(r["index"]): r["name"] for r in csv.DictReader(handle)}
    first_last = {name: (names[min(i)], names[max(i)]) for name, i in groups["groups"].items()}
    assert first_last["dog"] == ("Chihuahua", "Mexican_hairless")
    assert first_last["wild canine"] == ("timber_wolf", "grey_fox")
    assert first_last["feline"] == ("tabby", "cheetah")
    assert first_last["primate"] == ("orangutan", "indri")
    assert first_last["insect"] == ("tiger_beetle", "lycaenid")
    assert first_last["geological formation"] == ("alp", "volcano")
    assert first_last["fish"] == ("tench", "puffer")
    assert names[max(groups["groups"]["reptile"])] == "sidewinder" and names[398] == "abacus"
