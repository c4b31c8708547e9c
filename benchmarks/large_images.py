"""Peak memory and seconds of `uldm reconstruct` on photographs of 1 to 48 megapixels (4:3), on this CPU.

    python benchmarks/large_images.py [--checkpoint checkpoints/uldm-cave] [--megapixels 1 4 12 24 48]
        [--threads 2] [--profile 12] [--json OUT]

Each size runs in a fresh process (`uldm reconstruct` on a smooth synthetic 8-bit photo, writing its HDF5 cube,
streamed band of rows by band of rows), whose peak resident memory is the kernel's (the child's own rusage, from
wait4) and its wall-clock the whole command's, model loading included; `--threads` sets the child's intra-op
threads. The load average before and after each run is recorded: on a shared machine it says how busy the cores
were. With a processing resolution (the pipeline's default, or --processing-resolution) the diffusion costs the
same at every size; what grows with the pixels is the per-pixel tail, and the input's RGB (the cube is never held
whole).

`--profile MP` runs the command once more at that size, in a fresh process, with timers around each part
(`inference_speed.ComponentTimer`, exclusive time): reading, model loading, the diffusion (VAE encode, UNet, VAE
decode), the SpeUAE and its prior at full size, the physical projection, the composition (the rest of the
per-band work), the RGB error, and writing as the main thread sees it (waiting for the writer's thread); the
writer's thread, which compresses and writes each band while the next is computed, is timed on its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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


def reconstruct_arguments(photo: Path, out: Path, checkpoint: Optional[str], resolution: Optional[int]) -> list[str]:
    argv = ["reconstruct", str(photo), "-o", str(out), "--overwrite"]
    argv += ["--checkpoint", checkpoint] if checkpoint else []
    return argv + (["--processing-resolution", str(resolution)] if resolution is not None else [])


def run_child(command: list[str], threads: int) -> tuple[float, float, str]:
    """(seconds, peak resident GiB of that process alone, its stdout) of a command run with `threads` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 2**20, out.read()


def measure(checkpoint: Optional[str], megapixels: float, folder: Path, resolution: Optional[int],
            threads: int) -> dict:
    photo = folder / f"photo-{megapixels:g}mp.jpg"
    width, height = synthetic_photo(photo, megapixels)
    command = [sys.executable, "-m", "uldm.cli", *reconstruct_arguments(photo, folder / "out", checkpoint, resolution)]
    load_before = os.getloadavg()[0]
    seconds, peak, _ = run_child(command, threads)
    return {"megapixels": width * height / 1e6, "width": width, "height": height, "seconds": seconds,
            "peak_rss_gib": peak, "load_average_before": load_before, "load_average_after": os.getloadavg()[0]}


# ---------------------------------------------------------------------------------------------- profile
PROFILED = "--profiled-command"  # first argument of the process `profile` starts
def profile(checkpoint: Optional[str], megapixels: float, folder: Path, resolution: Optional[int],
            threads: int) -> dict:
    """The --profile run: this script in a fresh process (`profiled_command`), its parts read from its stdout."""
    photo = folder / f"photo-{megapixels:g}mp.jpg"
    width, height = synthetic_photo(photo, megapixels)
    command = [sys.executable, __file__, PROFILED,
               *reconstruct_arguments(photo, folder / "out", checkpoint, resolution)]
    load_before = os.getloadavg()[0]
    seconds, peak, output = run_child(command, threads)
    parts = json.loads(output.strip().splitlines()[-1])
    parts["parts"] = {"start-up (Python imports)": seconds - parts.pop("command_s"), **parts["parts"]}
    return {"megapixels": width * height / 1e6, "width": width, "height": height, "seconds": seconds,
            "peak_rss_gib": peak, "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
            **parts}


def profiled_command(argv: Sequence[str]) -> int:
    """`uldm reconstruct argv` with timers around its parts; prints {"parts": {label: s}, "writer_thread_s": s}."""
    import torch

    from uldm import baseline, camera, cli, feasibility, images, io
    from uldm.pipelines import pipeline_spectral_reconstruction as uldm_pipeline

    spec = importlib.util.spec_from_file_location("inference_speed", Path(__file__).with_name("inference_speed.py"))
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    timer = speed.ComponentTimer(torch.device("cpu"))
    load = cli.model_from_args

    def load_and_instrument(args):
        model = load(args)
        if hasattr(model, "pipeline"):
            speed.instrument(model.pipeline, timer)
        return model

    cli.model_from_args = load_and_instrument
    timer.wrap(cli, "model_from_args", "model loading")
    timer.wrap(images, "load_linear_rgb", "reading (decode, sRGB to linear)")
    timer.wrap(baseline.RootPolynomialRegression, "stream", "the regression at full size")
    for module in (feasibility, uldm_pipeline):  # the baseline imports it when it runs, the ULDM at import
        timer.wrap(module, "project_feasible", "physical projection")
    timer.wrap(camera.CameraResponse, "render_error", "RGB error (float64)")
    for method in ("write", "close"):
        timer.wrap(io.CubeWriter, method, "writing (waiting for the writer's thread)")
    writer_seconds = [0.0]
    for kind in io.CubeWriter.__subclasses__():  # the writer's own thread: a clock of its own
        def timed(self, *args, _write=kind._write_band):
            start = time.perf_counter()
            _write(self, *args)
            writer_seconds[0] += time.perf_counter() - start
        kind._write_band = timed
    start = time.perf_counter()
    status = cli.main(list(argv))
    total = time.perf_counter() - start
    parts = dict(timer.seconds)
    parts["rest"] = total - sum(parts.values())
    print(json.dumps({"parts": parts, "writer_thread_s": writer_seconds[0], "command_s": total}))
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the shipped ULDM")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 12, 24, 48])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of each run (default: 2)")
    parser.add_argument("--processing-resolution", type=int, help="default: the pipeline's")
    parser.add_argument("--profile", type=float, metavar="MP", help="also profile one run of this size")
    parser.add_argument("--json", type=Path, metavar="OUT")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [PROFILED]:  # the profile's own process: the command's arguments follow
        return profiled_command(argv[1:])
    args = parser.parse_args(argv)
    result = {"checkpoint": args.checkpoint or "default", "threads": args.threads, "cpus": os.cpu_count(),
              "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for megapixels in sorted(args.megapixels):
            result["rows"].append(measure(args.checkpoint, megapixels, Path(tmp), args.processing_resolution,
                                          args.threads))
            row = result["rows"][-1]
            print(f"{row['width']} x {row['height']} ({row['megapixels']:.1f} MP): {row['seconds']:.1f} s, "
                  f"peak {row['peak_rss_gib']:.2f} GiB ({row['seconds'] / row['megapixels']:.1f} s per MP; load "
                  f"average {row['load_average_before']:.1f} -> {row['load_average_after']:.1f})", flush=True)
        if args.profile is not None:
            result["profile"] = profile(args.checkpoint, args.profile, Path(tmp), args.processing_resolution,
                                        args.threads)
            print(f"profile at {result['profile']['megapixels']:.1f} MP ({result['profile']['seconds']:.1f} s, "
                  f"peak {result['profile']['peak_rss_gib']:.2f} GiB):")
            for part, seconds in result["profile"]["parts"].items():
                print(f"  {part:<45} {seconds:7.1f} s")
            print(f"  {'(the writer thread, alongside)':<45} {result['profile']['writer_thread_s']:7.1f} s")
    if args.json is not None:
        save_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
