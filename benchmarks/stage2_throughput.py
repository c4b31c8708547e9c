"""Stage-2 training throughput: samples/s and peak memory of the ULDM training step, 1 vs k accumulation steps.

    python benchmarks/stage2_throughput.py --size small --resolution 128 --batch-size 4              # the CPU recipe
    python benchmarks/stage2_throughput.py --size sd21 --resolution 512 --batch-size 8 \\
        --mixed-precision bf16 --accumulation 1 4 [--gradient-checkpointing]                          # on a GPU

Times exactly what stage 2 does per sample (`stages/train_uldm.py`): the frozen SpeUAE encodes a 31-band cube to
its code image, the frozen VAE encodes code and RGB (in the mixed-precision dtype), the widened UNet (fp32 master
weights, autocast through accelerate) predicts the denoising target, backward, clip, AdamW step. Weights are random
(`uldm.sd_scaffold` sizes; "sd21" is Stable Diffusion 2.1's exact UNet and VAE architecture), data is random
reflectance: speed does not depend on either. The first optimizer steps (cuDNN autotuning, allocator growth) are
excluded from the timing.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from typing import Sequence

import torch

from uldm.camera import CameraResponse
from uldm.models import SpeUAE
from uldm.models.sd_adapter import encode_empty_prompt, widen_conv_in
from uldm.sd_scaffold import SIZES, build_small_sd
from uldm.spectral import DEFAULT_GRID
from uldm.stages.train_uldm import encode_latents
from uldm.training import TrainConfig, build_accelerator, denoising_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(size: str, resolution: int, batch_size: int, accumulation: int, mixed_precision: str,
            gradient_checkpointing: bool, warmup: int, steps: int) -> dict[str, float]:
    """Samples/s and peak memory (GiB, CUDA only) of `steps` optimizer steps after `warmup` untimed ones."""
    # the trainers' own Accelerator (device choice, denormal flushing, mixed precision, accumulation)
    accelerator = build_accelerator(TrainConfig(output_dir=tempfile.gettempdir(), mixed_precision=mixed_precision,
                                                gradient_accumulation_steps=accumulation, report_to=None))
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)

    sd = build_small_sd(size, prediction_type="v_prediction")
    unet = widen_conv_in(sd.unet)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    prompt = encode_empty_prompt(sd.tokenizer, sd.text_encoder).embedding.to(device)
    vae = sd.vae.requires_grad_(False).to(device, dtype=weight_dtype)
    # a synthetic camera (any 3 x 31 response times the same): no colour-science data needed on the GPU machine
    response = torch.rand(3, DEFAULT_GRID.num_bands, generator=torch.Generator().manual_seed(0)).double().numpy()
    speuae = SpeUAE.for_camera(CameraResponse("synthetic", response)).requires_grad_(False).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    unet, optimizer = accelerator.prepare(unet, optimizer)

    generator = torch.Generator(device).manual_seed(0)
    hsi = torch.rand(batch_size, DEFAULT_GRID.num_bands, resolution, resolution, device=device, generator=generator)
    rgb = speuae.split.render(hsi, dim=1).float().clamp(0, 1)

    def optimizer_step() -> None:
        for _ in range(accumulation):
            with accelerator.accumulate(unet):
                mean, std, condition = encode_latents(vae, speuae, hsi, rgb)
                latents = (mean + std * torch.randn_like(mean)).float()
                loss = denoising_loss(unet, sd.scheduler, latents, condition.float(), prompt)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()

    for _ in range(warmup):
        optimizer_step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer_step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"samples_per_s": steps * accumulation * batch_size / seconds,
            "s_per_optimizer_step": seconds / steps, "peak_gib": peak}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--resolution", type=int, default=128, help="crop size in pixels (default 128)")
    parser.add_argument("--batch-size", type=int, default=4, help="crops per micro-batch (default 4)")
    parser.add_argument("--accumulation", type=int, nargs="+", default=[1, 4],
                        help="gradient accumulation steps to compare (default: 1 4)")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default 5)")
    args = parser.parse_args(argv)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"stage 2, UNet+VAE size {args.size!r}, {args.resolution}x{args.resolution} crops, micro-batch "
          f"{args.batch_size}, mixed precision {args.mixed_precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, {device}")
    print(f"{'accumulation':>12} {'samples/s':>10} {'s/opt step':>11} {'peak GiB':>9}")
    for accumulation in args.accumulation:
        row = measure(args.size, args.resolution, args.batch_size, accumulation, args.mixed_precision,
                      args.gradient_checkpointing, args.warmup, args.steps)
        print(f"{accumulation:>12} {row['samples_per_s']:>10.2f} {row['s_per_optimizer_step']:>11.3f} "
              f"{row['peak_gib']:>9.2f}", flush=True)
        gc.collect()  # the models of the last row go before the next row's are built
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
