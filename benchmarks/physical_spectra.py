"""How physical the shipped models' spectra are on real photographs, with and without the projection, and its cost.

    python benchmarks/physical_spectra.py [--models uldm mstpp r2hdiff baseline] [--datasets kodak24 mcmaster18]
        [--limit N] [--max-side S] [--large-megapixels 12] [--json benchmarks/results/physical_spectra.json]

Each model runs at its defaults (what `uldm reconstruct` does: the photo's sRGB undone, then the model's camera)
on the photographs of ../shared/data/rgb/<dataset>, shrunk to at most `--max-side` pixels (0: as they are), once
with `physical=False` (the raw estimate, timed), whose spectra are then made physical by the very function the
pipelines use (`pipelines.common.physical_spectra`, bands of rows, timed on its own); a test checks that this equals
the pipelines' default output. Per model and dataset, pooled over every pixel, raw and physical:

- "< -0.01", "> 1.01": the pixels with a band below -0.01 / above 1.01 (%); "min": the most negative value;
- "out of gamut": the pixels the projection flags (%): no spectrum in [0, 2] renders to their RGB;
- "in-gamut RGB err": max |Φs − c| over the pixels not flagged (float64, against the linear RGB);
- "s/image" of the raw model, and "proj. s" the projection's, with their ratio "+%".

`--large-megapixels` also times the composition of the first ULDM asked for at that size: the first photo, enlarged
to that many pixels (4:3 crop of its centre, bilinear), through the pipeline raw, then the projection of its
output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from uldm.pipelines.common import physical_spectra
from uldm.checkpoints import CHECKPOINTS_DIR, load_reconstructor
from uldm.images import load_linear_rgb
from uldm.io import save_json

PHOTOS = CHECKPOINTS_DIR.parent.parent / "shared" / "data" / "rgb"
MODELS = {"uldm": ("ULDM", "uldm-cave"), "uldm-srgb": ("ULDM for sRGB photos", "uldm-srgb"),
          "mstpp": ("MST++", "mstpp-cave"), "r2hdiff": ("R2H-Diff", "r2hdiff-cave"),
          "baseline": ("root-polynomial regression", "baseline-rootpoly-nikon5100.npz")}
COLUMNS = (("negative", "< -0.01", "{:.2f}%"), ("above_one", "> 1.01", "{:.2f}%"), ("min", "min", "{:.3f}"),
           ("out_of_gamut", "out of gamut", "{:.2f}%"), ("in_gamut_rgb_error", "in-gamut RGB err", "{:.1e}"))


# -------------------------------------------------------------------------------------------------- inputs
def photographs(dataset: str, limit: Optional[int]) -> list[Path]:
    folder = PHOTOS / dataset
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} not found (the photographs live in ../shared/data/rgb)")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return paths[:limit] if limit else paths


def linear_photo(path: Path, max_side: int) -> np.ndarray:
    """The photo's linear RGB (sRGB undone, as `uldm reconstruct` reads it), its longer side at most `max_side`."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return load_linear_rgb(np.asarray(image), "srgb")


