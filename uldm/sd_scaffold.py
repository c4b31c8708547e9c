"""Write Stable Diffusion checkpoints in the real diffusers layout (unet/, vae/, scheduler/, text_encoder/,
tokenizer/, model_index.json), with an SD-architecture UNet of a chosen size.

    python -m uldm.sd_scaffold runs/sd-taesd3 base --vae taesd3 --vae-weights ../shared/models/taesd
    python -m uldm.sd_scaffold runs/sd-random base --vae kl      # an AutoencoderKL with random weights
    python -m uldm.sd_scaffold runs/sd-tae3-random base --vae taesd3 --vae-init random   # TAESD3's architecture only

Stage 2 and the pre-training stages start from such a folder exactly as users start from
`stabilityai/stable-diffusion-2-1`: same classes, same files, same loader. The UNet's weights are random (seeded;
`stages/pretrain_rgb.py` trains them on photographs); the SpaAE is either a random AutoencoderKL ("kl") or a
pretrained tiny autoencoder of the TAESD family, converted from its original files (`uldm.models.taesd`), whose
latent channels the UNet then takes. The tokenizer is built from a small local vocabulary (only the empty prompt
is ever encoded).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Union

import torch

# Sizes: "tiny" is for tests; "small" and "base" are the CAVE recipes' UNets ("base" with `--vae kl` has 8 latent
# channels at 1/4 resolution, as SD3-style VAEs widen the latent, so the code image survives the VAE better); "sd21"
# has exactly the UNet and VAE architecture of stabilityai/stable-diffusion-2-1 (865 M + 84 M parameters; random
# weights, for timing: its text encoder stays tiny, as only the empty prompt's embedding width matters). "vae" and
# "latent_channels" describe the random AutoencoderKL of `--vae kl`; a TAESD SpaAE brings its own.
SIZES = {
    "tiny": {"unet": (32, 64), "vae": (16, 32), "text": 32, "layers": 1},
    "small": {"unet": (32, 64, 64), "vae": (16, 32, 32), "text": 64, "layers": 1},
    "base": {"unet": (64, 128, 128), "vae": (32, 64, 64), "text": 64, "layers": 2, "latent_channels": 8},
    "sd21": {"unet": (320, 640, 1280, 1280), "vae": (128, 256, 512, 512), "text": 1024, "layers": 2,
             "attention_head_dim": (5, 10, 20, 20), "groups": 32, "vae_mid_attention": True,
             "use_linear_projection": True},
}


def _build_tokenizer():
    """A CLIP BPE tokenizer over lowercase letters: enough for the empty prompt the ULDM uses."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(vocab_file=str(Path(tmp) / "vocab.json"), merges_file=str(Path(tmp) / "merges.txt"),
                                  model_max_length=77)
    return tokenizer


def build_small_sd(size: str = "tiny", seed: int = 0, prediction_type: str = "epsilon", vae: str = "kl",
                   vae_weights: Union[str, Path, None] = None, vae_init: str = "pretrained"):
    """An SD-architecture `StableDiffusionPipeline` of the given size (in memory): random UNet; SpaAE `vae` = "kl"
    (random AutoencoderKL of the size's spec) or a TAESD variant, loaded from `vae_weights` or, with
    `vae_init="random"`, its architecture with random weights (the control of a pretraining ablation)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models.taesd import TAESD_VARIANTS, load_taesd

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if vae != "kl" and vae not in TAESD_VARIANTS:
        raise ValueError(f"vae must be 'kl' or one of {sorted(TAESD_VARIANTS)}, got {vae!r}")
    if vae_init not in ("pretrained", "random"):
        raise ValueError(f"vae_init must be 'pretrained' or 'random', got {vae_init!r}")
    spec = SIZES[size]
    torch.manual_seed(seed)
    if vae == "kl":
        autoencoder = _random_kl_autoencoder(spec)
    elif vae_init == "random":
        from diffusers import AutoencoderTiny

        autoencoder = AutoencoderTiny(latent_channels=TAESD_VARIANTS[vae]["latent_channels"])
    else:
        autoencoder = load_taesd(vae_weights, vae)
    levels, groups, latent = len(spec["unet"]), spec.get("groups", 8), autoencoder.config.latent_channels
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=latent, out_channels=latent, layers_per_block=spec["layers"],
        block_out_channels=spec["unet"],
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=spec["text"], attention_head_dim=spec.get("attention_head_dim", 8),
        norm_num_groups=groups, use_linear_projection=spec.get("use_linear_projection", False),
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=1000, hidden_size=spec["text"], intermediate_size=2 * spec["text"], num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type=prediction_type, clip_sample=False,
                              steps_offset=1)
    return StableDiffusionPipeline(vae=autoencoder, text_encoder=text_encoder, tokenizer=_build_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _random_kl_autoencoder(spec: dict):
    """A randomly initialised AutoencoderKL of a size's spec."""
    from diffusers import AutoencoderKL

    levels = len(spec["vae"])
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=spec.get("latent_channels", 4), block_out_channels=spec["vae"],
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=spec["layers"], norm_num_groups=spec.get("groups", 8), sample_size=64,
        # Fully convolutional by default: trained on small crops here, it must still work on whole images, and
        # mid-block attention trained on 8x8 latent grids does not carry over to 64x64 ones (measured: 4x the L1
        # error). "sd21" keeps SD's mid-block attention.
        mid_block_add_attention=spec.get("vae_mid_attention", False),
    )


def write_small_sd(folder: Union[str, Path], size: str = "tiny", seed: int = 0, prediction_type: str = "epsilon",
                   vae: str = "kl", vae_weights: Union[str, Path, None] = None, vae_init: str = "pretrained") -> Path:
    """Save an SD-architecture pipeline of the given size (`build_small_sd`), atomically; returns the folder."""
    from .io import atomic_folder

    pipeline = build_small_sd(size, seed=seed, prediction_type=prediction_type, vae=vae, vae_weights=vae_weights,
                              vae_init=vae_init)
    with atomic_folder(folder) as tmp:
        pipeline.save_pretrained(tmp)
    return Path(folder)


if __name__ == "__main__":
    import argparse

    from .models.taesd import TAESD_VARIANTS

    parser = argparse.ArgumentParser(description="Write an SD-architecture checkpoint (random UNet; random or "
                                                 "pretrained tiny SpaAE).")
    parser.add_argument("folder", type=Path)
    parser.add_argument("size", nargs="?", default="small", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"],
                        help="what the scheduler config tells stage 2 to predict (SD 1.5: epsilon, SD 2.1: v_prediction)")
    parser.add_argument("--vae", default="kl", choices=["kl", *TAESD_VARIANTS],
                        help="the SpaAE: a random AutoencoderKL of the size's spec, or a pretrained TAESD variant "
                             "(AutoencoderTiny; the UNet takes its latent channels)")
    parser.add_argument("--vae-weights", type=Path,
                        help="folder of <variant>_encoder/_decoder.safetensors (default: $ULDM_TAESD_DIR, else "
                             "../shared/models/taesd beside the repository)")
    parser.add_argument("--vae-init", default="pretrained", choices=["pretrained", "random"],
                        help="with a TAESD variant: its pretrained weights, or its architecture with random weights")
    args = parser.parse_args()
    try:
        folder = write_small_sd(args.folder, args.size, seed=args.seed, prediction_type=args.prediction_type,
                                vae=args.vae, vae_weights=args.vae_weights, vae_init=args.vae_init)
    except ValueError as exc:  # SpaAELoadError: a missing or mismatched TAESD file, named
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {folder}")
