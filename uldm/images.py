"""RGB images in and out: files (PNG/JPEG/BMP/TIFF, 8 or 16 bit), PIL images, arrays and tensors.

Everything becomes float32 H x W x 3 in [0, 1]. Pillow truncates 16-bit colour PNGs to 8 bits, so PNGs go
through pypng and TIFFs through tifffile, which keep the full depth. Every reader checks the image's size from its
header against one pixel limit (`max_pixels`) before it decodes anything, so a huge photo is refused by name
instead of exhausting the memory.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator, Literal, Optional, Union

import numpy as np
import torch
from PIL import Image

InputSpace = Literal["srgb", "linear"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The largest photo read by default: 64 MP covers every consumer camera (61 MP full frame, 50 MP phones); its
# linear RGB alone is 0.8 GB in float32. `--max-pixels` (max_pixels=) raises or lowers it; None means no limit.
DEFAULT_MAX_PIXELS = 64_000_000
_PIL_LIMIT = threading.Lock()  # guards Pillow's global limit while one file is opened under uldm's


class ImageError(ValueError):
    """An input image that cannot be used as RGB (grey, wrong shape, NaN, unreadable file)."""


SRGB_CHUNK = 1 << 22  # values decoded at once: colour-science works on float64 copies, GBs for a whole photo


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """Undo the sRGB transfer curve (IEC 61966-2-1), via colour-science, SRGB_CHUNK values at a time (so its
    float64 temporaries stay small at any size) into one float32 array."""
    import colour

    rgb = np.asarray(rgb)
    out = np.empty(rgb.shape, np.float32)
    values, linear = rgb.reshape(-1), out.reshape(-1)
    for start in range(0, values.size, SRGB_CHUNK):
        part = slice(start, start + SRGB_CHUNK)
        linear[part] = colour.models.eotf_sRGB(np.clip(values[part], 0.0, 1.0))
    return out


def linear_to_srgb(rgb: np.ndarray) -> np.ndarray:
    import colour

    return np.asarray(colour.models.eotf_inverse_sRGB(np.clip(rgb, 0.0, 1.0)), dtype=np.float32)


def _scale_integers(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.divide(array, np.float32(255), dtype=np.float32)
    if array.dtype == np.uint16:
        return np.divide(array, np.float32(65535), dtype=np.float32)
    if array.dtype.kind == "f":
        return array.astype(np.float32)  # a copy: callers may change it in place
    raise ImageError(f"{where}: unsupported pixel type {array.dtype} (expected 8/16-bit integers or floats)")


def check_pixel_limit(path: Path, width: int, height: int, max_pixels: Optional[int], pages: int = 1) -> None:
    """Refuse an image larger than `max_pixels` (None: no limit), naming the file, before it is decoded."""
    pixels = int(width) * int(height) * int(pages)
    if max_pixels is not None and pixels > max_pixels:
        size = f"{width} x {height} pixels" + (f" x {pages} pages" if pages > 1 else "")
        raise ImageError(f"{path}: {size} ({pixels / 1e6:.1f} MP) is over the limit of {max_pixels / 1e6:g} MP; "
                         "downscale the image, or raise the limit (--max-pixels) if the memory allows")


@contextlib.contextmanager
def _pil_image(path: Path, max_pixels: Optional[int]) -> Iterator[Image.Image]:
    """The file opened by Pillow (header only) after its size passed uldm's limit, which replaces Pillow's own
    decompression-bomb limit (a different number) so that one limit applies to every reader."""
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        check_pixel_limit(path, *image.size, max_pixels)  # only the first frame is decoded
        yield image


def _read_png(path: Path, max_pixels: Optional[int]) -> np.ndarray:
    """8-bit PNGs through Pillow (fast); 16-bit (and 1/2/4-bit) ones through pypng, which keeps their depth."""
    import png

    with open(path, "rb") as handle:  # pypng leaves files it opens itself unclosed
        reader = png.Reader(file=handle)
        reader.preamble()  # the header chunks only
        check_pixel_limit(path, reader.width, reader.height, max_pixels)
        if reader.bitdepth == 8:
            with _pil_image(path, max_pixels) as image:
                return np.asarray(image.convert("RGBA") if image.mode in ("P", "PA") else image)
        width, height, rows, info = reader.asDirect()
        planes = info["planes"]
        dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
        array = np.vstack([np.asarray(row, dtype=dtype) for row in rows]).reshape(height, width, planes)
    if info["bitdepth"] not in (8, 16):  # 1/2/4-bit palettes come back expanded to their own depth
        array = (array.astype(np.float32) / (2 ** info["bitdepth"] - 1) * 255).round().astype(np.uint8)
    return array


def _read_tiff(path: Path, max_pixels: Optional[int]) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page, series = tiff.pages.first, tiff.series[0]
        check_pixel_limit(path, page.imagewidth, page.imagelength, max_pixels, pages=len(series.pages))
        return series.asarray()


def read_image_file(path: Union[str, Path], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file to its native array (H x W or H x W x C, uint8/uint16/float), errors naming the file; an
    image of more than `max_pixels` pixels (None: no limit) is refused from its header, before decoding."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            return _read_png(path, max_pixels)
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path, max_pixels)
        with _pil_image(path, max_pixels) as image:
            return np.asarray(image.convert("RGB") if image.mode in ("P", "CMYK", "YCbCr") else image)
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many types; the file name is what the user needs
        raise ImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def to_rgb_array(image: Union[np.ndarray, torch.Tensor, Image.Image, str, Path], where: str = "image",
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported input -> float32 H x W x 3 in [0, 1] (values as stored: no colour-space change).

    Arrays may be H x W x 3 or 3 x H x W (tensors are taken as 3 x H x W when the first axis has 3 entries), or a
    batch of one of these (1 x 3 x H x W, as diffusers' pipelines pass single images).
    Alpha is dropped; grey images are rejected because they carry no colour to reconstruct spectra from. A file
    larger than `max_pixels` is refused before it is decoded (`read_image_file`).
    """
    if isinstance(image, (str, Path)):
        where = str(image)
        image = read_image_file(image, max_pixels)
    elif isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I", "F", "L", "LA", "La", "1"):
            raise ImageError(f"{where}: a greyscale image (mode {image.mode}) has no colour to reconstruct spectra from")
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")
        elif image.mode not in ("RGB", "RGBA", "RGBa", "RGBX"):  # CMYK, YCbCr, LAB, HSV: their channels are not RGB
            image = image.convert("RGB")
        image = np.asarray(image)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (3, 4) and tensor.shape[-1] not in (3, 4):
            tensor = tensor.permute(1, 2, 0)
        image = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:  # a batch of one image
        array = array[0]
    if array.size == 0:
        raise ImageError(f"{where}: the image is empty (shape {array.shape})")
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 2)):
        raise ImageError(f"{where}: a greyscale image has no colour to reconstruct spectra from (shape {array.shape})")
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageError(f"{where}: expected an RGB image H x W x 3 (or RGBA), got shape {array.shape}")
    rgb = _scale_integers(array[..., :3], where)
    if not np.all(np.isfinite(rgb)):
        raise ImageError(f"{where}: the image contains NaN or infinite values")
    if rgb.min() < -1e-3 or rgb.max() > 1 + 1e-3:
        raise ImageError(f"{where}: float RGB must lie in [0, 1], got range [{rgb.min():.3g}, {rgb.max():.3g}]")
    return np.clip(rgb, 0.0, 1.0, out=rgb)  # rgb is this function's own copy


def load_linear_rgb(image, input_space: InputSpace = "srgb", where: str = "image",
                    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An RGB input as linear float32 H x W x 3: decode (files up to `max_pixels`), then undo the sRGB curve when
    `input_space='srgb'`."""
    if input_space not in ("srgb", "linear"):
        raise ValueError(f"input_space must be 'srgb' or 'linear', got {input_space!r}")
    rgb = to_rgb_array(image, where=where, max_pixels=max_pixels)
    return srgb_to_linear(rgb) if input_space == "srgb" else rgb


def save_png16(path: Union[str, Path], rgb: np.ndarray) -> Path:
    """Write float H x W x 3 in [0, 1] as a 16-bit PNG (atomically)."""
    import png

    from .io import atomic_write

    path = Path(path)
    data = np.round(np.clip(rgb, 0.0, 1.0) * 65535).astype(np.uint16)
    height, width, _ = data.shape
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        png.Writer(width, height, bitdepth=16, greyscale=False).write(handle, data.reshape(height, width * 3))
    return path
