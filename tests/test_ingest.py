from __future__ import annotations

import os

import pytest

from localjudge.data import (IngestError, LabelList, ReadFailure, ReadImage, discover, read_image, resolve_label)
from localjudge.vision import load_card


@pytest.fixture(scope="module")
def imagenet_labels() -> LabelList:
    return load_card("efficientnet-lite0").label_list()


def test_bad_files_are_failures_that_name_the_reason(bad_files):
    empty = read_image(bad_files["empty"])
    truncated = read_image(bad_files["truncated"])
    text = read_image(bad_files["text"])
    assert isinstance(empty, ReadFailure) and empty.reason == "empty file (0 bytes)" and empty.sha256 is None
    assert isinstance(truncated, ReadFailure) and "truncated" in truncated.reason and truncated.sha256
    assert isinstance(text, ReadFailure) and text.reason.startswith("not an image")


def test_real_images_read_with_their_size_and_hash(data_dir):
    path = data_dir / "chest-xray" / "tb0005.png"
    image = read_image(path)
    assert isinstance(image, ReadImage)
    assert image.size_bytes == path.stat().st_size and len(image.sha256) == 64
    assert image.width > 100 and image.height > 100


def test_class_subfolders_become_labels(tmp_path, data_dir):
    source = data_dir / "imagenet-sample" / "images"
    for wnid_file in ("n01440764_tench.jpg", "n01484850_great_white_shark.jpg"):
        folder = tmp_path / wnid_file.split("_")[0]
        folder.mkdir()
        os.symlink(source / wnid_file, folder / wnid_file)  # a link, not a copy of the shared image
    (tmp_path / "unlabelled.jpg").symlink_to(source / "n01440764_tench.jpg")
    (tmp_path / "notes.txt").write_text("not an image suffix: ignored")
    items = discover(tmp_path)
    assert [(i.path.name, i.label) for i in items] == [
        ("n01440764_tench.jpg", "n01440764"),
        ("n01484850_great_white_shark.jpg", "n01484850"),
        ("unlabelled.jpg", None),
    ]


def test_manifest_paths_are_relative_to_the_manifest_and_columns_are_chosen(tmp_path, data_dir):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.csv"
    absolute = data_dir / "imagenet-sample" / "images" / "n01440764_tench.jpg"
    manifest.write_text(f"file,cls\n../a.jpg,tench\n{absolute},0\n")
    items = discover(manifest, path_column="file", label_column="cls")
    assert items[0].path == tmp_path / "sub" / ".." / "a.jpg" and items[0].label == "tench"
    assert items[1].path == absolute and items[1].label == "0"
    with pytest.raises(IngestError, match="no column 'path'"):
        discover(manifest)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="no such file or folder"):
        discover(tmp_path / "nope")


@pytest.mark.parametrize("raw,expected", [
    ("0", [0]),
    ("n01440764", [0]),
    ("tench", [0]),
    ("Great White Shark", [2]),
    ("great_white_shark", [2]),
    ("339;603", [339, 603]),
    ("horse", None),  # a dataset class that is not an ImageNet class name: correctness unknown, not wrong
    ("", None),
    (None, None),
    ("1000", None),
])
def test_labels_map_through_the_model_label_list(imagenet_labels, raw, expected):
    assert resolve_label(raw, imagenet_labels) == expected
