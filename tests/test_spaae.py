"""The SpaAE interface (AutoencoderKL or AutoencoderTiny, `uldm.models.spaae`) and the TAESD loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_TAESD_CONFIG, write_taesd_files

from uldm.models import spaae
from uldm.models.spaae import SpaAELoadError
from uldm.models.taesd import TAESD_VARIANTS, load_taesd

REAL_TAESD_DIR = REPO.parent / "shared" / "models" / "taesd"


def tiny_tae(seed: int = 0):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(**TINY_TAESD_CONFIG).eval()


def bf16_copy(model):
    """The model with every weight rounded to bfloat16, as the TAESD files store them."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(tensor.to(torch.bfloat16).float())
    return model


# ------------------------------------------------------------------------------------------------ loader
def test_taesd_files_in_the_original_layout_load_every_weight(tiny_taesd_dir):
    loaded = load_taesd(tiny_taesd_dir, "taesd", config=TINY_TAESD_CONFIG)
    source = bf16_copy(tiny_tae(0))  # the weights the fixture wrote, as stored
    for name, tensor in source.state_dict().items():
        assert loaded.state_dict()[name].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[name], tensor), name
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(spaae.decode(loaded, spaae.encode(loaded, images)),
                                   spaae.decode(source, spaae.encode(source, images)), rtol=0, atol=0)


def test_decoder_keys_shift_by_one_past_the_original_clamp(tiny_taesd_dir):
    from safetensors.torch import load_file

    keys = set(load_file(str(tiny_taesd_dir / "taesd_decoder.safetensors")))
    assert "0.weight" not in keys and "1.weight" in keys  # module 0 of the original decoder has no parameters
    assert "0.weight" in set(load_file(str(tiny_taesd_dir / "taesd_encoder.safetensors")))


