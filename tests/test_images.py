"""RGB inputs: every file type and array layout people pass, and clear rejections."""

import numpy as np
import pytest
import torch
from PIL import Image

from uldm.images import ImageError, linear_to_srgb, load_linear_rgb, save_png16, srgb_to_linear, to_rgb_array


@pytest.fixture
def rgb():
    """A smooth image (JPEG is meant for those), 6 x 5 x 3 in [0, 1]."""
    yy, xx = np.mgrid[0:6, 0:5] / 8.0
    return np.stack([0.2 + yy, 0.3 + xx, 0.9 - yy - xx / 2], axis=-1).astype(np.float32)


def test_png16_round_trip_keeps_16_bits(tmp_path, rgb):
    path = save_png16(tmp_path / "x.png", rgb)
    back = to_rgb_array(path)
    assert back.shape == (6, 5, 3)
    np.testing.assert_allclose(back, rgb, atol=0.5 / 65535 + 1e-7)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg", ".tif"])
def test_8bit_files_of_every_type(tmp_path, rgb, suffix):
    path = tmp_path / f"x{suffix}"
    options = {"quality": 95, "subsampling": 0} if suffix == ".jpg" else {}  # 4:4:4 so we test decoding, not chroma loss
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path, **options)
    back = to_rgb_array(path)
    assert back.shape == (6, 5, 3) and back.dtype == np.float32
    if suffix == ".jpg":  # lossy
        assert np.abs(back - rgb).max() < 0.02
    else:
        assert np.abs(back - rgb).max() <= 0.5 / 255 + 1e-6


def test_16bit_tiff(tmp_path, rgb):
    import tifffile

    tifffile.imwrite(tmp_path / "x.tif", (rgb * 65535).round().astype(np.uint16))
    np.testing.assert_allclose(to_rgb_array(tmp_path / "x.tif"), rgb, atol=1e-4)


def test_arrays_tensors_and_pil_agree(rgb):
    as_pil = Image.fromarray((rgb * 255).round().astype(np.uint8))
    expected = to_rgb_array(as_pil)
    np.testing.assert_allclose(to_rgb_array(np.asarray(as_pil)), expected)
    np.testing.assert_allclose(to_rgb_array(torch.from_numpy(expected).permute(2, 0, 1)), expected)
    np.testing.assert_allclose(to_rgb_array(np.moveaxis(expected, -1, 0)), expected)


def test_rgba_drops_alpha(rgb):
    rgba = np.concatenate([rgb, np.ones_like(rgb[..., :1])], axis=-1)
    np.testing.assert_allclose(to_rgb_array(rgba), rgb)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4), np.float32), "greyscale"),
        (Image.new("L", (4, 4)), "greyscale"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((5, 5, 6), np.float32), "expected an RGB image"),
        (np.full((4, 4, 3), 7.0, np.float32), r"\[0, 1\]"),
        (np.zeros((4, 4, 3), np.int64), "unsupported pixel type"),
    ],
)
def test_bad_inputs_are_rejected_clearly(bad, message):
    with pytest.raises(ImageError, match=message):
        to_rgb_array(bad)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(ImageError, match="broken.png"):
        to_rgb_array(broken)
    with pytest.raises(ImageError, match="missing.png"):
        to_rgb_array(tmp_path / "missing.png")


def test_srgb_curve_round_trip_and_input_space(rgb):
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(rgb)), rgb, atol=1e-5)
    assert srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.21404, abs=1e-4)
    np.testing.assert_allclose(load_linear_rgb(rgb, "linear"), rgb)
    np.testing.assert_allclose(load_linear_rgb(rgb, "srgb"), srgb_to_linear(rgb))
    with pytest.raises(ValueError, match="input_space"):
        load_linear_rgb(rgb, "adobe")


def test_pil_images_in_other_colour_modes_are_converted_to_rgb_or_refused():
    from PIL import Image

    from uldm.images import ImageError, to_rgb_array

    white_cmyk = Image.new("CMYK", (4, 3), (0, 0, 0, 0))
    np.testing.assert_allclose(to_rgb_array(white_cmyk), 1.0)  # white, not the black its raw channels would give
    palette = Image.new("RGB", (4, 3), (255, 0, 0)).convert("P")
    np.testing.assert_allclose(to_rgb_array(palette)[0, 0], [1.0, 0.0, 0.0])
    ycbcr = Image.new("RGB", (4, 3), (0, 0, 255)).convert("YCbCr")
    np.testing.assert_allclose(to_rgb_array(ycbcr)[0, 0], [0.0, 0.0, 1.0], atol=0.02)
    with pytest.raises(ImageError, match="greyscale image \\(mode LA\\)"):
        to_rgb_array(Image.new("LA", (4, 3)))
    with pytest.raises(ImageError, match="the image is empty"):
        to_rgb_array(np.zeros((0, 0, 3), dtype=np.float32))


