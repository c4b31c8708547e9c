"""Inference speed: latency, throughput, achieved FLOP/s against the device's peak, memory, and where the time goes.

    # CPU: the shipped ULDM at its defaults beside MST++ in one process, 256 and 512, with profiles
    python benchmarks/inference_speed.py --model uldm=checkpoints/uldm-cave --model mstpp=checkpoints/mstpp-cave \\
        --resolution 256 512 --profile --json benchmarks/results/inference_speed_cpu.json
    # GPU (`bash scripts/gpu_speed.sh` runs this, the GPU tests and a sync check in one command)
    python benchmarks/inference_speed.py --model uldm=checkpoints/uldm-cave --model sd21-kl=scaffold:sd21:kl \\
        --model sd21-tiny=scaffold:sd21:taesd --resolution 512 --dtype bf16 --batch-size 1 32 --channels-last --compile

Models: a pipeline folder or hub id (any uldm pipeline), or `scaffold:SIZE:VAE`: a ULDM with random weights of an
`uldm.sd_scaffold` size ("sd21": Stable Diffusion 2.1's UNet and VAE architecture) and SpaAE ("kl": AutoencoderKL,
"taesd": AutoencoderTiny); speed depends on neither weights nor image content.

1. Side by side: every model at its defaults, batch 1, one call each in turn, --repeats rounds; best per model,
   and each model's time over the first model's (absolute times on shared machines vary run to run; the ratio
   from interleaved calls much less).
2. Configurations: per model, dtype and variant (eager; + channels_last; + torch.compile of the UNet and the
   SpaAE's encoder and decoder, its first call's extra seconds reported as compile time, inductor's caches off):
   ms per image at batch 1, images/s at each --batch-size, GFLOP per image (torch's FlopCounterMode over one
   batch-1 call: matmuls, convolutions and attention, multiply-add = 2), achieved TFLOP/s at the best throughput
   and its share of the device's peak (PEAKS: vendor datasheets, dense; --peak-tflops for other devices), peak
   memory (CUDA's max_memory_allocated less the other models loaded beside it; on the CPU the resident set's growth
   over the calls, sampled every 2 ms).
3. --profile: one batch-1 call at the defaults, split by timers around each component (exclusive time; CUDA is
   synchronised at every boundary): input (read an sRGB PNG), VAE encode, UNet, VAE decode, SpeUAE and prior,
   composition, the rest of the pipeline, output (write the HDF5 cube).

The first call of every configuration (allocation, kernel selection) is a warm-up and not timed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging

from uldm.checkpoints import PipelineReconstructor, load_pipeline
from uldm.cli import DTYPES as DTYPE_NAMES
from uldm.io import save_json

HERE = Path(__file__).resolve().parent
DTYPES = {name: getattr(torch, attribute) for name, attribute in DTYPE_NAMES.items()}  # the CLI's --dtype names

# Dense tensor-core peaks in TFLOP/s (NVIDIA datasheets; their sparsity figures halved). fp32 is TF32 tensor-core
# math where PyTorch uses it (convolutions by default), so an fp32 share is against that, not plain fp32.
PEAKS = {  # device-name substring (first match wins): {dtype: TFLOP/s}
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "fp32": 417.5},
    "H200": {"bf16": 989.5, "fp16": 989.5, "fp32": 494.7},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "fp32": 417.5},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.5, "fp16": 989.5, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "fp32": 183.0},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0},
}
PEAK_SOURCE = "NVIDIA datasheet, dense (half the sparsity figure)"
PROFILE_ORDER = ("input (PNG read)", "VAE encode", "UNet", "VAE decode", "SpeUAE and prior", "composition",
                 "network", "rest of the pipeline", "output (HDF5 write)")


# ------------------------------------------------------------------------------------------------ models
@functools.cache
def _benchmark(name: str):
    """A sibling benchmark script as a module (they are scripts, not a package), loaded once."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scaffold_pipeline(size: str, vae: str):
    """A ULDM pipeline with random weights: an `uldm.sd_scaffold` UNet (widened to take the RGB latent) and SpaAE
    ("kl", or "taesd" for AutoencoderTiny), SpeUAE for a synthetic camera, DDIM at 1 step."""
    from uldm.camera import CameraResponse
    from uldm.models import SpeUAE
    from uldm.models.sd_adapter import encode_empty_prompt, widen_conv_in
    from uldm.sd_scaffold import build_small_sd
    from uldm.spectral import DEFAULT_GRID
    from uldm.stages.train_uldm import build_pipeline

    sd = build_small_sd(size, prediction_type="sample", vae=vae, vae_init="random")
    response = torch.rand(3, DEFAULT_GRID.num_bands, generator=torch.Generator().manual_seed(0)).double().numpy()
    speuae = SpeUAE.for_camera(CameraResponse("synthetic", response))
    return build_pipeline(widen_conv_in(sd.unet), sd.vae, sd.scheduler, speuae,
                          encode_empty_prompt(sd.tokenizer, sd.text_encoder), default_denoising_steps=1)


