"""Pictures of cubes for people who would rather look than read: true-colour previews, spectra plots, curves.

The values of a reconstructed cube are relative spectral reflectance: 1 is the white of the input RGB (a flat
spectrum of 1 renders to RGB (1, 1, 1) under the camera's normalised response), so the plots say so
(`REFLECTANCE_LABEL`) instead of calling every input "reflectance". The colour preview renders those values as a
human would see them under an equal-energy light (CIE 1931 2° observer), white-balanced to sRGB's D65 white so
that grey stays grey; the PNG's Description text says this. Matplotlib is imported only when a plot is drawn,
on the non-interactive Agg backend, and every file is written atomically.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .io import PathLike, atomic_write
from .spectral import DISPLAY_RGB_NM, nearest_bands

PREVIEW_MODES = ("srgb", "false")
REFLECTANCE_LABEL = "Relative spectral reflectance (1 = the camera's white)"
PREVIEW_DESCRIPTIONS = {
    "srgb": "uldm preview: relative spectral reflectance (1 = the camera's white) rendered in true colour under an "
            "equal-energy light (CIE 1931 2 degree observer, white-balanced to D65 sRGB)",
    "false": "uldm preview: three bands of relative spectral reflectance (1 = the camera's white) as R, G, B, each "
             "scaled by its 99.5th percentile",
}


def _as_cube(cube: Any, wavelengths: Sequence[float], what: str = "cube") -> tuple[np.ndarray, np.ndarray]:
    if hasattr(cube, "detach"):  # torch tensor
        cube = cube.detach().cpu().numpy()
    cube = np.asarray(cube, dtype=np.float64)
    wl = np.asarray(wavelengths, dtype=np.float64).ravel()
    if cube.ndim != 3:
        raise ValueError(f"{what} must be H x W x B, got shape {cube.shape}")
    if cube.shape[-1] != wl.size:
        raise ValueError(f"{what} has {cube.shape[-1]} bands but {wl.size} wavelengths were given")
    return cube, wl


# ------------------------------------------------------------------------------------------------ colour
@lru_cache(maxsize=8)
def _spectrum_to_linear_srgb(wavelengths: tuple[float, ...]) -> np.ndarray:
    """The 3 x B matrix from reflectance to linear sRGB, for one set of band centres.

    Each CIE 1931 colour-matching function is scaled so a flat unit reflectance gives X = Y = Z = 1, the
    equal-energy (E) white; this also absorbs the x̄ and z̄ tails a 400-700 nm grid misses. Bradford adaptation
    then maps E white to D65, the sRGB white, so spectrally flat surfaces render neutral.
    """
    import colour

    from .camera import CameraResponse
    from .spectral import SpectralGrid

    cmf = CameraResponse.from_preset("cie1931", grid=SpectralGrid(wavelengths), normalize=False).matrix
    to_xyz = cmf / cmf.sum(axis=1, keepdims=True)
    srgb_space = colour.RGB_COLOURSPACES["sRGB"]
    white_e = colour.xy_to_XYZ(colour.CCS_ILLUMINANTS["CIE 1931 2 Degree Standard Observer"]["E"])
    white_d65 = colour.xy_to_XYZ(srgb_space.whitepoint)
    adapt = colour.adaptation.matrix_chromatic_adaptation_VonKries(white_e, white_d65, transform="Bradford")
    return np.asarray(srgb_space.matrix_XYZ_to_RGB @ adapt @ to_xyz, dtype=np.float64)


def _encode_srgb(linear: np.ndarray) -> np.ndarray:
    """Clip to [0, 1], apply the sRGB transfer curve, quantise to 8 bits."""
    linear = np.clip(linear, 0.0, 1.0)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return np.round(encoded * 255.0).astype(np.uint8)


def cube_to_srgb(cube: Any, wavelengths: Sequence[float]) -> np.ndarray:
    """A true-colour H x W x 3 uint8 preview of an H x W x B reflectance cube (see the module docstring).

    The bands must lie within the CIE observer's 360-830 nm. Out-of-gamut colours are clipped.
    """
    cube, wl = _as_cube(cube, wavelengths)
    matrix = _spectrum_to_linear_srgb(tuple(float(w) for w in wl))
    return _encode_srgb(cube @ matrix.T)


def false_colour(cube: Any, wavelengths: Sequence[float], bands_nm: Sequence[float] = DISPLAY_RGB_NM) -> np.ndarray:
    """An H x W x 3 uint8 image of three bands (the nearest to `bands_nm`, as R, G, B).

    Each channel is divided by its own 99.5th percentile, so a few specular pixels do not darken the rest; the
    display is linear (no gamma).
    """
    cube, wl = _as_cube(cube, wavelengths)
    if len(bands_nm) != 3:
        raise ValueError(f"false_colour needs three wavelengths (R, G, B), got {list(bands_nm)}")
    channels = []
    for index in nearest_bands(wl, bands_nm):
        band = cube[..., index]
        peak = float(np.percentile(band, 99.5))
        channels.append(band / peak if peak > 0 else np.zeros_like(band))
    return np.round(np.clip(np.stack(channels, axis=-1), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_preview(path: PathLike, cube: Any, wavelengths: Sequence[float], mode: str = "srgb") -> Path:
    """Write a PNG preview of a cube atomically: `mode` "srgb" (true colour) or "false" (three bands); its
    Description text (`PREVIEW_DESCRIPTIONS`) says what the colours show."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if mode not in PREVIEW_MODES:
        raise ValueError(f"unknown preview mode {mode!r}; choose one of {PREVIEW_MODES}")
    image = cube_to_srgb(cube, wavelengths) if mode == "srgb" else false_colour(cube, wavelengths)
    return save_preview_image(path, image, mode)


