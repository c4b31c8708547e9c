"""Spectral relighting: show a photographed scene as it would look under another light.

This is the downstream task the ULDM paper uses to show spectral fidelity. An RGB image cannot be relit
exactly (two surfaces that match under one light can differ under another: metamerism), so the quality of
the relit image measures how right the reconstructed spectra are, beyond the RGB they re-render to.

The scene model (METHOD.md section 1). Cubes are reflectance s (H x W x B). An RGB input is c = Φ s, the
camera's view under the equal-energy illuminant E, with each row of Φ summing to 1 so a perfect white renders
to (1, 1, 1). Under an illuminant L the same camera sees

    c_L = Φ (s ⊙ L̂),    L̂ = L / max(Φ L)

i.e. the light is scaled ("exposed") so that a perfect white reflector's brightest channel is exactly 1: the
colour cast of the light is kept (that is what relighting should show), linear RGB stays in [0, 1] for
reflectances up to 1, as for the E renderings, and E itself gives L̂ = 1 up to rounding. With
`white_balance=True` the camera output is divided by the white's RGB, as an auto-white-balanced camera would.

`from_` is the light the photo was taken under. The reconstruction of a photo under L_from is whatever
spectrum x re-renders to its RGB, Φ x = Φ (s ⊙ L̂_from): radiance, not reflectance. Relighting divides that
light out and puts the new one in, x ⊙ L̂_to / L̂_from; with `from_="E"` (the default, and how every dataset RGB
here is rendered) the cube is reflectance, and from == to is exactly the identity (the gain is 1.0 in every band).

Human colour (`output="srgb"`): the CIE 1931 observer, rows scaled so a flat reflectance under E gives
X = Y = Z, as in `uldm.visualize`. Without white balance the observer stays adapted to E (the fixed Bradford
E -> D65 transform the previews use), so E-lit grey is neutral and other lights show their cast; with white
balance the adaptation is from the illuminant's own white to D65. Outputs are linear; PNG writers encode.

Scores (`relight_metrics`) are computed in camera space for every method, because the von Kries baseline only
has camera RGB; see its docstring for the Lab conversion and white point.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .camera import CameraResponse
from .io import PathLike
from .spectral import DEFAULT_GRID, SpectralGrid, SpectralGridError, read_spectral_csv

IlluminantSpec = Union[str, Path, np.ndarray]
OUTPUTS = ("camera", "srgb")
DEFAULT_CAMERA = "nikon5100"
FIGURE_ILLUMINANTS = ("A", "FL11", "LED-B1")
VON_KRIES = "von-kries"
RECONSTRUCTION = "reconstruction"


class IlluminantError(ValueError):
    """An unknown illuminant name, an unreadable CSV, or a power distribution that cannot light the grid."""


# ------------------------------------------------------------------------------------------- illuminants
def _canonical_key(name: str) -> str:
    """Case, spaces, hyphens and underscores do not matter: 'led-b1', 'LED_B1' and 'LED B1' are one name."""
    return re.sub(r"[^0-9a-z.]", "", name.lower())


@lru_cache(maxsize=1)
def _illuminant_table() -> dict[str, str]:
    """Lookup key -> colour-science name, aliases included (F2 -> FL2, F3.1 -> FL3.1: the usual spelling)."""
    import colour

    table = {_canonical_key(name): name for name in colour.SDS_ILLUMINANTS}
    for name in colour.SDS_ILLUMINANTS:
        if name.startswith("FL"):
            table.setdefault(_canonical_key("F" + name[2:]), name)
    return table


def _covers(name: str, grid: SpectralGrid) -> bool:
    import colour

    wl = colour.SDS_ILLUMINANTS[name].wavelengths
    return wl[0] <= grid.wavelengths[0] + 0.5 and wl[-1] >= grid.wavelengths[-1] - 0.5


def available_illuminants(grid: SpectralGrid = DEFAULT_GRID) -> list[str]:
    """colour-science's illuminant names whose data cover `grid` (F1-F12 are accepted for FL1-FL12 too).

    The ISO 7589 tables stop at 690 nm (or 560 nm), so they drop out for the default 400-700 nm grid.
    """
    import colour

    return [name for name in colour.SDS_ILLUMINANTS if _covers(name, grid)]


def _validated_power(power: np.ndarray, what: str) -> np.ndarray:
    power = np.asarray(power, dtype=np.float64)
    if not np.all(np.isfinite(power)):
        raise IlluminantError(f"{what}: the power distribution contains NaN or infinite values")
    if np.any(power < 0):
        raise IlluminantError(f"{what}: the power distribution has negative values (min {power.min():.4g})")
    if not np.any(power > 0):
        raise IlluminantError(f"{what}: the power distribution is zero everywhere on the grid")
    return power


def _read_illuminant_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    wavelengths, values = read_spectral_csv(path, ("wavelength", "power"), IlluminantError)
    return wavelengths, values[:, 0]


def _resampled(values: np.ndarray, wavelengths: np.ndarray, grid: SpectralGrid, what: str) -> np.ndarray:
    try:
        return grid.resample(values, wavelengths, axis=0)
    except SpectralGridError as exc:
        raise IlluminantError(f"illuminant {what} does not cover the spectral grid: {exc}") from exc


@lru_cache(maxsize=64)
def _named_illuminant(name: str, grid: SpectralGrid) -> np.ndarray:
    import colour

    canonical = _illuminant_table().get(_canonical_key(name))
    if canonical is None:
        raise IlluminantError(
            f"unknown illuminant {name!r}; choose one of {', '.join(available_illuminants(grid))} "
            "(F1-F12 mean FL1-FL12; case does not matter) or give a CSV file 'wavelength,power'"
        )
    sd = colour.SDS_ILLUMINANTS[canonical]
    power = _resampled(np.asarray(sd.values, dtype=np.float64), np.asarray(sd.wavelengths), grid, repr(canonical))
    power = _validated_power(power, f"illuminant {canonical!r}")
    power.setflags(write=False)
    return power


def load_illuminant(spec: IlluminantSpec, grid: SpectralGrid = DEFAULT_GRID) -> np.ndarray:
    """The spectral power of an illuminant on `grid`, shape (B,), in the source's own units (scale is free).

    `spec` is a colour-science name ('D65', 'A', 'FL11' or 'F11', 'LED-B1', ...; see `available_illuminants`),
    a CSV of `wavelength,power` (header optional, resampled linearly, never extrapolated), or an array already on
    the grid. Negative, NaN or all-zero power is refused: it cannot be a light.
    """
    if isinstance(spec, np.ndarray):
        if spec.shape != (grid.num_bands,):
            raise IlluminantError(
                f"an illuminant array must have shape ({grid.num_bands},) for {grid}, got {spec.shape}"
            )
        return _validated_power(spec, "illuminant array")
    if isinstance(spec, Path) or str(spec).lower().endswith(".csv"):
        path = Path(spec)
        wavelengths, values = _read_illuminant_csv(path)
        return _validated_power(_resampled(values, wavelengths, grid, str(path)), str(path))
    if not isinstance(spec, str):
        raise IlluminantError(f"an illuminant is a name, a CSV path or an array, got {type(spec).__name__}")
    return _named_illuminant(spec, grid).copy()


def _describe(spec: IlluminantSpec) -> str:
    return "custom array" if isinstance(spec, np.ndarray) else str(spec)


# ---------------------------------------------------------------------------------------------- rendering
def _camera_for(wavelengths: Sequence[float], camera: Union[None, str, Path, CameraResponse]) -> CameraResponse:
    """The camera on the cube's grid; a given CameraResponse must already be on it (no silent resampling)."""
    grid = SpectralGrid(tuple(float(w) for w in np.asarray(wavelengths, dtype=np.float64).ravel()))
    camera = CameraResponse.load(camera if camera is not None else DEFAULT_CAMERA, grid=grid)
    if camera.grid != grid and not camera.grid.matches(grid.wavelengths):
        raise ValueError(f"camera {camera.name!r} is defined on {camera.grid} but the cube's wavelengths are {grid}")
    return camera


