"""Make the bundled sample: a ColorChecker chart from colour-science's measured reflectances.

Writes samples/colorchecker_truth.h5 (the 31-band ground truth), samples/colorchecker.png (an sRGB photograph of
it: what the sRGB observer sees, CIE 1931 under D65 with white at 1, sRGB-encoded 16-bit PNG; for checkpoints/uldm-srgb)
and samples/colorchecker_nikon5100.png (what a Nikon 5100 sees of it, its linear RGB sRGB-encoded; for
checkpoints/uldm-cave, read with --input-space srgb as written). The data are public (N. Ohta's measurements as
shipped by colour-science), so the sample is freely redistributable. Run: python scripts/make_sample.py
"""

from pathlib import Path

import numpy as np

from uldm import DEFAULT_GRID, CameraResponse
from uldm.images import linear_to_srgb, save_png16
from uldm.io import save_cube

PATCH, GAP, ROWS, COLS = 40, 6, 4, 6


def chart_cube() -> np.ndarray:
    import colour

    checker = colour.SDS_COLOURCHECKERS["ColorChecker N Ohta"]
    spectra = np.stack([sd.copy().align(colour.SpectralShape(400, 700, 10)).values for sd in checker.values()])
    height, width = ROWS * (PATCH + GAP) + GAP, COLS * (PATCH + GAP) + GAP
    cube = np.full((height, width, DEFAULT_GRID.num_bands), 0.03)  # dark frame between the patches
    for index, spectrum in enumerate(spectra):
        row, col = divmod(index, COLS)
        top, left = GAP + row * (PATCH + GAP), GAP + col * (PATCH + GAP)
        cube[top:top + PATCH, left:left + PATCH] = spectrum
    yy, xx = np.mgrid[0:height, 0:width]
    shading = 0.75 + 0.25 * np.cos((xx / width - 0.4) * 1.6) * np.cos((yy / height - 0.5) * 1.2)  # uneven light
    return np.clip(cube * shading[..., None], 0.0, 1.0).astype(np.float32)


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "samples"
    cube = chart_cube()
    photo, nikon = CameraResponse.from_preset("srgb"), CameraResponse.from_preset("nikon5100")
    save_cube(out / "colorchecker_truth.h5", cube, DEFAULT_GRID.as_array(), camera=photo,
              attrs={"source": "colour-science SDS_COLOURCHECKERS['ColorChecker N Ohta'], scripts/make_sample.py",
                     "renderings": "colorchecker.png: this camera (the sRGB observer); colorchecker_nikon5100.png: "
                                   "Nikon 5100; both sRGB-encoded"})
    save_png16(out / "colorchecker.png", linear_to_srgb(np.clip(photo.render(cube), 0, 1)))
    save_png16(out / "colorchecker_nikon5100.png", linear_to_srgb(nikon.render(cube)))
    print(f"wrote {out / 'colorchecker.png'}, {out / 'colorchecker_nikon5100.png'} and {out / 'colorchecker_truth.h5'}: "
          f"{cube.shape}")


if __name__ == "__main__":
    main()
