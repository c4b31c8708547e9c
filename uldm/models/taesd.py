"""Pretrained tiny autoencoders of the Stable Diffusion latent spaces (TAESD family) as diffusers' AutoencoderTiny.

The TAESD files (by Ollin Boer Bohan, MIT) hold the original `nn.Sequential` encoder and decoder of each model,
in bfloat16: `<variant>_encoder.safetensors` and `<variant>_decoder.safetensors`. AutoencoderTiny holds the same
layers: encoder key `K...` is `encoder.layers.K...`; decoder key `I...` is `decoder.layers.(I-1)...`, since the
original decoder's module 0 is a parameter-free clamp that AutoencoderTiny applies in its forward. Every key and
shape is checked (a file that does not match is refused, naming the file and the key) and loaded in float32.

    vae = load_taesd("../shared/models/taesd", "taesd3")      # 16 latent channels, SD3's latent space
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch

from .spaae import SpaAELoadError

# latent channels of each variant and the latent space it shares; all downsample by 8. Their latents have about
# unit spread on natural photos (standard deviation 0.79 / 1.00 / 0.83 over 40 of ../shared/data/rgb at 256 x 256),
# so the scaling factor stays 1, as AutoencoderTiny's default.
# `hub_id`: the model hub's copy of the same weights, which model cards name as their base_model.
TAESD_VARIANTS: dict[str, dict[str, Any]] = {
    "taesd": {"latent_channels": 4, "space": "Stable Diffusion 1.x / 2.x (kl-f8)", "hub_id": "madebyollin/taesd"},
    "taesd3": {"latent_channels": 16, "space": "Stable Diffusion 3", "hub_id": "madebyollin/taesd3"},
    "taef1": {"latent_channels": 16, "space": "FLUX.1", "hub_id": "madebyollin/taef1"},
}
TAESD_DIR_ENV = "ULDM_TAESD_DIR"


def default_taesd_dir() -> Optional[Path]:
    """Where the TAESD files are looked for: `$ULDM_TAESD_DIR`, else `<repo>/../shared/models/taesd` if present."""
    from ..paths import shared_location

    return shared_location(TAESD_DIR_ENV, "models", "taesd")


def taesd_files(weights_dir: Union[str, Path], variant: str) -> tuple[Path, Path]:
    """(encoder file, decoder file) of a variant in `weights_dir`."""
    if variant not in TAESD_VARIANTS:
        raise SpaAELoadError(f"unknown TAESD variant {variant!r}; known: {sorted(TAESD_VARIANTS)}")
    folder = Path(weights_dir)
    return folder / f"{variant}_encoder.safetensors", folder / f"{variant}_decoder.safetensors"


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SpaAELoadError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpaAELoadError(f"{path}: not a readable safetensors file ({exc})") from exc


def _original_to_diffusers(key: str, half: str) -> str:
    if half == "encoder":
        return f"encoder.layers.{key}"
    index, sep, rest = key.partition(".")
    if not sep or not index.isdigit() or int(index) < 1:
        return f"decoder.unmapped.{key}"  # reported as an unexpected key
    return f"decoder.layers.{int(index) - 1}.{rest}"


def original_key(key: str) -> str:
    """The original files' key of an AutoencoderTiny key (the inverse of the mapping `load_taesd` applies)."""
    half, _, rest = key.partition(".layers.")
    if half == "encoder":
        return rest
    index, _, tail = rest.partition(".")
    return f"{int(index) + 1}.{tail}"


def convert_taesd_state_dict(model: torch.nn.Module, files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The AutoencoderTiny state dict of the original files {"encoder": path, "decoder": path}, checked against
    `model`'s keys and shapes, in float32."""
    expected = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for half, path in files.items():
        for key, tensor in _read(path).items():
            name = _original_to_diffusers(key, half)
            if name not in expected:
                raise SpaAELoadError(f"{path}: unexpected key {key!r} (no AutoencoderTiny {half} parameter takes it)")
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise SpaAELoadError(f"{path}: key {key!r} has shape {tuple(tensor.shape)}, the AutoencoderTiny "
                                     f"with this config expects {tuple(expected[name].shape)}")
            converted[name] = tensor.float()
    missing = sorted(set(expected) - set(converted))
    if missing:
        half = missing[0].split(".")[0]
        raise SpaAELoadError(f"{files[half]}: missing key {original_key(missing[0])!r} "
                             f"({len(missing)} missing in all)")
    return converted


def load_taesd(weights_dir: Union[str, Path, None] = None, variant: str = "taesd",
               config: Optional[dict[str, Any]] = None):
    """An `AutoencoderTiny` holding a TAESD variant's pretrained weights (float32).

    `config`: AutoencoderTiny arguments (default: the variant's latent channels, diffusers' defaults otherwise).
    """
    from diffusers import AutoencoderTiny

    if weights_dir is None:
        weights_dir = default_taesd_dir()
        if weights_dir is None:
            raise SpaAELoadError(f"no TAESD weights found: pass the folder or set ${TAESD_DIR_ENV}")
    encoder, decoder = taesd_files(weights_dir, variant)
    model = AutoencoderTiny(**(config or {"latent_channels": TAESD_VARIANTS[variant]["latent_channels"]}))
    model.load_state_dict(convert_taesd_state_dict(model, {"encoder": encoder, "decoder": decoder}), strict=True)
    return model.eval()