def test_8_bit_pngs_decode_through_pillow_and_16_bit_ones_keep_their_depth(tmp_path, monkeypatch):
    import png

    from uldm.images import read_image_file

    rng = np.random.default_rng(0)
    eight = (rng.random((6, 5, 3)) * 255).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    sixteen = (rng.random((6, 5, 3)) * 65535).astype(np.uint16)
    save_png16(tmp_path / "sixteen.png", sixteen.astype(np.float32) / 65535)
    original = png.Reader.asDirect
    monkeypatch.setattr(png.Reader, "asDirect", lambda self: pytest.fail("pypng decoded an 8-bit PNG"))
    np.testing.assert_array_equal(read_image_file(tmp_path / "eight.png"), eight)
    monkeypatch.setattr(png.Reader, "asDirect", original)
    decoded = read_image_file(tmp_path / "sixteen.png")
    assert decoded.dtype == np.uint16 and np.abs(decoded.astype(int) - sixteen).max() <= 1


def test_reading_png_files_leaves_no_file_open(tmp_path, monkeypatch):
    import builtins

    from uldm.images import read_image_file

    save_png16(tmp_path / "sixteen.png", np.random.default_rng(0).random((4, 5, 3)).astype(np.float32))
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "eight.png")
    opened, real_open = [], builtins.open

    def tracking_open(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        opened.append(handle)
        return handle

    monkeypatch.setattr(builtins, "open", tracking_open)
    for name in ("sixteen.png", "eight.png"):
        read_image_file(tmp_path / name)
    assert opened and all(handle.closed for handle in opened)  # an open one would be a ResourceWarning later


# ------------------------------------------------------------------------------------------- pixel limit
def _png_header_only(path, width, height, bitdepth):
    """A PNG whose header claims width x height RGB pixels, with (almost) no pixel data: what a huge photo looks like
    to a reader that checks the header, without the test spending the memory."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bitdepth, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))
    return path


def _patched_tiff(path, width, height):
    """A valid 4 x 4 RGB TIFF whose ImageWidth / ImageLength tags are rewritten to claim width x height."""
    import struct

    import tifffile

    tifffile.imwrite(path, np.zeros((4, 4, 3), np.uint8))
    with tifffile.TiffFile(path) as tiff:
        tags = tiff.pages.first.tags
        patches = [(tags[name].valueoffset, tags[name].dtype, value)
                   for name, value in (("ImageWidth", width), ("ImageLength", height))]
        order = tiff.byteorder
    data = bytearray(path.read_bytes())
    for offset, dtype, value in patches:
        fmt = order + ("H" if dtype == 3 else "I")
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def _patched_pil_file(path, width, height):
    """A small BMP or JPEG whose header is rewritten to claim width x height."""
    import struct

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    if path.suffix == ".bmp":
        data[18:26] = struct.pack("<ii", width, height)
    else:  # JPEG: the baseline frame header (SOF0) holds height then width
        at = data.index(b"\xff\xc0")
        data[at + 5:at + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["png16", "png8", "tiff", "bmp", "jpg"])
def test_every_reader_refuses_a_huge_image_from_its_header_before_decoding(tmp_path, monkeypatch, kind):
    import png
    import tifffile

    from uldm.images import DEFAULT_MAX_PIXELS, read_image_file

    if kind.startswith("png"):
        path = _png_header_only(tmp_path / "huge.png", 14000, 14000, 16 if kind == "png16" else 8)
    elif kind == "tiff":
        path = _patched_tiff(tmp_path / "huge.tif", 40000, 40000)
    else:  # under Pillow's own limit (179 MP): uldm's must be the one that applies
        path = _patched_pil_file(tmp_path / f"huge.{kind}", 9000, 9000)
    for decoder in (png.Reader, tifffile.TiffPage, Image.Image):  # nothing may be decoded
        monkeypatch.setattr(decoder, "asDirect" if decoder is png.Reader else
                            "asarray" if decoder is tifffile.TiffPage else "load",
                            lambda *a, **k: pytest.fail(f"{path.name} was decoded before its size was checked"))
    size = {"png16": "14000 x 14000", "png8": "14000 x 14000", "tiff": "40000 x 40000"}.get(kind, "9000 x 9000")
    with pytest.raises(ImageError, match=rf"huge\.\w+: {size} pixels .* over the limit of {DEFAULT_MAX_PIXELS / 1e6:g} "
                                         r"MP; downscale the image, or raise the limit \(--max-pixels\)"):
        read_image_file(path)


def test_the_pixel_limit_is_one_number_callers_choose(tmp_path, rgb):
    from uldm.images import read_image_file

    path = save_png16(tmp_path / "x.png", rgb)  # 6 x 5 = 30 pixels
    with pytest.raises(ImageError, match="x.png: 5 x 6 pixels"):
        load_linear_rgb(path, max_pixels=29)
    assert load_linear_rgb(path, max_pixels=30).shape == (6, 5, 3)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match="x.jpg: 5 x 6 pixels"):
        to_rgb_array(tmp_path / "x.jpg", max_pixels=29)
    assert read_image_file(path, max_pixels=None).shape == (6, 5, 3)  # None: no limit