def save_preview_image(path: PathLike, image: np.ndarray, mode: str = "srgb") -> Path:
    """Write an H x W x 3 uint8 preview (`cube_to_srgb`, or `false_colour` for mode "false") as a PNG, atomically,
    its Description text saying what the colours show."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    with atomic_write(path) as tmp:
        info = PngInfo()
        info.add_text("Description", PREVIEW_DESCRIPTIONS[mode])
        Image.fromarray(image, mode="RGB").save(tmp, format="PNG", pnginfo=info)
    return path


class StreamedPreview:
    """`save_preview` (sRGB) and `plot_spectra` of a cube that is never held whole: `add` each band of rows as it
    is computed (only the preview's 8-bit pixels and the spectra at `pixels` are kept), then `save`."""

    def __init__(self, height: int, width: int, wavelengths: Sequence[float],
                 pixels: Sequence[tuple[int, int]]) -> None:
        self.wavelengths = np.asarray(wavelengths, dtype=np.float64)
        self.pixels = [(int(row), int(col)) for row, col in pixels]
        self.image = np.zeros((height, width, 3), np.uint8)
        self.spectra = np.zeros((len(self.pixels), self.wavelengths.size))
        self.spread: Optional[np.ndarray] = None
        self.flags: Optional[np.ndarray] = None

    def add(self, rows: slice, spectra: Any, uncertainty: Any = None, out_of_gamut: Any = None) -> None:
        """Rows `rows` of the cube (rows x W x B), their uncertainty and out-of-gamut mask (each None if absent)."""
        self.image[rows] = cube_to_srgb(spectra, self.wavelengths)
        for index, (row, col) in enumerate(self.pixels):
            if rows.start <= row < rows.stop:
                self.spectra[index] = spectra[row - rows.start, col]
                if uncertainty is not None:
                    self.spread = np.zeros_like(self.spectra) if self.spread is None else self.spread
                    self.spread[index] = uncertainty[row - rows.start, col]
                if out_of_gamut is not None:
                    self.flags = np.zeros(len(self.pixels), bool) if self.flags is None else self.flags
                    self.flags[index] = out_of_gamut[row - rows.start, col]

    def save(self, preview: PathLike, spectra: PathLike) -> None:
        """Write the preview PNG and the spectra plot (see `plot_spectra`)."""
        save_preview_image(preview, self.image)
        plot_pixel_spectra(spectra, self.image, self.wavelengths, self.pixels, self.spectra, uncertainty=self.spread,
                           out_of_gamut=self.flags)


# ------------------------------------------------------------------------------------------------- plots
def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure not tied to pyplot: no GUI, no global state, safe in threads and servers."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # choosing a backend later would not take effect; leave it be
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save_figure(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return path


def plot_spectra(
    path: PathLike,
    cube: Any,
    wavelengths: Sequence[float],
    pixels: Sequence[tuple[int, int]],
    reference: Any = None,
    uncertainty: Any = None,
    labels: Optional[Sequence[str]] = None,
    out_of_gamut: Any = None,
    value_label: str = REFLECTANCE_LABEL,
) -> Path:
    """Save a PNG: the sRGB preview with `pixels` (row, column) numbered, and the spectra at those pixels.

    Spectra are solid lines; the `reference` cube's spectra (ground truth) dashed in the same colour; with
    `uncertainty` (a cube of per-band standard deviations) a shaded ±1 std band around each spectrum. With
    `out_of_gamut` (the H x W mask of a reconstruction) the legend marks the pixels whose RGB had to change.
    `value_label` names the values on the y axis (default: relative reflectance, what reconstructions hold).
    """
    cube, wl = _as_cube(cube, wavelengths)
    ref = _as_cube(reference, wl, "reference")[0] if reference is not None else None
    std = _as_cube(uncertainty, wl, "uncertainty")[0] if uncertainty is not None else None
    for name, other in (("reference", ref), ("uncertainty", std)):
        if other is not None and other.shape != cube.shape:
            raise ValueError(f"{name} shape {other.shape} does not match the cube's {cube.shape}")
    height, width = cube.shape[:2]
    pixels = [(int(r), int(c)) for r, c in pixels]
    if not pixels:
        raise ValueError("plot_spectra needs at least one pixel")
    for row, col in pixels:
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"pixel (row {row}, column {col}) is outside the {height} x {width} image")
    at = tuple(np.array(pixels).T)  # (rows, columns)
    return plot_pixel_spectra(path, cube_to_srgb(cube, wl), wl, pixels, cube[at],
                              reference=None if ref is None else ref[at], uncertainty=None if std is None else std[at],
                              labels=labels, value_label=value_label,
                              out_of_gamut=None if out_of_gamut is None else np.asarray(out_of_gamut, bool)[at])


def plot_pixel_spectra(
    path: PathLike,
    preview: np.ndarray,
    wavelengths: Sequence[float],
    pixels: Sequence[tuple[int, int]],
    spectra: np.ndarray,
    reference: Optional[np.ndarray] = None,
    uncertainty: Optional[np.ndarray] = None,
    labels: Optional[Sequence[str]] = None,
    out_of_gamut: Optional[np.ndarray] = None,
    value_label: str = REFLECTANCE_LABEL,
) -> Path:
    """`plot_spectra` from its parts: the H x W x 3 uint8 `preview` and, for each of the P `pixels`, its spectrum
    (P x B), reference and uncertainty (P x B, optional) and out-of-gamut flag (P, optional)."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    if labels is not None and len(labels) != len(pixels):
        raise ValueError(f"{len(labels)} labels given for {len(pixels)} pixels")
    names = list(labels) if labels is not None else [f"({r}, {c})" for r, c in pixels]
    if out_of_gamut is not None:
        names = [f"{name}, out of gamut" if flag else name for name, flag in zip(names, out_of_gamut)]

    fig = _figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    ax_img, ax_spec = fig.subplots(1, 2, width_ratios=[1, 1.4])
    ax_img.imshow(preview)
    ax_img.set_axis_off()
    ax_img.set_title("sRGB preview (equal-energy light)")
    colours = [f"C{i % 10}" for i in range(len(pixels))]
    for number, ((row, col), name, tint) in enumerate(zip(pixels, names, colours), start=1):
        ax_img.plot(col, row, marker="o", markersize=9, markerfacecolor="none", markeredgecolor="white", markeredgewidth=2.5)
        ax_img.plot(col, row, marker="o", markersize=9, markerfacecolor="none", markeredgecolor=tint, markeredgewidth=1.5)
        ax_img.annotate(str(number), (col, row), xytext=(6, 6), textcoords="offset points", color=tint,
                        fontweight="bold", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        spectrum = spectra[number - 1]
        ax_spec.plot(wl, spectrum, color=tint, linewidth=1.8, label=f"{number}: {name}")
        if uncertainty is not None:
            spread = uncertainty[number - 1]
            ax_spec.fill_between(wl, spectrum - spread, spectrum + spread, color=tint, alpha=0.2, linewidth=0)
        if reference is not None:
            ax_spec.plot(wl, reference[number - 1], color=tint, linewidth=1.4, linestyle="--")
    ax_spec.set_xlabel("Wavelength (nm)")
    ax_spec.set_ylabel(value_label)
    ax_spec.set_xlim(wl[0], wl[-1])
    ax_spec.grid(True, alpha=0.3)
    handles, texts = ax_spec.get_legend_handles_labels()
    if reference is not None or uncertainty is not None:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles.append(Line2D([], [], color="grey", linewidth=1.8))
        texts.append("reconstruction")
        if reference is not None:
            handles.append(Line2D([], [], color="grey", linewidth=1.4, linestyle="--"))
            texts.append("reference")
        if uncertainty is not None:
            handles.append(Patch(color="grey", alpha=0.2))
            texts.append("±1 std")
    ax_spec.legend(handles, texts, fontsize="small", loc="best")
    return _save_figure(fig, path)


def plot_curve(
    path: PathLike,
    x: Sequence[float],
    ys: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    marker: Optional[str] = "o",
    log_y: bool = False,
) -> Path:
    """Save a PNG line plot of one or more named series against `x` (e.g. quality against sampling steps; a loss
    curve with `marker=None, log_y=True`)."""
    if not ys:
        raise ValueError("plot_curve needs at least one series")
    for name, values in ys.items():
        if len(values) != len(x):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(x)} x positions")
    fig = _figure(figsize=(6, 4), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, values in ys.items():
        ax.plot(list(x), list(values), marker=marker, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def pick_pixels(rgb: np.ndarray, count: int = 4, grid: int = 16) -> list[tuple[int, int]]:
    """Pixels worth plotting: far apart in chromaticity (greedy farthest-point over a coarse grid), brightest first.

    Fixed positions often land on a background; this picks what makes the spectra plot informative.
    """
    height, width = rgb.shape[:2]
    rows = np.linspace(0, height - 1, min(grid, height)).round().astype(int)
    cols = np.linspace(0, width - 1, min(grid, width)).round().astype(int)
    candidates = [(int(r), int(c)) for r in rows for c in cols]
    colours = np.stack([rgb[r, c] for r, c in candidates]).astype(np.float64)
    brightness = colours.sum(axis=1)
    chroma = colours / np.maximum(brightness[:, None], 1e-6)
    features = np.concatenate([chroma, 0.3 * brightness[:, None] / max(brightness.max(), 1e-6)], axis=1)
    chosen = [int(np.argmax(brightness))]
    distance = np.linalg.norm(features - features[chosen[0]], axis=1)
    while len(chosen) < min(count, len(candidates)):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(features - features[chosen[-1]], axis=1))
    return [candidates[i] for i in chosen]