def enlarged(rgb: np.ndarray, megapixels: float) -> np.ndarray:
    """A 4:3 crop of the photo's centre, enlarged bilinearly to about `megapixels` (what a camera's photo costs)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 8)) * 8
    height = width * 3 // 4
    rows = min(rgb.shape[0], rgb.shape[1] * 3 // 4)
    top, left = (rgb.shape[0] - rows) // 2, (rgb.shape[1] - rows * 4 // 3) // 2
    crop = torch.from_numpy(np.ascontiguousarray(rgb[top:top + rows, left:left + rows * 4 // 3])).permute(2, 0, 1)
    big = torch.nn.functional.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False)
    return big[0].clamp(0, 1).permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------------ measures
def reconstruct(model, rgb: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, float]:
    """(raw spectra, their seconds, physical spectra, out-of-gamut mask, the projection's seconds)."""
    start = time.perf_counter()
    raw = model.predict(rgb).spectra
    seconds = time.perf_counter() - start
    spectra = torch.from_numpy(raw.copy()).permute(2, 0, 1)[None]  # 1 x B x H x W, a view of H x W x B
    target = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    start = time.perf_counter()
    spectra, mask = physical_spectra(model.camera, spectra, target)
    projection = time.perf_counter() - start
    return raw, seconds, spectra[0].permute(1, 2, 0).numpy(), mask[0].numpy(), projection


def counts(spectra: np.ndarray, rgb: np.ndarray, camera, mask: np.ndarray) -> dict[str, float]:
    """Pixel counts and extremes of one image, to be pooled over a dataset."""
    error = np.abs(camera.render(spectra.astype(np.float64)) - rgb).max(axis=-1)
    return {"pixels": float(mask.size), "negative": float((spectra < -0.01).any(axis=-1).sum()),
            "above_one": float((spectra > 1.01).any(axis=-1).sum()), "min": float(spectra.min()),
            "out_of_gamut": float(mask.sum()), "in_gamut_rgb_error": float(error[~mask].max(initial=0.0))}


def pooled(rows: list[dict[str, float]]) -> dict[str, float]:
    pixels = sum(r["pixels"] for r in rows)
    out = {key: 100 * sum(r[key] for r in rows) / pixels for key in ("negative", "above_one", "out_of_gamut")}
    out.update(min=min(r["min"] for r in rows), in_gamut_rgb_error=max(r["in_gamut_rgb_error"] for r in rows))
    return out


def run_dataset(model, paths: list[Path], max_side: int) -> dict[str, Any]:
    raw_rows, physical_rows, per_image = [], [], []
    for path in paths:
        rgb = linear_photo(path, max_side)
        raw, seconds, physical, mask, projection = reconstruct(model, rgb)
        raw_rows.append(counts(raw, rgb, model.camera, mask))
        physical_rows.append(counts(physical, rgb, model.camera, mask))
        per_image.append({"image": path.name, "size": list(rgb.shape[:2]), "seconds": seconds,
                          "projection_seconds": projection, "out_of_gamut": 100 * float(mask.mean())})
        print(f"  {path.name}: {seconds:.2f} s + {projection:.2f} s projection, "
              f"{per_image[-1]['out_of_gamut']:.2f}% out of gamut", flush=True)
    seconds = float(np.mean([r["seconds"] for r in per_image]))
    projection = float(np.mean([r["projection_seconds"] for r in per_image]))
    return {"images": len(paths), "raw": pooled(raw_rows), "physical": pooled(physical_rows),
            "seconds_per_image": seconds, "projection_seconds_per_image": projection,
            "projection_overhead_percent": 100 * projection / seconds, "per_image": per_image}


def run_large(megapixels: float, first_photo: Path, key: str = "uldm") -> dict[str, Any]:
    """The ULDM `key` of MODELS at its defaults on one enlarged photo: raw seconds and the projection's."""
    model = load_reconstructor(CHECKPOINTS_DIR / MODELS[key][1], physical=False)
    rgb = enlarged(linear_photo(first_photo, 0), megapixels)
    _, seconds, _, mask, projection = reconstruct(model, rgb)
    return {"image": f"{first_photo.name}, enlarged", "size": list(rgb.shape[:2]), "seconds": seconds,
            "projection_seconds": projection, "projection_overhead_percent": 100 * projection / seconds,
            "out_of_gamut": 100 * float(mask.mean())}


# ------------------------------------------------------------------------------------------------- report
def table(results: dict[str, Any]) -> str:
    header = ["model", "photos", "projection"] + [name for _, name, _ in COLUMNS] + ["s/image", "proj. s", "+%"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, datasets in results.items():
        for dataset, row in datasets.items():
            for kind in ("raw", "physical"):
                values = [fmt.format(row[kind][key]) if kind == "physical" or key != "out_of_gamut" else "-"
                          for key, _, fmt in COLUMNS]
                cost = ([f"{row['seconds_per_image']:.2f}", "-", "-"] if kind == "raw" else
                        ["-", f"{row['projection_seconds_per_image']:.2f}", f"{row['projection_overhead_percent']:.1f}"])
                lines.append("| " + " | ".join([label, f"{dataset} ({row['images']})", kind, *values, *cost]) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["uldm", "mstpp", "baseline"])
    parser.add_argument("--datasets", nargs="+", default=["kodak24", "mcmaster18"])
    parser.add_argument("--limit", type=int, help="the first N photographs of each dataset (default: all)")
    parser.add_argument("--max-side", type=int, default=0, help="shrink photos to this longer side (default 0: as they are)")
    parser.add_argument("--large-megapixels", type=float, help="also time the ULDM on one photo enlarged to this size")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "physical_spectra.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    inputs = {dataset: photographs(dataset, args.limit) for dataset in args.datasets}  # fail before any model loads

    results: dict[str, Any] = {}
    for key in args.models:
        label, checkpoint = MODELS[key]
        model = load_reconstructor(CHECKPOINTS_DIR / checkpoint, physical=False)
        results[label] = {}
        for dataset, paths in inputs.items():
            print(f"{label} on {dataset} ({len(paths)} photos)", flush=True)
            results[label][dataset] = run_dataset(model, paths, args.max_side)
    report: dict[str, Any] = {"settings": {"models": args.models, "datasets": args.datasets, "limit": args.limit,
                                           "max_side": args.max_side, "threads": args.threads},
                              "results": results}
    print(table(results))
    if args.large_megapixels:
        key = next((key for key in args.models if key.startswith("uldm")), "uldm")  # the first ULDM asked for
        report["large"] = {**run_large(args.large_megapixels, next(iter(inputs.values()))[0], key),
                           "model": MODELS[key][0]}
        large = report["large"]
        print(f"{large['model']} at {large['size'][1]} x {large['size'][0]}: {large['seconds']:.1f} s raw + "
              f"{large['projection_seconds']:.1f} s projection (+{large['projection_overhead_percent']:.1f}%), "
              f"{large['out_of_gamut']:.2f}% out of gamut")
    save_json(report, args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