def _spectra(cube: Any, num_bands: int) -> np.ndarray:
    """A NumPy view of `cube` (..., B) keeping its float dtype, so E-to-E relighting is bit-exact."""
    if hasattr(cube, "detach"):  # torch tensor
        cube = cube.detach().cpu().numpy()
    cube = np.asarray(cube)
    if cube.dtype.kind != "f":
        cube = cube.astype(np.float32)
    if cube.ndim < 1 or cube.shape[-1] != num_bands:
        raise ValueError(f"expected spectra with {num_bands} bands last (H x W x B), got shape {cube.shape}")
    return cube


def _render(matrix: np.ndarray, spectra: np.ndarray) -> np.ndarray:
    """(…, B) @ (3, B)ᵀ in the spectra's dtype: the same arithmetic as `CameraResponse.render`."""
    return spectra @ matrix.T.astype(spectra.dtype)


def _exposed(power: np.ndarray, response: np.ndarray, what: str) -> np.ndarray:
    """Scale a light so a perfect white reflector's brightest channel through `response` is exactly 1."""
    peak = float(np.max(response @ power))
    if not peak > 0:
        raise IlluminantError(f"illuminant {what}: a white surface renders black through this response")
    return power / peak


def _observer(grid: SpectralGrid) -> np.ndarray:
    """CIE 1931 2° x̄ȳz̄ on the grid, each row summing to 1: a flat reflectance under E gives X = Y = Z."""
    return CameraResponse.from_preset("cie1931", grid=grid).matrix