def rewrite(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_a_missing_file_is_named(tiny_taesd_dir):
    (tiny_taesd_dir / "taesd_decoder.safetensors").unlink()
    with pytest.raises(SpaAELoadError, match="taesd_decoder.safetensors: no such file"):
        load_taesd(tiny_taesd_dir, "taesd", config=TINY_TAESD_CONFIG)


def test_a_corrupt_file_is_named(tiny_taesd_dir):
    (tiny_taesd_dir / "taesd_encoder.safetensors").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(SpaAELoadError, match="taesd_encoder.safetensors: not a readable safetensors file"):
        load_taesd(tiny_taesd_dir, "taesd", config=TINY_TAESD_CONFIG)


def test_an_unexpected_key_is_named_with_its_file(tiny_taesd_dir):
    rewrite(tiny_taesd_dir / "taesd_decoder.safetensors", lambda t: t.update({"99.conv.0.weight": torch.zeros(1)}))
    with pytest.raises(SpaAELoadError, match=r"taesd_decoder.safetensors: unexpected key '99.conv.0.weight'"):
        load_taesd(tiny_taesd_dir, "taesd", config=TINY_TAESD_CONFIG)


def test_a_missing_key_is_named_with_its_file(tiny_taesd_dir):
    rewrite(tiny_taesd_dir / "taesd_encoder.safetensors", lambda t: t.pop("0.bias"))
    with pytest.raises(SpaAELoadError, match=r"taesd_encoder.safetensors: missing key '0.bias'"):
        load_taesd(tiny_taesd_dir, "taesd", config=TINY_TAESD_CONFIG)


def test_a_shape_mismatch_is_named_with_file_key_and_shapes(tiny_taesd_dir):
    # the same files read as a 16-channel variant: the last encoder convolution has 4 outputs, not 16
    config = {**TINY_TAESD_CONFIG, "latent_channels": 16}
    with pytest.raises(SpaAELoadError, match=r"taesd_encoder.safetensors: key '14\.\w+' has shape \(4.*expects \(16"):
        load_taesd(tiny_taesd_dir, "taesd", config=config)


def test_unknown_variant_is_refused(tiny_taesd_dir):
    with pytest.raises(SpaAELoadError, match="unknown TAESD variant 'taesdxl'"):
        load_taesd(tiny_taesd_dir, "taesdxl")


@pytest.mark.real_data
@pytest.mark.parametrize("variant,floor", [("taesd", 24.0), ("taesd3", 28.0)])
def test_the_real_taesd_files_load_strictly_and_reconstruct_a_photo(variant, floor):
    if not REAL_TAESD_DIR.is_dir():
        pytest.skip(f"TAESD files not found at {REAL_TAESD_DIR}")
    from PIL import Image

    vae = load_taesd(REAL_TAESD_DIR, variant)
    assert vae.config.latent_channels == TAESD_VARIANTS[variant]["latent_channels"]
    photo = REPO.parent / "shared" / "data" / "cave" / "balloons_ms" / "balloons_ms" / "balloons_RGB.bmp"
    if not photo.exists():
        pytest.skip(f"{photo} not found")
    image = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        out = (spaae.decode(vae, spaae.encode(vae, image[None] * 2 - 1)) + 1) / 2
    psnr = -10 * torch.log10(((out.clamp(0, 1) - image) ** 2).mean()).item()
    assert psnr > floor  # the README of the files: 28.84 / 33.53 dB mean over the 25 CAVE images


# --------------------------------------------------------------------------------------------- interface
def test_tiny_autoencoder_latents_are_deterministic_and_scaled():
    vae = tiny_tae()
    vae.register_to_config(scaling_factor=2.0)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean, std = spaae.encode_posterior(vae, images)
        raw = vae.encode(images).latents
        torch.testing.assert_close(mean, raw * 2.0)
        assert torch.count_nonzero(std) == 0
        torch.testing.assert_close(spaae.decode(vae, mean), vae.decode(raw).sample)
        reconstruction, latents, kl = spaae.reconstruct(vae, images)
        torch.testing.assert_close(latents, mean)
        torch.testing.assert_close(reconstruction, vae.decode(raw).sample)
        assert kl.item() == 0
    assert spaae.downsampling_factor(vae) == 8 and spaae.decoder_modules(vae) == [vae.decoder]


def test_kl_autoencoder_latents_are_the_scaled_and_shifted_posterior(tiny_vae_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    vae.register_to_config(shift_factor=0.25)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        mean, std = spaae.encode_posterior(vae, images)
        scale = vae.config.scaling_factor
        torch.testing.assert_close(mean, (posterior.mean - 0.25) * scale)
        torch.testing.assert_close(std, posterior.std * scale)
        torch.testing.assert_close(spaae.decode(vae, mean), vae.decode(posterior.mean).sample)
        _, _, kl = spaae.reconstruct(vae, images)
        assert kl.item() > 0
    assert spaae.downsampling_factor(vae) == 2 and spaae.decoder_modules(vae) == [vae.decoder, vae.post_quant_conv]


def test_srgb_rgb_image_is_the_srgb_transfer_curve():
    from uldm.images import linear_to_srgb

    rgb = torch.rand(1, 3, 8, 8)
    rgb[0, 0, 0, 0] = 0.001  # on the linear toe of the curve
    expected = torch.from_numpy(linear_to_srgb(rgb.numpy())) * 2 - 1
    torch.testing.assert_close(spaae.rgb_image(rgb, "srgb"), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(spaae.rgb_image(rgb, "linear"), rgb * 2 - 1)
    with pytest.raises(ValueError, match="rgb encoding must be one of"):
        spaae.rgb_image(rgb, "gamma")


def test_load_spaae_picks_the_class_its_config_names(tmp_path, tiny_vae_dir, tiny_sd_dir):
    tiny_tae().save_pretrained(tmp_path / "tae")
    assert type(spaae.load_spaae(tmp_path / "tae")).__name__ == "AutoencoderTiny"
    assert type(spaae.load_spaae(tiny_vae_dir)).__name__ == "AutoencoderKL"
    assert type(spaae.load_spaae(tiny_sd_dir)).__name__ == "AutoencoderKL"  # an SD folder: its vae/
    config = json.loads((tmp_path / "tae" / "config.json").read_text())
    (tmp_path / "tae" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(SpaAELoadError, match=r"tae/config.json: _class_name 'UNet2DModel' is not a SpaAE"):
        spaae.load_spaae(tmp_path / "tae")
    with pytest.raises(SpaAELoadError, match="no config.json"):
        spaae.load_spaae(tmp_path)


# -------------------------------------------------------------------------------------------- scaffold
def test_scaffold_with_a_taesd_spaae_is_a_stable_diffusion_folder_stage_2_loads(tmp_path):
    from diffusers import AutoencoderTiny

    from uldm.models.sd_adapter import load_stable_diffusion
    from uldm.sd_scaffold import write_small_sd

    torch.manual_seed(3)
    weights = write_taesd_files(tmp_path / "taesd3", AutoencoderTiny(latent_channels=16), "taesd3")
    folder = write_small_sd(tmp_path / "sd", "tiny", vae="taesd3", vae_weights=weights)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderTiny"]
    parts = load_stable_diffusion(str(folder))
    assert type(parts.vae).__name__ == "AutoencoderTiny" and parts.vae.config.latent_channels == 16
    assert parts.unet.config.in_channels == 32 and parts.unet.config.out_channels == 16  # widened for [RGB, code]


def test_scaffold_command_names_a_missing_weight_file(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "uldm.sd_scaffold", str(tmp_path / "sd"), "tiny", "--vae", "taef1",
                             "--vae-weights", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{tmp_path / 'nothing' / 'taef1_encoder.safetensors'}: no such file" in result.stderr
    assert not (tmp_path / "sd").exists()  # nothing half-written


def test_a_unet_made_for_another_spaae_is_refused_naming_both_configs(tmp_path, tiny_sd_dir):
    from diffusers import AutoencoderTiny

    from uldm.models.sd_adapter import StableDiffusionLoadError, load_stable_diffusion, save_sd_folder

    folder = save_sd_folder(tiny_sd_dir, tmp_path / "mixed",
                            vae=AutoencoderTiny(**{**TINY_TAESD_CONFIG, "latent_channels": 16}))
    with pytest.raises(StableDiffusionLoadError, match=r"unet/config.json.*16 latent channels \(vae/config.json\)"):
        load_stable_diffusion(str(folder))