def load_model(spec: str, dtype: torch.dtype, device: torch.device):
    if spec.startswith("scaffold:"):
        _, size, vae = spec.split(":")
        pipeline = scaffold_pipeline(size, vae).to(dtype=dtype)
    else:
        pipeline = load_pipeline(spec, dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def spatial_modules(pipeline) -> list[torch.nn.Module]:
    """The convolutional networks a layout change or compilation concerns: the UNet and the SpaAE's encoder and
    decoder (ULDM), or the one network (R2H-Diff, MST++)."""
    if hasattr(pipeline, "unet"):
        return [pipeline.unet, pipeline.vae.encoder, pipeline.vae.decoder]
    return [pipeline.net]


def apply_variant(pipeline, variant: str, compile_mode: Optional[str] = None) -> None:
    """'channels_last': the networks' weights in NHWC (activations follow); 'compile': torch.compile each in place
    (types and configs stay, so the pipeline is unchanged; mode "reduce-overhead" adds CUDA graphs); 'eager' leaves
    them."""
    for module in spatial_modules(pipeline):
        if variant == "channels_last":
            module.to(memory_format=torch.channels_last)
        elif variant == "compile":
            module.compile(mode=compile_mode, dynamic=False)  # one graph per shape: slower to warm up, fewer failures


def attention_kind(pipeline) -> Optional[str]:
    """The UNet's attention processor classes (diffusers' AttnProcessor2_0 is PyTorch's SDPA), if it has any."""
    unet = getattr(pipeline, "unet", None)
    kinds = sorted({type(p).__name__ for p in unet.attn_processors.values()}) if unet is not None else []
    return ", ".join(kinds) or None


def peak_tflops(device_name: str, dtype: str, override: Optional[float]) -> Optional[float]:
    if override:
        return override
    for key, peaks in PEAKS.items():
        if key in device_name:
            return peaks[dtype]
    return None


# ---------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_images(count: int, size: int) -> np.ndarray:
    """`count` copies of a smooth linear-RGB test image (content changes neither the FLOPs nor the time)."""
    return np.repeat(_benchmark("compare_models").cost_image(size)[None], count, axis=0)


def call(pipeline, images: np.ndarray, batch_size: int = 1):
    return pipeline(images, input_space="linear", batch_size=batch_size, generator=torch.Generator().manual_seed(0))


def timed(function: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one call, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


class ResidentPeak:
    """The peak growth of this process's resident memory while the block runs (GiB), sampled every 2 ms: the CPU's
    counterpart of CUDA's peak allocation."""

    def __enter__(self) -> "ResidentPeak":
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 2**30

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())


def side_by_side(pipelines: dict[str, Any], size: int, repeats: int, device: torch.device) -> dict[str, dict]:
    """Batch-1 seconds per model, the models' calls interleaved round by round; best of `repeats` each."""
    image = test_images(1, size)
    for pipeline in pipelines.values():
        call(pipeline, image)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(repeats):
        for name, pipeline in pipelines.items():
            times[name].append(timed(lambda: call(pipeline, image), device)[0])
    first = min(times[next(iter(pipelines))])
    return {name: {"seconds": min(values), "all_seconds": values, "ratio_to_first": min(values) / first}
            for name, values in times.items()}


def measure_configuration(pipeline, size: int, batch_sizes: Sequence[int], repeats: int,
                          device: torch.device) -> dict[str, Any]:
    """Latency (batch 1), throughput per batch size and peak memory of the pipeline as it is now; the first call's
    extra time over the steady one is reported as warm-up (compile time when compiled)."""
    row: dict[str, Any] = {"throughput": {}}
    one = test_images(1, size)
    first = timed(lambda: call(pipeline, one), device)[0]
    latencies = [timed(lambda: call(pipeline, one), device)[0] for _ in range(repeats)]
    row["ms_per_image_batch1"] = 1000 * min(latencies)
    row["warmup_seconds"] = first - min(latencies)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        others = torch.cuda.memory_allocated(device) - weight_bytes(pipeline)  # the other models loaded beside it
    with ResidentPeak() as resident:
        for batch in batch_sizes:
            images = test_images(batch, size)
            call(pipeline, images, batch)  # warm-up at this batch size
            seconds = min(timed(lambda: call(pipeline, images, batch), device)[0] for _ in range(repeats))
            row["throughput"][str(batch)] = batch / seconds
    row["peak_memory_gib"] = ((torch.cuda.max_memory_allocated(device) - others) / 2**30 if device.type == "cuda"
                              else resident.gib)
    row["peak_memory_kind"] = ("cuda max_memory_allocated, this model's weights and work" if device.type == "cuda"
                               else "resident set growth")
    return row


def weight_bytes(pipeline) -> int:
    """Bytes of the pipeline's parameters and buffers."""
    modules = [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def flops_per_image(pipeline, size: int) -> tuple[float, dict[str, float]]:
    """(GFLOP of one batch-1 call at the pipeline's defaults, GFLOP per top-level module) by FlopCounterMode."""
    config = pipeline.config
    by_module: dict[str, float] = {}
    total = _benchmark("compare_models").pipeline_flops(
        PipelineReconstructor(pipeline), test_images(1, size)[0], config.get("default_denoising_steps", 1),
        config.get("default_ensemble_size", 1), by_module)
    return total / 1e9, by_module


def configuration_row(pipeline, size: int, args: argparse.Namespace, device: torch.device,
                      flops: dict[tuple, tuple[float, dict]], flops_key: tuple) -> dict[str, Any]:
    """The figures of the pipeline as it is now at one size, or the error that stopped it (a compiler failure, out
    of memory): one failing configuration does not end the run. FLOPs are counted at the first (eager) variant."""
    row: dict[str, Any] = {"attention": attention_kind(pipeline)}
    try:
        row.update(measure_configuration(pipeline, size, args.batch_size, args.repeats, device))
        if flops_key not in flops:
            flops[flops_key] = (float("nan"), {}) if args.no_flops else flops_per_image(pipeline, size)
    except Exception as exc:  # noqa: BLE001 - reported in the row, the run goes on
        return {**row, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    row["gflops_per_image"], row["gflops_by_module"] = flops[flops_key]
    row["achieved_tflops"] = row["gflops_per_image"] * max(row["throughput"].values()) / 1000
    return row


# --------------------------------------------------------------------------------------------- profile
class ComponentTimer:
    """Exclusive wall-clock time per label of wrapped methods: while a wrapped call runs inside another, the outer
    one's clock stops, so the labels add up to at most the whole call."""

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device, self.clock, self.seconds, self._stack, self._last = device, clock, {}, [], 0.0
        self._patched: list[tuple[Any, str]] = []

    def _switch(self) -> float:
        synchronize(self.device)
        now = self.clock()
        if self._stack:
            label = self._stack[-1]
            self.seconds[label] = self.seconds.get(label, 0.0) + now - self._last
        return now

    def wrap(self, owner: Any, method: str, label: str) -> None:
        original = getattr(owner, method)

        def run(*args, **kwargs):
            self._last = self._switch()
            self._stack.append(label)
            try:
                return original(*args, **kwargs)
            finally:
                self._last = self._switch()
                self._stack.pop()

        setattr(owner, method, run)
        self._patched.append((owner, method))

    def restore(self) -> None:
        for owner, method in self._patched:
            delattr(owner, method)  # the instance attribute goes; the class's method shows again
        self._patched.clear()


def instrument(pipeline, timer: ComponentTimer) -> None:
    """Wrap what each pipeline family runs (components present only in some are skipped)."""
    plan = [("vae", "encode", "VAE encode"), ("vae", "decode", "VAE decode"), ("unet", "forward", "UNet"),
            ("speuae", "encode", "SpeUAE and prior"), ("speuae", "decode_unobservable", "SpeUAE and prior"),
            ("code_prior", "forward", "SpeUAE and prior"), ("net", "forward", "network")]
    for component, method, label in plan:
        module = getattr(pipeline, component, None)
        if module is not None:
            timer.wrap(module, method, label)
    if hasattr(pipeline, "compose_spectra"):
        timer.wrap(pipeline, "compose_spectra", "composition")


def profile_call(pipeline, size: int, device: torch.device, folder: Path) -> dict[str, float]:
    """Seconds per part of one batch-1 reconstruction of an sRGB PNG written to an HDF5 cube."""
    from uldm.images import load_linear_rgb, save_png16
    from uldm.io import save_cube

    png = save_png16(folder / f"input-{size}.png", test_images(1, size)[0] ** (1 / 2.2))
    call(pipeline, test_images(1, size))  # warm-up, the reader's too (its first call imports)
    load_linear_rgb(png, "srgb")
    timer = ComponentTimer(device)
    start = time.perf_counter()
    rgb = load_linear_rgb(png, "srgb")
    parts = {"input (PNG read)": time.perf_counter() - start}
    instrument(pipeline, timer)
    try:
        pipeline_seconds, output = timed(lambda: call(pipeline, rgb[None]), device)
    finally:
        timer.restore()
    parts.update(timer.seconds)
    parts["rest of the pipeline"] = pipeline_seconds - sum(timer.seconds.values())
    start = time.perf_counter()
    save_cube(folder / f"output-{size}.h5", output.spectra[0], output.wavelengths)
    parts["output (HDF5 write)"] = time.perf_counter() - start
    parts = {label: parts[label] for label in PROFILE_ORDER if label in parts}
    parts["total"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------------------------------------- report
def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def print_side_by_side(size: int, rows: dict[str, dict]) -> None:
    print(f"\nside by side, {size} x {size}, batch 1, defaults (best of {len(next(iter(rows.values()))['all_seconds'])})")
    for name, row in rows.items():
        print(f"  {name:<14} {row['seconds'] * 1000:9.1f} ms   x{row['ratio_to_first']:.2f} of {next(iter(rows))}")


def print_configuration(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"  {row['model']:<14} {row['resolution']:>5} {row['dtype']:>4} {row['variant']:<13} failed: {row['error']}")
        return
    share = f"{row['peak_share'] * 100:5.1f}%" if row.get("peak_share") is not None else "  n/a"
    batches = " ".join(f"b{batch}:{rate:.2f}" for batch, rate in row["throughput"].items())
    print(f"  {row['model']:<14} {row['resolution']:>5} {row['dtype']:>4} {row['variant']:<13} "
          f"{row['ms_per_image_batch1']:9.1f} ms  "
          f"{batches:<22} {row['gflops_per_image']:9.1f} GFLOP  {row['achieved_tflops']:8.3f} TFLOP/s {share}  "
          f"{row['peak_memory_gib']:6.2f} GiB  warm-up {row['warmup_seconds']:.1f} s")


def print_profile(name: str, size: int, parts: dict[str, float]) -> None:
    print(f"\nprofile: {name}, {size} x {size}, batch 1")
    for label, seconds in parts.items():
        print(f"  {label:<22} {seconds * 1000:9.1f} ms  {100 * seconds / parts['total']:5.1f}%")


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SPEC",
                        help="a pipeline folder, hub id or scaffold:SIZE:VAE; repeat for several (the first is the "
                             "side-by-side reference)")
    parser.add_argument("--resolution", type=int, nargs="+", default=[512])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4], help="throughput batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure; the best counts (default 3)")
    parser.add_argument("--channels-last", action="store_true", help="also time the networks in channels_last")
    parser.add_argument("--compile", action="store_true", help="also time them under torch.compile")
    parser.add_argument("--compile-mode", help="torch.compile's mode (default: its default; reduce-overhead: CUDA "
                                               "graphs; max-autotune)")
    parser.add_argument("--profile", action="store_true", help="print where one call's time goes")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (it runs one call)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, when PEAKS does not know it")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    args.models = dict(item.split("=", 1) if "=" in item else (item, item) for item in args.model)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    diffusers_logging.set_verbosity_error()  # casting a built scaffold warns per component; the output is the figures
    if args.compile:  # compile times from cold: inductor's on-disk caches would hide what a first run pays
        os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = device_description(device)
    print(f"{name}; torch {torch.__version__}")
    command = " ".join(["python benchmarks/inference_speed.py", *(sys.argv[1:] if argv is None else argv)])
    result: dict[str, Any] = {"device": name, "torch": torch.__version__, "peak_source": PEAK_SOURCE,
                              "command": command, "side_by_side": {}, "configurations": [], "profiles": {}}
    default_dtype = DTYPES[args.dtype[0]]
    pipelines = {label: load_model(spec, default_dtype, device) for label, spec in args.models.items()}

    # 1. Side by side at the defaults
    for size in args.resolution:
        rows = side_by_side(pipelines, size, args.repeats, device)
        result["side_by_side"][str(size)] = rows
        print_side_by_side(size, rows)

    # 2. Profiles (before any variant changes the networks)
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            for label, pipeline in pipelines.items():
                for size in args.resolution:
                    parts = profile_call(pipeline, size, device, Path(tmp))
                    result["profiles"][f"{label}@{size}"] = parts
                    print_profile(label, size, parts)
    if args.json:
        save_json(result, args.json)

    # 3. Configurations: each variant on top of the previous one
    flops: dict[tuple, tuple[float, dict]] = {}
    variants = ["eager"] + ["channels_last"] * args.channels_last + ["compile"] * args.compile
    print(f"\n  {'model':<14} {'size':>5} dtype {'variant':<13} {'batch 1':>12}  images/s by batch        GFLOP/image"
          f"   achieved      of peak   memory")
    for label, spec in args.models.items():
        for dtype_name in args.dtype:
            pipeline = pipelines[label] if DTYPES[dtype_name] == default_dtype else load_model(spec, DTYPES[dtype_name],
                                                                                                 device)
            for variant in variants:
                apply_variant(pipeline, variant, args.compile_mode)
                for size in args.resolution:
                    flops_key = (label, dtype_name, size)  # counted once, eagerly: every variant runs the same ops
                    row = configuration_row(pipeline, size, args, device, flops, flops_key)
                    row.update(model=label, spec=spec, dtype=dtype_name, variant=variant, resolution=size)
                    if "error" not in row:
                        peak = peak_tflops(name, dtype_name, args.peak_tflops)
                        row.update(peak_tflops=peak, peak_share=row["achieved_tflops"] / peak if peak else None)
                    result["configurations"].append(row)
                    print_configuration(row)
                    if args.json:  # after every row, so a run cut short keeps what it measured
                        save_json(result, args.json)
            del pipeline
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        save_json(result, args.json)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
