"""DICOM input: pixels as DICOM defines them (modality LUT, window, MONOCHROME1), pydicom's bundled test files and
files written here, clear errors for what cannot be read, and no patient data in the database, the report or the
command's output."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from localjudge.data import read_image
from localjudge.dicom import load_dicom

from .conftest import invoke, invoke_json, no_network

PATIENT_NAME = "Doe^Jane^PHI7731"
PATIENT_ID = "PHI-ID-99812"
SECRETS = (b"Doe^Jane", b"PHI7731", PATIENT_ID.encode(), b"DOE_JANE")


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)  # never from the network
    assert path, f"pydicom's bundled test file {name} is missing"
    return Path(path)


def write_dicom(path: Path, pixels: np.ndarray, modality: str = "CR", photometric: str = "MONOCHROME2",
                slope: float = 1.0, intercept: float = 0.0, window: tuple[float, float] | None = None,
                patient: str = PATIENT_NAME) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID, ds.Modality = patient, PATIENT_ID, modality
    ds.InstitutionName = "St. PHI7731 Hospital"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    if pixels.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window:
            ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(size: int = 64) -> np.ndarray:
    return (np.arange(size * size, dtype=np.int64).reshape(size, size) * 4095 // (size * size - 1)).astype(np.uint16)


def expected_grey(raw: np.ndarray, slope: float, intercept: float, center: float, width: float,
                  monochrome1: bool = False) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 written out: the reference the reader is checked against."""
    values = raw.astype(np.float64) * slope + intercept
    unit = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    if monochrome1:
        unit = 1 - unit
    return np.clip(unit * 255 + 0.5, 0, 255).astype(np.uint8)


def grey_of(path: Path, window=None) -> np.ndarray:
    _, picture = load_dicom(path.read_bytes(), window)
    array = np.asarray(picture)
    assert array.shape[2] == 3 and (array[..., 0] == array[..., 2]).all()  # greyscale in the three channels
    return array[..., 0]


def test_rescale_window_and_monochrome1_as_dicom_defines_them(tmp_path):
    raw = ramp()
    cr = write_dicom(tmp_path / "cr.dcm", raw, slope=2.0, intercept=-1024.0, window=(1000.0, 3000.0))
    assert (grey_of(cr) == expected_grey(raw, 2.0, -1024.0, 1000.0, 3000.0)).all()
    dx = write_dicom(tmp_path / "dx.dcm", raw, modality="DX", photometric="MONOCHROME1", window=(2048.0, 4096.0))
    assert (grey_of(dx) == expected_grey(raw, 1.0, 0.0, 2048.0, 4096.0, monochrome1=True)).all()
    assert grey_of(dx)[0, 0] == 255 and grey_of(dx)[-1, -1] == 0  # MONOCHROME1: the smallest value is white
    # --window replaces the file's own; without any window the 12 bits are stretched, as floats, to 0..255
    assert (grey_of(cr, (0.0, 500.0)) == expected_grey(raw, 2.0, -1024.0, 0.0, 500.0)).all()
    plain = write_dicom(tmp_path / "plain.dcm", raw)
    grey = grey_of(plain)
    assert grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) == 256


def test_bundled_ct_mr_and_colour_files_read(tmp_path):
    for name in ("CT_small.dcm", "MR_small.dcm"):
        result = read_image(bundled(name))
        assert result.format == "DICOM" and result.mode == "RGB", (name, result)
    mr = pydicom.dcmread(bundled("MR_small.dcm"))
    assert (grey_of(bundled("MR_small.dcm")) == expected_grey(
        mr.pixel_array, 1.0, 0.0, float(mr.WindowCenter), float(mr.WindowWidth))).all()
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    us = write_dicom(tmp_path / "us.dcm", rgb, modality="US")
    _, picture = load_dicom(us.read_bytes())
    assert picture.size == (48, 32) and np.asarray(picture)[0, 0].tolist() == [200, 0, 0]


def test_what_cannot_be_read_says_why(tmp_path):
    plan = read_image(bundled("rtplan.dcm"))
    assert plan.reason.startswith("DICOM file without pixel data")
    dose = read_image(bundled("rtdose.dcm"))
    assert dose.reason.startswith("multi-frame DICOM (15 frames)")
    jpeg_ls = read_image(bundled("MR_small_jpeg_ls_lossless.dcm"))
    assert jpeg_ls.reason.startswith("compressed DICOM (JPEG-LS Lossless Image Compression): no installed "
                                     "pixel-data plugin decodes it") and "pylibjpeg" in jpeg_ls.reason
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    assert "DICOM" in read_image(fake).reason