def _white_xyz(name: str) -> np.ndarray:
    import colour

    return colour.xy_to_XYZ(colour.CCS_ILLUMINANTS["CIE 1931 2 Degree Standard Observer"][name])


def _xyz_to_linear_srgb(adapt_from_xyz: np.ndarray) -> np.ndarray:
    """3 x 3: Bradford adaptation from a white (XYZ) to sRGB's D65, then XYZ -> linear sRGB."""
    import colour

    srgb = colour.RGB_COLOURSPACES["sRGB"]
    adapt = colour.adaptation.matrix_chromatic_adaptation_VonKries(
        np.asarray(adapt_from_xyz, dtype=np.float64), colour.xy_to_XYZ(srgb.whitepoint), transform="Bradford"
    )
    return np.asarray(srgb.matrix_XYZ_to_RGB @ adapt, dtype=np.float64)


def _output_response(
    power_to: np.ndarray, camera: CameraResponse, output: str, white_balance: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(3 x B response, exposed L̂_to) for one output path; see the module docstring for the conventions."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown relighting output {output!r}; choose one of {OUTPUTS}")
    if output == "camera":
        response = camera.matrix
        light = _exposed(power_to, response, "to")
        if white_balance:
            response = response / (response @ light)[:, None]
        return response, light
    observer = _observer(camera.grid)
    adapt_from = observer @ power_to if white_balance else _white_xyz("E")
    response = _xyz_to_linear_srgb(adapt_from / adapt_from[1]) @ observer
    return response, _exposed(power_to, response, "to")


def relight(
    cube: Any,
    wavelengths: Sequence[float],
    to: IlluminantSpec,
    *,
    from_: IlluminantSpec = "E",
    camera: Union[None, str, Path, CameraResponse] = None,
    output: str = "camera",
    white_balance: bool = False,
) -> np.ndarray:
    """Linear RGB (…, 3) of spectra (…, B) re-lit from `from_` to `to` (see the module docstring).

    output "camera": the camera (default Nikon 5100) raw RGB, exposed so the white's brightest channel is 1;
    output "srgb": linear sRGB through the CIE 1931 observer. `white_balance` removes the light's cast.
    With from_ == to, output "camera" and no white balance this is exactly `camera.render(cube)`.
    """
    camera = _camera_for(wavelengths, camera)
    spectra = _spectra(cube, camera.num_bands)
    power_from = load_illuminant(from_, camera.grid)
    if np.any(power_from <= 0):
        band = float(camera.grid.as_array()[int(np.argmin(power_from))])
        raise IlluminantError(
            f"illuminant {_describe(from_)} has no power at {band:g} nm, so it cannot be divided out of the "
            "reconstruction; the photo could not have recorded that band"
        )
    light_from = _exposed(power_from, camera.matrix, _describe(from_))
    response, light_to = _output_response(load_illuminant(to, camera.grid), camera, output, white_balance)
    gain = (light_to / light_from).astype(spectra.dtype)  # exactly 1.0 per band when from_ and to coincide
    return _render(response, spectra * gain)


def white_rgb(illuminant: IlluminantSpec, camera: CameraResponse) -> np.ndarray:
    """The camera RGB of a perfect white reflector under `illuminant`, exposed as in `relight` (max channel 1)."""
    light = _exposed(load_illuminant(illuminant, camera.grid), camera.matrix, _describe(illuminant))
    return camera.matrix @ light


def von_kries(rgb: Any, to: IlluminantSpec, *, from_: IlluminantSpec = "E", camera: CameraResponse) -> np.ndarray:
    """The spectra-free baseline: scale each channel by white(to) / white(from_), both camera RGB.

    Exact for a spectrally flat scene (grey world) and for lights that differ by a constant; wrong wherever
    the light's spectrum interacts with the surface's beyond what three channels see.
    """
    if not isinstance(camera, CameraResponse):
        raise TypeError(f"von_kries needs a CameraResponse, got {type(camera).__name__}")
    rgb = _spectra(rgb, 3)
    gain = white_rgb(to, camera) / white_rgb(from_, camera)
    return rgb * gain.astype(rgb.dtype)


