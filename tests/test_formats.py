"""Every image format the scan accepts, decoded alike by the torchvision loader (bot.data.torch_loader.decode)
and by DALI's CPU decoder as the DALI loader sets it up: 8- and 16-bit, greyscale, RGBA, palette, CMYK."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bot.data.folder import IMAGE_SUFFIXES, scan_dataset
from bot.data.torch_loader import decode

H, W = 6, 8
RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
RGBA16 = RNG.integers(0, 65536, (H, W, 4), dtype=np.uint16)


def png16(path, pixels: np.ndarray) -> None:
    """A 16-bit RGB(A) PNG (PIL writes none): colour type 2 or 6, bit depth 16, big-endian samples."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w, c = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def pil(mode: str) -> Image.Image:
    rgb = Image.fromarray(RGB8)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([RGB8, RGB8[..., 0]]))
    if mode == "P":
        return rgb.quantize(16)
    if mode == "I;16":
        return Image.fromarray(GREY16)
    return rgb.convert(mode)  # RGB, L, CMYK


# (suffix, PIL format, mode) for every mode each format stores; JPEG and WebP at their best quality
# (both loaders decode the same lossy bytes, so quality only keeps the test image close to RGB8)
CASES = ([(s, "JPEG", m) for s in (".jpg", ".jpeg") for m in ("RGB", "L", "CMYK")]
         + [(".png", "PNG", m) for m in ("RGB", "L", "RGBA", "P", "I;16")]
         + [(".bmp", "BMP", m) for m in ("RGB", "L", "P")]
         + [(".webp", "WEBP", m) for m in ("RGB", "RGBA")]
         + [(s, "TIFF", m) for s in (".tif", ".tiff") for m in ("RGB", "L", "RGBA", "P", "CMYK", "I;16")])


def write(path, fmt: str, mode: str) -> None:
    if mode in ("RGB16", "RGBA16"):
        png16(path, RGBA16[..., :3] if mode == "RGB16" else RGBA16)
    else:
        pil(mode).save(path, fmt, **({"quality": 100} if fmt in ("JPEG", "WEBP") else {}))


def dali_decode(path) -> np.ndarray:
    """HWC uint8 RGB as the DALI loader's val graph decodes it (CPU decoder, its own arguments)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    from bot.data.dali_pipeline import decoder_args

    data = np.fromfile(path, dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def graph():
        raw = fn.external_source(source=lambda: [data], batch=True, cycle=None)
        return fn.decoders.image(raw, output_type=types.RGB, adjust_orientation=False, **decoder_args(False))

    pipe = graph()
    pipe.build()
    return np.array(pipe.run()[0][0])


def test_cases_cover_every_suffix_the_scan_accepts():
    assert {s for s, _, _ in CASES} == IMAGE_SUFFIXES


@pytest.mark.parametrize("suffix,fmt,mode", CASES + [(".png", "PNG", "RGB16"), (".png", "PNG", "RGBA16")],
                         ids=lambda v: str(v))
def test_both_loaders_decode_alike(tmp_path, suffix, fmt, mode):
    path = tmp_path / f"x{suffix}"
    write(path, fmt, mode)
    ours = decode(str(path)).permute(1, 2, 0).numpy().astype(int)
    theirs = dali_decode(path).astype(int)
    assert ours.shape == theirs.shape == (H, W, 3)
    assert np.abs(ours - theirs).max() <= 1, (mode, np.abs(ours - theirs).max())


def written_rgb(mode: str) -> np.ndarray:
    """The RGB pixels a lossless file of `mode` holds, from the arrays written (16 bits: / 257)."""
    if mode in ("RGB", "RGBA", "CMYK"):  # alpha dropped; PIL's CMYK is 255 - RGB, K = 0
        return RGB8.astype(int)
    if mode in ("RGB16", "RGBA16"):
        return np.round(RGBA16[..., :3] / 257).astype(int)
    grey = {"L": lambda: np.asarray(Image.fromarray(RGB8).convert("L")).astype(int),
            "I;16": lambda: np.round(GREY16 / 257).astype(int)}
    if mode in grey:
        return np.repeat(grey[mode]()[..., None], 3, -1)
    return np.asarray(pil("P").convert("RGB")).astype(int)  # the palette's colours


@pytest.mark.parametrize("suffix,fmt,mode", [c for c in CASES if c[1] != "JPEG" and c[1] != "WEBP"]
                         + [(".png", "PNG", "RGB16"), (".png", "PNG", "RGBA16")], ids=lambda v: str(v))
def test_lossless_files_decode_to_the_pixels_written(tmp_path, suffix, fmt, mode):
    """Against the pixels themselves, not only the other loader: both could read a format wrong alike."""
    path = tmp_path / f"x{suffix}"
    write(path, fmt, mode)
    ours = decode(str(path)).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - written_rgb(mode)).max() <= (1 if "16" in mode else 0), mode


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, suffix):
    """round(v / 257): 65535 -> 255, 32896 (0x8080) -> 128, 0 -> 0; convert("RGB") alone clips all to 255."""
    values = np.array([[0, 32896, 65535, 1000]], np.uint16)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(values).save(path)
    got = decode(str(path)).numpy()
    assert (got == np.array([0, 128, 255, 4])[None, None]).all(), got


def test_scan_finds_every_format(tmp_path):
    for split in ("train", "val"):
        for i, (suffix, fmt, mode) in enumerate(CASES):
            (tmp_path / split / "c0").mkdir(parents=True, exist_ok=True)
            write(tmp_path / split / "c0" / f"{i:02d}{suffix.upper() if i % 2 else suffix}", fmt, mode)
    train, val = scan_dataset(str(tmp_path))
    assert len(train) == len(val) == len(CASES)
    assert all(decode(f).shape == (3, H, W) for f in train.files)
