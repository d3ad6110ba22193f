"""Prompts that fit the data: the judge is told the CAM method in use, what kind of image it sees (a photo, the
modality a DICOM file names, or --image-kind) and what a class looks like where the labels describe it; each of those
changes the stored prompt, and so re-judges."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from localjudge.judge.prompts import fill_kind, prompt_hash, prompt_template, render, with_article

from .conftest import copy_db, invoke_json, write_manifest
from .test_dicom import write_dicom


def test_the_template_names_the_method_and_the_kind_and_the_default_reads_as_before():
    default = render(prompt_template("masked"), "golden_retriever")
    assert 'predicted the class "golden retriever" for a photo.\nYou see that photo with' in default
    assert "(by a Grad-CAM saliency map)" in default and "means:" not in default
    eigen = render(prompt_template("heatmap", "concise", "Eigen-CAM", described=True), "Cardiomegaly",
                   "chest radiograph (CR)", "an enlarged cardiac silhouette")
    assert "You see the chest radiograph (CR) with an Eigen-CAM heatmap" in eigen
    assert '"Cardiomegaly" means: an enlarged cardiac silhouette.' in eigen
    assert [with_article(w) for w in ("MR image", "XGrad-CAM", "HiResCAM", "ultrasound image", "X-ray", "CAM")] == [
        "an MR image", "an XGrad-CAM", "a HiResCAM", "an ultrasound image", "an X-ray", "a CAM"]
    # every choice is in the template's hash
    hashes = {prompt_hash(t) for t in (prompt_template("masked"), prompt_template("masked", method="Grad-CAM++"),
                                       prompt_template("masked", described=True),
                                       fill_kind(prompt_template("masked"), "skin photograph"))}
    assert len(hashes) == 4
    assert "{braces}" in render(fill_kind(prompt_template("masked"), "odd {braces}"), "x")


def chest_ramp(size: int = 96) -> np.ndarray:
    return (np.add.outer(np.arange(size), np.arange(size)) * 20).astype(np.uint16)


@pytest.fixture(scope="module")
def chest_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chest")
    path = write_dicom(folder / "cr.dcm", chest_ramp(), modality="CR", window=(2048.0, 4096.0))
    import pydicom

    dataset = pydicom.dcmread(path)
    dataset.BodyPartExamined = "CHEST"
    dataset.save_as(path)
    write_dicom(folder / "odd.dcm", chest_ramp()[::-1].copy(), modality="??", window=(2048.0, 4096.0))
    return folder


def test_a_dicom_radiographs_prompt_says_radiograph_and_the_method(tmp_path, chest_study, tiny_vlms):
    db = tmp_path / "cr.db"
    invoke_json("run", chest_study, "--db", db, "--cam", "gradcam++", "--vlm", tiny_vlms["qwen2_5_vl"],
                "--max-new-tokens", "64")
    with sqlite3.connect(db) as conn:
        kinds = [k for (k,) in conn.execute("select kind from images")]
        stored = conn.execute("select p.text, j.image_kind, j.prompt_hash from judgments j join prompts p on "
                              "p.hash = j.prompt_hash join images i on i.sha256 = j.image_sha256 "
                              "where i.kind is not null").fetchall()
        photo = conn.execute("select j.image_kind from judgments j join images i on i.sha256 = j.image_sha256 "
                             "where i.kind is null").fetchall()
    assert sorted(kinds, key=str) == sorted([None, "chest radiograph (CR)"], key=str)
    (text, kind, _), = stored
    assert kind == "chest radiograph (CR)" and photo == [("photo",)]  # a modality code that is no code: a photo
    assert "Grad-CAM++" in text and "Grad-CAM saliency" not in text
    asked = render(text, "tench", kind)
    assert "for a chest radiograph (CR).\nYou see that chest radiograph (CR) with" in asked
    assert "a Grad-CAM++ saliency map" in asked
    # naming the kind for the run is another prompt: everything is judged again, told that kind
    again = invoke_json("judge", "--db", db, "--cam", "gradcam++", "--vlm", tiny_vlms["qwen2_5_vl"],
                        "--max-new-tokens", "64", "--image-kind", "chest X-ray")
    assert again["judge"]["computed"] == 2
    with sqlite3.connect(db) as conn:
        texts = [t for (t,) in conn.execute("select text from prompts")]
        named = {k for (k,) in conn.execute("select distinct image_kind from judgments where prompt_hash = ?",
                                            [prompt_hash(next(t for t in texts if "chest X-ray" in t))])}
    assert len(texts) == 2 and named == {"chest X-ray"}
    assert "for a chest X-ray.\nYou see that chest X-ray with" in next(t for t in texts if "chest X-ray" in t)


def test_the_labels_descriptions_reach_the_judge_and_its_key(tmp_path, data_dir, tiny_vlms):
    from localjudge.vision import load_card

    from .own_models import imagenet_rows

    rows = [r for r in imagenet_rows(data_dir) if r["class_name"] in ("tench", "goldfish")]
    manifest = write_manifest(tmp_path / "fish.csv", [
        {"path": str(data_dir / "imagenet-sample" / r["file"]), "label": r["class_name"]} for r in rows])
    plain, described = tmp_path / "plain.txt", tmp_path / "described.csv"

    imagenet = load_card("efficientnet-lite0").label_list().names
    plain.write_text("\n".join(imagenet) + "\n")
    described.write_text("index,name,description\n" + "".join(
        f"{i},{name},{'a freshwater fish with an olive back' if name == 'tench' else ''}\n"
        for i, name in enumerate(imagenet)))
    judge = ["--vlm", tiny_vlms["qwen2_5_vl"], "--max-new-tokens", "64"]
    db = tmp_path / "fish.db"
    first = invoke_json("run", manifest, "--db", db, "--labels", plain, *judge)
    second = invoke_json("run", manifest, "--db", db, "--labels", described, *judge)
    # the same names: the same predictions and maps; a description is another prompt, so another judgment
    assert second["predict"]["computed"] == 0 and second["explain"]["computed"] == 0
    assert first["judge"]["computed"] == second["judge"]["computed"] == len(rows)
    with sqlite3.connect(db) as conn:
        texts = [t for (t,) in conn.execute("select text from prompts")]
    with_descriptions = [t for t in texts if "[class descriptions]" in t]
    assert len(texts) == 2 and len(with_descriptions) == 1
    assert '"tench": "a freshwater fish with an olive back"' in with_descriptions[0]
    assert "{description}" in with_descriptions[0]
    # a person rating a view reads the prompt its judge was given, description included
    from localjudge.rating import RatingServer

    server = RatingServer(db, prompt_hash=prompt_hash(with_descriptions[0]))
    try:
        rubrics = [server.describe(view, {})["rubric"] for view in server.order]
    finally:
        server.server_close()
    assert any('"tench" means: a freshwater fish with an olive back.' in r for r in rubrics)
    assert all("[class descriptions]" not in r and "for a photo." in r for r in rubrics)


def test_a_kind_learnt_later_fills_a_store_made_before_and_is_judged_again(tmp_path, chest_study):
    """A DICOM image stored before its kind was read (NULL) was judged as a photo; it gets its kind when read again
    (or from another store in a merge: a fill, not a conflict), and its judgments are keyed with the kind, so it is
    judged again, told what it is."""
    made = tmp_path / "made.db"
    invoke_json("run", chest_study, "--db", made)
    old = copy_db(made, tmp_path / "old.db")
    with sqlite3.connect(old) as conn:  # as a store made before m013 holds it
        conn.execute("update images set kind = null")
        conn.execute("delete from judgments")
    older = copy_db(old, tmp_path / "older.db")
    assert invoke_json("judge", "--db", old)["judge"]["computed"] == 2
    again = invoke_json("run", chest_study, "--db", old)  # read again: the file says what it is
    assert again["judge"]["computed"] == 1  # only the radiograph, now told what it is
    with sqlite3.connect(old) as conn:
        told = sorted(conn.execute("select image_kind, count(*) from judgments group by image_kind").fetchall())
    assert told == [("chest radiograph (CR)", 1), ("photo", 2)]
    merged = invoke_json("db", "merge", made, "--into", older)
    assert merged["conflicts"] == []
    with sqlite3.connect(older) as conn:
        assert sorted(k for (k,) in conn.execute("select kind from images") if k) == ["chest radiograph (CR)"]
