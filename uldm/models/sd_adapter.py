"""Turning a pretrained Stable Diffusion checkpoint into the ULDM's parts (METHOD.md section 3).

- `load_stable_diffusion` reads unet/, vae/, scheduler/, text_encoder/, tokenizer/ from a local folder or hub id,
  and fails fast with a clear message when the folder is not a text-to-image SD checkpoint;
- `widen_conv_in` lets the UNet take the RGB latent beside the noisy code latent, keeping the pretrained output
  unchanged at initialisation (duplicate the input weights, halve them);
- `PromptEmbedding` stores the encoded empty prompt, so the released pipeline needs no text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

REQUIRED_SUBFOLDERS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


class StableDiffusionLoadError(ValueError):
    """`--pretrained_model_name_or_path` does not point at a usable Stable Diffusion checkpoint."""


@dataclass
class StableDiffusionParts:
    unet: Any
    vae: Any
    noise_scheduler: Any
    empty_prompt: "PromptEmbedding"


class PromptEmbedding(ModelMixin, ConfigMixin):
    """The text-encoder output for the empty prompt (1 x tokens x width), saved as a pipeline component."""

    @register_to_config
    def __init__(self, num_tokens: int = 2, width: int = 1024) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, num_tokens, width), requires_grad=False)

    @classmethod
    def from_tensor(cls, embedding: torch.Tensor) -> "PromptEmbedding":
        module = cls(num_tokens=embedding.shape[1], width=embedding.shape[2])
        module.embedding.data.copy_(embedding.detach().float())
        return module

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.embedding.expand(batch_size, -1, -1)


@torch.no_grad()
def encode_empty_prompt(tokenizer, text_encoder) -> PromptEmbedding:
    """Encode "" once, as Marigold does (no padding: the BOS and EOS tokens only)."""
    ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return PromptEmbedding.from_tensor(text_encoder(ids.to(text_encoder.device))[0])


def widen_conv_in(unet):
    """Double conv_in's inputs to [condition latent, noisy latent]; weights duplicated and halved.

    With the condition equal to the noisy latent, the widened UNet computes exactly what the original did.
    The new in_channels is written with `register_to_config`, so save_pretrained records it.
    """
    old = unet.conv_in
    new = nn.Conv2d(2 * old.in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(torch.cat([old.weight, old.weight], dim=1) / 2)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new.to(device=old.weight.device, dtype=old.weight.dtype)
    unet.register_to_config(in_channels=2 * old.in_channels)
    return unet


def save_sd_folder(source, destination, **components) -> Path:
    """Copy the SD folder `source` to `destination` with some components replaced (`unet=`, `vae=`, ...: saved with
    `save_pretrained` into their subfolders, and named in model_index.json). Built in a temporary sibling and
    renamed into place, so a crash never leaves half a checkpoint; `source` is never modified."""
    import json
    import shutil

    from ..io import atomic_folder

    source, destination = Path(source), Path(destination)
    check_layout(source, str(source))
    with atomic_folder(destination) as tmp:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(*components))
        index = json.loads((source / "model_index.json").read_text()) if (source / "model_index.json").exists() else {}
        for name, module in components.items():
            module.save_pretrained(str(tmp / name))
            index[name] = ["diffusers", type(module).__name__]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return destination


def check_layout(folder: Path, name: str) -> None:
    if not folder.is_dir():
        raise StableDiffusionLoadError(f"{name}: no such folder")
    missing = [sub for sub in REQUIRED_SUBFOLDERS if not (folder / sub).is_dir()]
    if missing:
        raise StableDiffusionLoadError(
            f"{name}: not a Stable Diffusion checkpoint in the diffusers layout: missing {missing} "
            f"(expected {list(REQUIRED_SUBFOLDERS)} and model_index.json)"
        )


def check_channels(folder: Path, name: str) -> None:
    """Read the configs before any weights: a UNet that is not text-to-image (inpainting, depth, already widened)
    cannot be a starting point, and saying so early beats a shape mismatch deep in the loader."""
    import json

    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise StableDiffusionLoadError(f"{name}: unreadable unet/vae config ({exc})") from exc
    latent = vae.get("latent_channels", 4)
    if unet.get("in_channels") != latent or unet.get("out_channels", latent) != latent:
        raise StableDiffusionLoadError(
            f"{name}: the UNet takes {unet.get('in_channels')} input channels and gives {unet.get('out_channels')} "
            f"(unet/config.json); a text-to-image SD UNet has the SpaAE's {latent} latent channels (vae/config.json). "
            "Inpainting/depth/already-widened UNets, or a UNet made for another SpaAE, cannot be a starting point."
        )


def load_stable_diffusion(name_or_path: str, revision: Optional[str] = None, variant: Optional[str] = None,
                          cache_dir: Optional[str] = None, widen: bool = True) -> StableDiffusionParts:
    """UNet (widened to [condition, noisy] latents unless `widen=False`), SpaAE, noise scheduler and the encoded empty
    prompt from an SD checkpoint."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .spaae import SpaAELoadError, load_spaae

    folder = Path(name_or_path)
    if not folder.exists():
        from ..hub import resolve_pretrained

        if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
            raise StableDiffusionLoadError(f"{name_or_path}: no such folder (and not a hub id of the form org/name)")
        patterns = [f"{sub}/*" for sub in REQUIRED_SUBFOLDERS] + ["model_index.json"]
        folder = resolve_pretrained(name_or_path, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    check_layout(folder, name_or_path)
    check_channels(folder, name_or_path)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", variant=variant)
        vae = load_spaae(folder / "vae", variant=variant)  # AutoencoderKL or AutoencoderTiny, as its config says
        noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", variant=variant)
    except SpaAELoadError as exc:
        raise StableDiffusionLoadError(f"{name_or_path}: {exc}") from exc
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise StableDiffusionLoadError(f"{name_or_path}: cannot load the Stable Diffusion components ({exc})") from exc
    from .alignment import realign_weights

    realign_weights(unet, vae)
    empty_prompt = encode_empty_prompt(tokenizer, text_encoder)
    del text_encoder  # needed once: the pipeline stores the embedding instead
    return StableDiffusionParts(unet=widen_conv_in(unet) if widen else unet, vae=vae, noise_scheduler=noise_scheduler,
                                empty_prompt=empty_prompt)


def sampling_scheduler(noise_scheduler):
    """The training scheduler as a DDIM sampler with trailing timestep spacing (1 step starts at t=999: with
    "leading" spacing it would start at t=1), no clipping: what the pipelines and the pre-training samples use."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing", clip_sample=False,
                                     set_alpha_to_one=False, steps_offset=0)