# ---------------------------------------------------------------------------------------------- metrics
def camera_to_xyz_matrix(camera: CameraResponse) -> np.ndarray:
    """3 x 3 colour-correction matrix M: least squares M Φ ≈ x̄ȳz̄ over the grid's bands, white-preserving.

    The one fixed map from camera RGB to XYZ used for ΔE and the figure; every method goes through it. Rows
    are constrained to sum to 1, so the E white (camera (1, 1, 1)) lands exactly on X = Y = Z and displays
    neutral; the unconstrained fit would tint it by a few percent.
    """
    observer = _observer(camera.grid)
    phi = camera.matrix
    gram_inv = np.linalg.inv(phi @ phi.T)
    unconstrained = observer @ phi.T @ gram_inv
    direction = gram_inv @ np.ones(3)  # the cheapest way (in squared error) to move a row's sum
    shortfall = 1.0 - unconstrained.sum(axis=1)
    return unconstrained + np.outer(shortfall / direction.sum(), direction)


def delta_e2000(lab_a: Any, lab_b: Any) -> np.ndarray:
    """CIEDE2000 (Sharma et al. 2005) between CIELAB arrays (…, 3), computed by colour-science."""
    import colour

    return np.asarray(colour.delta_E(np.asarray(lab_a, np.float64), np.asarray(lab_b, np.float64), method="CIE 2000"))


def camera_rgb_to_lab(rgb: np.ndarray, white: np.ndarray, camera: CameraResponse) -> np.ndarray:
    """Camera RGB (…, 3) -> CIELAB relative to `white` (the camera RGB of the scene light's perfect white)."""
    import colour

    to_xyz = camera_to_xyz_matrix(camera)
    white_xyz = to_xyz @ np.asarray(white, dtype=np.float64)
    xyz = np.asarray(rgb, dtype=np.float64) @ to_xyz.T / white_xyz[1]
    return np.asarray(colour.XYZ_to_Lab(xyz, illuminant=colour.XYZ_to_xy(white_xyz)))


def _scores(lab_gt: np.ndarray, rgb_gt: np.ndarray, rgb: np.ndarray, lab: np.ndarray) -> dict[str, float]:
    from .metrics import psnr

    de = delta_e2000(lab_gt, lab).ravel()
    return {"de00_mean": float(de.mean()), "de00_p95": float(np.percentile(de, 95)), "psnr": psnr(rgb, rgb_gt)}


def relight_metrics(
    pred_cube: Any,
    gt_cube: Any,
    input_rgb: Any,
    camera: CameraResponse,
    illuminants: Sequence[IlluminantSpec] = FIGURE_ILLUMINANTS,
    *,
    baselines: Optional[Mapping[str, Any]] = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Relighting fidelity: {illuminant: {method: {"de00_mean", "de00_p95", "psnr"}}}.

    Methods: "reconstruction" (`pred_cube`), each entry of `baselines` (name -> spectra) and "von-kries"
    (`input_rgb` scaled per channel). Cubes are reflectance and `input_rgb` the photo under E (from_="E").
    Each is rendered as the camera's raw RGB under the illuminant (no white balance) and compared with the
    ground truth's rendering: RGB PSNR with peak 1 after clamping to [0, 1], and CIEDE2000 in CIELAB after one
    shared camera -> XYZ matrix (`camera_to_xyz_matrix`). The Lab white point is that illuminant's own perfect
    white through the same path: the observer is adapted to the new light, the usual colorimetric practice,
    so ΔE measures surface colours, not the (shared) colour of the light. Under E every method that re-renders
    to its input RGB scores ΔE = 0: what remains under other lights is the relighting error alone.
    """
    wavelengths = camera.grid.as_array()
    cubes = {RECONSTRUCTION: pred_cube, **dict(baselines or {})}
    if VON_KRIES in cubes:
        raise ValueError(f"baseline name {VON_KRIES!r} is reserved for the von Kries RGB baseline")
    gt = _spectra(gt_cube, camera.num_bands)
    for name, cube in cubes.items():
        if np.shape(cube) != gt.shape:
            raise ValueError(f"{name} has shape {np.shape(cube)} but the ground truth has {gt.shape}")
    if np.shape(input_rgb) != (*gt.shape[:-1], 3):
        raise ValueError(f"input_rgb has shape {np.shape(input_rgb)}; expected {(*gt.shape[:-1], 3)}")
    result: dict[str, dict[str, dict[str, float]]] = {}
    for illuminant in illuminants:
        key = _describe(illuminant)
        white = white_rgb(illuminant, camera)
        rgb_gt = relight(gt, wavelengths, illuminant, camera=camera).astype(np.float64)
        lab_gt = camera_rgb_to_lab(rgb_gt, white, camera)
        renders = {name: relight(cube, wavelengths, illuminant, camera=camera) for name, cube in cubes.items()}
        renders[VON_KRIES] = von_kries(input_rgb, illuminant, camera=camera)
        result[key] = {
            name: _scores(lab_gt, rgb_gt, rgb, camera_rgb_to_lab(rgb, white, camera)) for name, rgb in renders.items()
        }
    return result


def relight_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A plain-text table of `relight_metrics`: one line per illuminant and method."""
    lines = [("illuminant", "method", "ΔE00 mean", "ΔE00 p95", "PSNR (dB)")]
    for illuminant, methods in metrics.items():
        for method, row in methods.items():
            scores = (f"{row[key]:.2f}" for key in ("de00_mean", "de00_p95", "psnr"))
            lines.append((illuminant, method, *scores))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]

    def render(cells: Sequence[str]) -> str:  # names left-aligned, numbers right-aligned
        return "  ".join([c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))])

    return "\n".join([render(lines[0]), "-" * len(render(lines[0])), *(render(line) for line in lines[1:])])


