"""Inference speed of a diffusion checkpoint (ULDM or R2H-Diff): images/s and peak memory at a given resolution.

    python benchmarks/inference_speed.py --checkpoint checkpoints/uldm-cave --resolution 512 \\
        [--dtype fp32 bf16 fp16] [--batch-size 1 4] [--count 8] [--offload]

Runs the pipeline as users call it (linear RGB in, spectra out, default steps unless --steps) on random RGB images
of the given size, on the GPU when there is one; the first call (warm-up) is not timed. Peak memory is CUDA's
max_memory_allocated over the timed calls. --offload adds rows with `enable_model_cpu_offload()`.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import numpy as np
import torch

from uldm.checkpoints import load_pipeline

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_calls(pipeline, images: np.ndarray, steps: Optional[int], batch_size: int, device: torch.device) -> tuple[float, float]:
    """(images per second, peak GiB) over all `images`, after one untimed warm-up call."""
    def call(batch: np.ndarray) -> None:
        pipeline(batch, num_inference_steps=steps, input_space="linear", batch_size=batch_size,
                 generator=torch.Generator().manual_seed(0), show_progress_bar=False)

    call(images[:batch_size])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        call(images[first:first + batch_size])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return len(images) / seconds, peak


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--count", type=int, default=8, help="timed images (default 8)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1], help="images per call (default 1)")
    parser.add_argument("--offload", action="store_true", help="also time enable_model_cpu_offload()")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    images = np.random.default_rng(0).random((args.count, args.resolution, args.resolution, 3)).astype(np.float32) * 0.8
    print(f"{args.checkpoint}, {args.resolution}x{args.resolution}, {name}")
    print(f"{'dtype':>6} {'offload':>8} {'batch':>6} {'images/s':>9} {'s/image':>8} {'peak GiB':>9}")
    for dtype_name in args.dtype:
        for offload in ([False, True] if args.offload and device.type == "cuda" else [False]):
            pipeline = load_pipeline(args.checkpoint, dtype=DTYPES[dtype_name])
            if offload:
                pipeline.enable_model_cpu_offload()
            else:
                pipeline.to(device)
            for batch_size in args.batch_size:
                rate, peak = time_calls(pipeline, images, args.steps, batch_size, device)
                print(f"{dtype_name:>6} {str(offload):>8} {batch_size:>6} {rate:>9.2f} {1 / rate:>8.3f} {peak:>9.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
