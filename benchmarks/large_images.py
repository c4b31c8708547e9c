"""Peak memory and seconds of `uldm reconstruct` on photographs of 1, 4 and 12 megapixels (4:3), on this CPU.

    python benchmarks/large_images.py [--checkpoint checkpoints/uldm-cave] [--megapixels 1 4 12] [--json OUT]

Each size runs in a fresh process (`uldm reconstruct` on a smooth synthetic 8-bit photo, writing its HDF5 cube),
whose peak resident memory is the kernel's (getrusage of the child) and its wall-clock the whole command's,
model loading included. With a processing resolution (the pipeline's default, or --processing-resolution) the
diffusion costs the same at every size; what grows with the pixels is the per-pixel tail and the output.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from uldm.io import save_json


def synthetic_photo(path: Path, megapixels: float) -> tuple[int, int]:
    """A smooth 4:3 colour image of about `megapixels` (8-bit JPEG content does not change the cost)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 8)) * 8
    height = width * 3 // 4
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    image = np.stack([0.2 + 0.6 * y * np.ones_like(x), 0.3 + 0.5 * x * np.ones_like(y), 0.7 - 0.4 * x * y], -1)
    Image.fromarray((image * 255).astype(np.uint8)).save(path, quality=95)
    return width, height


def measure(checkpoint: Optional[str], megapixels: float, folder: Path, resolution: Optional[int]) -> dict:
    photo = folder / f"photo-{megapixels:g}mp.jpg"
    width, height = synthetic_photo(photo, megapixels)
    command = [sys.executable, "-m", "uldm.cli", "reconstruct", str(photo), "-o", str(folder / "out"), "--overwrite"]
    command += ["--checkpoint", checkpoint] if checkpoint else []
    command += ["--processing-resolution", str(resolution)] if resolution is not None else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    if peak_kib <= before:
        print(f"warning: the peak of the {megapixels:g} MP run is not above an earlier child's ({before} KiB): "
              "run sizes in increasing order", file=sys.stderr)
    return {"megapixels": width * height / 1e6, "width": width, "height": height, "seconds": seconds,
            "peak_rss_gib": peak_kib / 2**20}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the shipped ULDM")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 12])
    parser.add_argument("--processing-resolution", type=int, help="default: the pipeline's")
    parser.add_argument("--json", type=Path, metavar="OUT")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for megapixels in sorted(args.megapixels):  # increasing: getrusage reports the largest child so far
            rows.append(measure(args.checkpoint, megapixels, Path(tmp), args.processing_resolution))
            row = rows[-1]
            print(f"{row['width']} x {row['height']} ({row['megapixels']:.1f} MP): {row['seconds']:.1f} s, "
                  f"peak {row['peak_rss_gib']:.2f} GiB ({row['seconds'] / row['megapixels']:.1f} s per MP)")
    if args.json is not None:
        save_json({"checkpoint": args.checkpoint or "default", "rows": rows}, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