# ------------------------------------------------------------------------------------------ images, figure
def save_srgb_png(path: PathLike, linear_rgb: np.ndarray) -> Path:
    """Write linear RGB (H x W x 3) as an sRGB-encoded 8-bit PNG, atomically (values clipped to [0, 1])."""
    from PIL import Image

    from .io import atomic_write
    from .visualize import _encode_srgb

    linear_rgb = np.asarray(linear_rgb)
    if linear_rgb.ndim != 3 or linear_rgb.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {linear_rgb.shape}")
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(_encode_srgb(linear_rgb), mode="RGB").save(tmp, format="PNG")
    return path


def camera_to_display(rgb: np.ndarray, camera: CameraResponse) -> np.ndarray:
    """Camera RGB -> sRGB-encoded uint8 for viewing: the ΔE path's XYZ, E-adapted to D65 (casts are kept)."""
    from .visualize import _encode_srgb

    matrix = _xyz_to_linear_srgb(_white_xyz("E")) @ camera_to_xyz_matrix(camera)
    return _encode_srgb(np.asarray(rgb, dtype=np.float64) @ matrix.T)


def relight_figure(
    path: PathLike,
    gt_cube: Any,
    pred_cube: Any,
    input_rgb: Any,
    camera: CameraResponse,
    illuminants: Sequence[IlluminantSpec] = FIGURE_ILLUMINANTS,
) -> Path:
    """One PNG: a row per illuminant; ground truth, reconstruction and von Kries side by side.

    All three are camera renderings under the light (no white balance), shown through `camera_to_display`, so
    differences between columns are the methods', not the display's; panels carry their mean ΔE00.
    """
    from .visualize import _figure, _save_figure

    if not illuminants:
        raise ValueError("relight_figure needs at least one illuminant")
    wavelengths = camera.grid.as_array()
    gt = _spectra(gt_cube, camera.num_bands)
    if gt.ndim != 3:
        raise ValueError(f"relight_figure needs H x W x B cubes, got shape {gt.shape}")
    scores = relight_metrics(pred_cube, gt, input_rgb, camera, illuminants)
    height, width = gt.shape[:2]
    panel = 3.2
    fig = _figure(figsize=(3 * panel, len(illuminants) * panel * height / width + 0.6), dpi=100, layout="constrained")
    axes = np.asarray(fig.subplots(len(illuminants), 3, squeeze=False))
    columns = (("ground truth", None), ("reconstruction", RECONSTRUCTION), ("von Kries", VON_KRIES))
    for row, illuminant in enumerate(illuminants):
        key = _describe(illuminant)
        images = (
            relight(gt, wavelengths, illuminant, camera=camera),
            relight(pred_cube, wavelengths, illuminant, camera=camera),
            von_kries(input_rgb, illuminant, camera=camera),
        )
        for col, ((title, method), image) in enumerate(zip(columns, images)):
            ax = axes[row, col]
            ax.imshow(camera_to_display(image, camera))
            ax.set_xticks([])
            ax.set_yticks([])
            parts = [title] if row == 0 else []
            if method is not None:
                parts.append(f"ΔE00 {scores[key][method]['de00_mean']:.2f}")
            ax.set_title(", ".join(parts), fontsize="small")
            if col == 0:
                ax.set_ylabel(f"under {key}")
    fig.suptitle(f"Spectral relighting ({camera.name}, raw camera RGB, no white balance)", fontsize="medium")
    return _save_figure(fig, path)