def test_an_audit_of_dicom_files_keeps_no_patient_data(tmp_path, data_dir):
    folder = tmp_path / "study"
    folder.mkdir()
    raw = ramp(96)
    write_dicom(folder / "DOE_JANE_PHI7731.dcm", raw, window=(2048.0, 4096.0))
    # the same pixels exported again under another name and patient: the same image
    write_dicom(folder / "DOE_JANE_PHI7731_copy.dcm", raw, window=(2048.0, 4096.0), patient="Roe^Richard")
    write_dicom(folder / "DOE_JANE_PHI7731_dx.dcm", raw[::-1].copy(), modality="DX", photometric="MONOCHROME1")
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        (folder / name).write_bytes(bundled(name).read_bytes())
    db = tmp_path / "audit.db"
    with no_network() as attempts:
        result = invoke("run", folder, "--db", db, "--redact-paths")
        report = invoke_json("report", "--db", db, "--out", tmp_path / "report")
    assert attempts == []
    with sqlite3.connect(db) as conn:
        images = conn.execute("select path, format, mode from images").fetchall()
        errors = conn.execute("select path, reason from read_errors").fetchall()
        judged = conn.execute("select count(*) from judgments where status = 'ok'").fetchone()[0]
    assert len(images) == 4 and {f for _, f, _ in images} == {"DICOM"}  # the copy is the same image
    assert all(row[0].startswith("redacted:") for row in images + errors)
    assert [reason for _, reason in errors] == [
        "DICOM file without pixel data (a report, a plan or another non-image object)"]
    assert judged == 4 and report["images"] == 4
    assert report["images_unavailable"] == 4  # a redacted path cannot be opened again by another command...
    found_again = invoke_json("report", "--db", db, "--out", tmp_path / "report", "--images", folder)
    assert found_again["images_unavailable"] == 0 and found_again["thumbnails"] == 12  # ...unless shown the files
    # nothing of any header, nor the file names, in the database, the report or what the command printed
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*"))
    stored += b"".join(p.read_bytes() for p in (tmp_path / "report").rglob("*") if p.is_file())
    stored += result.output.encode()
    for secret in SECRETS + (b"Roe^Richard", b"St. PHI7731"):
        assert secret not in stored, secret


def test_a_window_given_is_part_of_the_prediction(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    write_dicom(folder / "a.dcm", ramp(), window=(2048.0, 4096.0))
    db = tmp_path / "w.db"
    invoke("predict", folder, "--db", db)
    invoke("predict", folder, "--db", db, "--window", "500,1000")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select preprocessing from predictions").fetchall()
    assert len(rows) == 2 and sum('"dicom_window": [500.0, 1000.0]' in r[0] for r in rows) == 1
    bad = invoke("predict", folder, "--db", db, "--window", "500", expect_ok=False)
    assert bad.exit_code == 2 and "CENTRE,WIDTH" in bad.output


def test_an_empty_rendering_attribute_is_a_stored_reason_not_a_crash(tmp_path):
    path = write_dicom(tmp_path / "empty-window.dcm", ramp(), window=(2048.0, 4096.0))
    ds = pydicom.dcmread(path)
    ds.WindowCenter = ""  # present, empty: pydicom reads it as an empty value
    ds.save_as(path)
    result = read_image(path)
    assert result.reason.startswith("DICOM pixel attributes cannot be used (")


def test_a_changed_window_is_another_image_and_other_patient_values_are_not(tmp_path):
    raw = ramp()
    first = read_image(write_dicom(tmp_path / "a.dcm", raw, window=(1000.0, 2000.0)))
    renamed = read_image(write_dicom(tmp_path / "b.dcm", raw, window=(1000.0, 2000.0), patient="Roe^Richard"))
    rewindowed = read_image(write_dicom(tmp_path / "c.dcm", raw, window=(1500.0, 2000.0)))
    assert first.sha256 == renamed.sha256 != rewindowed.sha256


def test_patient_folders_are_not_kept_as_labels_when_paths_are_redacted(tmp_path, data_dir):
    folder = tmp_path / "export"
    (folder / "DOE_JANE_PHI7731").mkdir(parents=True)
    (folder / "zebra").mkdir()
    write_dicom(folder / "DOE_JANE_PHI7731" / "1.dcm", ramp(), window=(2048.0, 4096.0))
    (folder / "zebra" / "z.jpg").write_bytes((data_dir / "seg-photos/images/coco_000000000034.jpg").read_bytes())
    db = tmp_path / "f.db"
    result = invoke("predict", folder, "--db", db, "--redact-paths")
    with sqlite3.connect(db) as conn:
        labels = sorted(str(r[0]) for r in conn.execute("select label from images"))
    assert labels == ["None", "zebra"]  # the class folder is a label, the patient folder is not
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("f.db*")) + result.output.encode()
    assert b"DOE_JANE" not in stored and b"PHI7731" not in stored
