"""A corpus of the files real folders hold besides good photos, made from the real images in shared/data: each
entry says what localjudge must do with it. Shared by the tests and scripts/malformed_inputs.py."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image

SOURCE = "seg-photos/images/coco_000000000034.jpg"  # a zebra: the model is sure of it


def _png_of_size(width: int, height: int) -> bytes:
    """A tiny PNG file that claims `width` x `height` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def build_corpus(data_dir: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expectation): 'error: <start of the stored reason>' or 'read' (ingested and judged)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(data_dir / SOURCE)
    photo.load()
    jpeg = (data_dir / SOURCE).read_bytes()

    def save(name: str, image: Image.Image, **options) -> Path:
        path = folder / name
        image.save(path, **options)
        return path

    png = io.BytesIO()
    photo.save(png, format="PNG")
    corpus: dict[str, tuple[Path, str]] = {}
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    corpus["truncated JPEG"] = (folder / "truncated.jpg", "error: corrupt or truncated image")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    corpus["truncated PNG"] = (folder / "truncated.png", "error: corrupt or truncated image")
    (folder / "zero.jpg").write_bytes(b"")
    corpus["zero bytes"] = (folder / "zero.jpg", "error: empty file (0 bytes)")
    (folder / "bomb.png").write_bytes(_png_of_size(40_000, 40_000))
    corpus["decompression bomb (1.6 G pixels)"] = (folder / "bomb.png", "error: refused: Image size")
    (folder / "bomb-small.png").write_bytes(_png_of_size(10_000, 10_000))
    corpus["decompression bomb (100 M pixels)"] = (folder / "bomb-small.png", "error: refused: Image size")
    corpus["CMYK JPEG"] = (save("cmyk.jpg", photo.convert("CMYK")), "read")
    grey16 = Image.fromarray((__import__("numpy").asarray(photo.convert("L"), dtype="uint16") * 257))
    corpus["16-bit PNG"] = (save("grey16.png", grey16), "read")
    corpus["palette PNG"] = (save("palette.png", photo.convert("P", palette=Image.Palette.ADAPTIVE)), "read")
    corpus["LA PNG (grey + alpha)"] = (save("grey-alpha.png", photo.convert("LA")), "read")
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): the pixels are stored turned the other way
    exif = Image.Exif()
    exif[0x0112] = 6
    corpus["EXIF-rotated JPEG"] = (save("exif-rotated.jpg", photo.transpose(Image.Transpose.ROTATE_90),
                                        exif=exif.tobytes(), quality=95), "read")
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    corpus["animated GIF"] = (save("animated.gif", frames[0], save_all=True, append_images=frames[1:],
                                   duration=100, loop=0), "read")
    import pydicom.data

    plan = Path(pydicom.data.get_testdata_file("rtplan.dcm", download=False))
    shutil.copyfile(plan, folder / "no-pixels.dcm")
    corpus["DICOM without pixel data"] = (folder / "no-pixels.dcm", "error: DICOM file without pixel data")
    (folder / "x.jpg").mkdir(exist_ok=True)
    corpus["a directory named x.jpg"] = (folder / "x.jpg", "error: a folder, not an image file")
    (folder / "text.png").write_text("not a picture\n")
    corpus["text named .png"] = (folder / "text.png", "error: not an image (no known image format)")
    return corpus
