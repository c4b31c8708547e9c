"""SpeUAE: the spectral unobservable-feature autoencoder of stage 1 (METHOD.md section 2).

Encoder E(u, c) -> z in [-1, 1]^3 and decoder D(z, c) -> û, applied pixel by pixel, so the code image has the
RGB image's size and any image size or batch works. The output ŝ = Φ⁺c + N û re-renders to c exactly: only the
part the camera cannot see is learned.

Each side is a linear map plus an MLP residual conditioned on RGB:

    z = tanh(L_e u + E(u, c)),     û = L_d z + D(z, c).

`init_linear_code` starts L_e, L_d at the best linear code (PCA of u on training data) and the residual MLPs
end in zero-initialised layers, so training starts from the linear code and learns the RGB-conditioned
corrections; on CAVE this converges several times faster than a plain MLP from random weights.

With `normalize_intensity` both sides work on intensity-normalised spectra: u and c are divided by the pixel's
mean RGB b (floored at INTENSITY_FLOOR) before the MLPs and û is multiplied by b after. Scaling a spectrum by
any factor then scales its reconstruction by the same factor and leaves its code unchanged (the code describes
the material's spectral shape, not its shading), which is exact for the linear split and what root-polynomial
regression builds in for the same reason.

Encoding can end with Gauss-Newton steps (`refine_steps`, a config entry; `encode(..., refine_steps=)`): each
pixel's code is moved to where the decoder reproduces that pixel's u best, to first order. The one-pass encoder is
fitted to the training spectra and misses on unseen ones (its amortisation gap); one step closes that gap on CAVE
val (README, Results). Training always uses the one-pass encoder; the steps run without autograd. The decoder's
Jacobian costs three decoder passes; with `refine_block` b > 1 it is evaluated once per b x b block of pixels, at
the block's mean code and RGB, and shared by the block's pixels (each keeps its own residual), which costs 1/b² of
that at almost the same accuracy (neighbouring pixels have nearly the same Jacobian).

The camera is part of the model: its response and wavelengths are stored in config.json, and
`save_pretrained` / `from_pretrained` (diffusers' ModelMixin) round-trip it with the weights as safetensors.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ..camera import CameraResponse
from ..nullspace import ObservableSplit


ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}
IN_PLACE = {nn.SiLU: lambda x: F.silu(x, inplace=True), nn.ReLU: lambda x: F.relu(x, inplace=True), nn.GELU: F.gelu}

# Pixels per inference chunk: each layer's activations then stay in the CPU cache. Measured on the 2-core CPU,
# SpeUAE encoder on 512 x 512: 0.68 s in one piece, 0.50 s in chunks of 32768 with in-place activations.
INFERENCE_CHUNK = 32768
# Mean RGB below which a pixel is not normalised further (normalize_intensity): about 1/4 of the 8-bit sRGB step
# at black in linear units, so noise in near-black pixels is not blown up.
INTENSITY_FLOOR = 1e-3


def _silu_and_slope(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(x)
    activated = x.mul_(s)
    return activated, torch.addcmul(s, activated, 1 - s)  # silu'(x) = s + x s (1 - s)


def _relu_and_slope(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    slope = (x > 0).to(x.dtype)
    return x.mul_(slope), slope


def _gelu_and_slope(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    slope = 0.5 * (1 + torch.erf(x / 2 ** 0.5)) + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
    return F.gelu(x), slope


# activation(x) in place where it can be, and its derivative, for forward-mode derivatives without autograd
WITH_SLOPE = {nn.SiLU: _silu_and_slope, nn.ReLU: _relu_and_slope, nn.GELU: _gelu_and_slope}


def _solvable(x: torch.Tensor) -> torch.Tensor:
    """`x` in a precision linalg solves take: bf16/fp16 (a half-precision pipeline) go to float32; neither has
    solve or inverse kernels, and the per-pixel normal matrices need the mantissa."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _pixels(image: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> (N H W) x C, one row per pixel."""
    return image.movedim(1, -1).reshape(-1, image.shape[1])


def _image(pixels: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of `_pixels` for an image of `shape` (N x C x H x W)."""
    return pixels.reshape(shape[0], *shape[2:], -1).movedim(-1, 1)


class PointwiseMLP(nn.Module):
    """An MLP applied to every pixel of N x C x H x W tensors (channels-last Linear layers: faster than 1 x 1 convs).

    With `context` k > 1 the first layer is a k x k convolution (edge pixels replicated), so each pixel's MLP
    also sees its neighbours: the small-context variant. The other layers stay per pixel, so the cost barely grows.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, layers: int, activation: str,
                 context: int = 1) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if context < 1 or context % 2 == 0:
            raise ValueError(f"context must be an odd kernel size >= 1, got {context}")
        first = (nn.Linear(in_channels, hidden) if context == 1 else
                 nn.Conv2d(in_channels, hidden, context, padding=context // 2, padding_mode="replicate"))
        blocks: list[nn.Module] = [first, ACTIVATIONS[activation]()]
        for _ in range(layers - 1):
            blocks += [nn.Linear(hidden, hidden), ACTIVATIONS[activation]()]
        last = nn.Linear(hidden, out_channels)
        nn.init.zeros_(last.weight)  # a residual branch: starts as the identity of what it is added to
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*blocks, last)
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.net)
        if self.context > 1:  # the neighbourhood layer runs on the image, the rest pixel by pixel
            x, layers = self.net[0](x), layers[1:]
        pixels = x.permute(0, 2, 3, 1)
        if torch.is_grad_enabled():
            for layer in layers:
                pixels = layer(pixels)
            return pixels.permute(0, 3, 1, 2)
        flat = pixels.reshape(-1, pixels.shape[-1])
        out = torch.cat([self._infer(layers, chunk) for chunk in flat.split(INFERENCE_CHUNK)])
        return out.reshape(*pixels.shape[:-1], -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def value_and_jacobian(self, x: torch.Tensor, wrt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs for flat pixels `x` (P x in) and their derivatives with respect to the first `wrt` input
        channels (P x wrt x out), by forward-mode differentiation layer by layer (per-pixel MLPs only)."""
        if self.context > 1:
            raise ValueError("PointwiseMLP.value_and_jacobian (SpeUAE refine_steps) needs a per-pixel MLP (context 1)")
        first, *layers = list(self.net)
        hidden, tangents = first(x), first.weight[:, :wrt].T  # d hidden / d x[:, :wrt], the same for every pixel
        for layer in layers:
            if isinstance(layer, nn.Linear):  # pixel-major tangents: one (P * wrt) x in matmul per layer
                hidden = layer(hidden)
                tangents = (tangents.reshape(-1, tangents.shape[-1]) @ layer.weight.T).view(len(x), wrt, -1)
            else:
                hidden, slope = WITH_SLOPE[type(layer)](hidden)
                tangents = tangents * slope[:, None, :] if tangents.ndim == 2 else tangents.mul_(slope[:, None, :])
        return hidden, tangents

    @staticmethod
    def _infer(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """The per-pixel layers without autograd: activations in place, so a chunk's buffers are reused."""
        for layer in layers:
            x = layer(x) if isinstance(layer, nn.Linear) else IN_PLACE[type(layer)](x)
        return x


class SpeUAE(ModelMixin, ConfigMixin):
    """encode(hsi, rgb) -> code in [-1, 1] (N x 3 x H x W); decode(code, rgb) -> hsi (N x B x H x W)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        camera_name: str = "Nikon 5100 (NPL)",
        camera_response: Optional[list] = None,
        wavelengths: Optional[list] = None,
        code_channels: int = 3,
        encoder_channels: int = 128,
        decoder_channels: int = 64,
        num_layers: int = 3,
        activation: str = "silu",
        unobservable_scale: float = 4.0,
        context: int = 1,
        normalize_intensity: bool = False,
        refine_steps: int = 0,
        refine_block: int = 1,
    ) -> None:
        super().__init__()
        if refine_steps < 0 or (refine_steps and context > 1):
            raise ValueError(f"refine_steps must be >= 0, and 0 with context > 1 (got {refine_steps}, context {context})")
        if refine_block < 1:
            raise ValueError(f"refine_block must be >= 1 (pixels per side of a shared-Jacobian block), got {refine_block}")
        if camera_response is None or wavelengths is None:
            camera = CameraResponse.from_preset(camera_name)
            self.register_to_config(camera_response=camera.matrix.tolist(), wavelengths=list(camera.grid.wavelengths),
                                    camera_name=camera.name)
        else:
            camera = CameraResponse.from_config({"name": camera_name, "matrix": camera_response, "wavelengths": wavelengths})
        self.split = ObservableSplit(camera)
        hidden = self.split.num_unobservable
        # Only the decoder runs at inference (the diffusion model generates the code), so it is the smaller one.
        self.linear_encoder = nn.Linear(hidden, code_channels)
        self.linear_decoder = nn.Linear(code_channels, hidden)
        self.encoder = PointwiseMLP(hidden + 3, code_channels, encoder_channels, num_layers, activation, context)
        self.decoder = PointwiseMLP(code_channels + 3, hidden, decoder_channels, num_layers, activation, context)

    @torch.no_grad()
    def init_linear_code(self, u: torch.Tensor, rgb: Optional[torch.Tensor] = None, spread: float = 2.0) -> None:
        """Start from the PCA code of unobservable parts `u` (P x (B-3), e.g. training pixels; their RGB P x 3
        too when the model normalises intensity, since the code is then fitted to u / b).

        Code channel k is the k-th principal component divided by `spread` standard deviations, so most
        pixels land in tanh's near-linear range.
        """
        u = u.double().reshape(-1, self.split.num_unobservable)
        if self.config.normalize_intensity:
            if rgb is None:
                raise ValueError("init_linear_code: this SpeUAE normalises intensity, so it needs the pixels' RGB too")
            u = u / self._intensity(rgb.double().reshape(-1, 3))
        mean = u.mean(dim=0)
        _, singular, vh = torch.linalg.svd(u - mean, full_matrices=False)
        k = self.config.code_channels
        basis, std = vh[:k], singular[:k] / max(len(u) - 1, 1) ** 0.5
        scale = self.config.unobservable_scale
        # linear_encoder sees u * scale; linear_decoder's output is divided by scale (see encode/decode)
        self.linear_encoder.weight.copy_(basis / (spread * std[:, None] * scale))
        self.linear_encoder.bias.copy_(-(basis @ mean) / (spread * std))
        self.linear_decoder.weight.copy_(basis.T * (spread * std[None, :]) * scale)
        self.linear_decoder.bias.copy_(mean * scale)

    @classmethod
    def for_camera(cls, camera: CameraResponse, **kwargs) -> "SpeUAE":
        return cls(camera_name=camera.name, camera_response=camera.matrix.tolist(),
                   wavelengths=list(camera.grid.wavelengths), **kwargs)

    @property
    def camera(self) -> CameraResponse:
        return CameraResponse.from_config({"name": self.config.camera_name, "matrix": self.config.camera_response,
                                           "wavelengths": self.config.wavelengths})

    @property
    def num_bands(self) -> int:
        return self.split.num_bands

    def _check(self, tensor: torch.Tensor, channels: int, what: str) -> None:
        if tensor.ndim != 4 or tensor.shape[1] != channels:
            raise ValueError(f"SpeUAE.{what}: expected N x {channels} x H x W, got shape {tuple(tensor.shape)}")

    def _intensity(self, rgb: torch.Tensor) -> Optional[torch.Tensor]:
        """The per-pixel scale b that normalize_intensity divides by (channels on dim 1), or None when it is off,
        so the default model does no extra work."""
        if not self.config.normalize_intensity:
            return None
        return rgb.mean(dim=1, keepdim=True).clamp_min(INTENSITY_FLOOR)

    @staticmethod
    def _rgb_features(rgb: torch.Tensor, intensity: Optional[torch.Tensor]) -> torch.Tensor:
        """The RGB as the MLPs see it: chromaticity around 0 when normalised, else rescaled to [-1, 1]."""
        return rgb * 2 - 1 if intensity is None else rgb / intensity - 1

    def _code_target(self, hsi: torch.Tensor, rgb: torch.Tensor, intensity: Optional[torch.Tensor]) -> torch.Tensor:
        """u as both MLPs see it: scaled by unobservable_scale, divided by the intensity when normalised."""
        u = self.split.unobservable(hsi, dim=1) * self.config.unobservable_scale
        return u if intensity is None else u / intensity

    @apply_forward_hook  # so enable_model_cpu_offload moves the model in for this call too
    def encode(self, hsi: torch.Tensor, rgb: Optional[torch.Tensor] = None,
               refine_steps: Optional[int] = None) -> torch.Tensor:
        """Spectra (N x B x H x W) -> code image in [-1, 1]. `rgb` defaults to the clean rendering Φ s;
        `refine_steps` (default: the config's) Gauss-Newton steps follow the one-pass encoder."""
        self._check(hsi, self.num_bands, "encode")
        if rgb is None:
            rgb = self.split.render(hsi, dim=1)
        self._check(rgb, 3, "encode (rgb)")
        intensity = self._intensity(rgb)
        u, features = self._code_target(hsi, rgb, intensity), self._rgb_features(rgb, intensity)
        linear = self.linear_encoder(u.movedim(1, -1)).movedim(-1, 1)
        code = torch.tanh(linear + self.encoder(torch.cat([u, features], dim=1)))
        steps = self.config.refine_steps if refine_steps is None else refine_steps
        return self._refine(code, u, features, steps) if steps else code

    @torch.no_grad()
    def _refine(self, code: torch.Tensor, u: torch.Tensor, features: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` Gauss-Newton steps on every pixel's code, towards the least-squares fit of the decoder's output
        to `u` (as the MLPs see both); codes stay in [-1, 1]. Runs in the model's precision (autocast off), except
        the solves of a bf16/fp16 model, which run in float32 (`_solvable`)."""
        dtype, block = code.dtype, self.config.refine_block
        code, u, features = (t.to(self.dtype) for t in (code, u, features))
        with torch.autocast(code.device.type, enabled=False):
            if block == 1:  # exact: pixel by pixel in cache-sized chunks, every step on a chunk before the next
                flat = [_pixels(t) for t in (code, features, u)]
                refined = torch.cat([self._gauss_newton(*chunk, steps) for chunk in
                                     zip(*(t.split(INFERENCE_CHUNK) for t in flat))])
                code = _image(refined, code.shape)
            else:
                for _ in range(steps):
                    code = (code + self._block_gauss_newton_step(code, features, u, block)).clamp(-1, 1)
        return code.to(dtype)

    def _decoder_jacobian(self, code: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat pixels -> (the MLPs' û, d û / d code as P x k x (B-3)), û including the linear part."""
        value, jac = self.decoder.value_and_jacobian(torch.cat([code, features], dim=1), wrt=code.shape[1])
        return value + self.linear_decoder(code), jac + self.linear_decoder.weight.T

    @staticmethod
    def _normal_matrix(jac: torch.Tensor) -> torch.Tensor:
        """JᵀJ for every pixel's J (given as P x k x (B-3)), with a whisker of damping so flat directions stay
        solvable."""
        normal = jac @ jac.mT
        damping = 1e-6 * normal.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
        return normal + damping[:, None, None] * torch.eye(normal.shape[-1], dtype=jac.dtype, device=jac.device)

    def _gauss_newton(self, code: torch.Tensor, features: torch.Tensor, target: torch.Tensor, steps: int) -> torch.Tensor:
        """Flat pixels: `steps` times code += (JᵀJ)⁻¹ Jᵀ (target - û(code)), each pixel with its own Jacobian (value
        and Jacobian in one forward-mode pass)."""
        for _ in range(steps):
            value, jac = self._decoder_jacobian(code, features)
            jac, residual = _solvable(jac), _solvable(target - value)
            step = torch.linalg.solve(self._normal_matrix(jac), jac @ residual[..., None])[..., 0]
            code = (code + step.to(code.dtype)).clamp(-1, 1)
        return code

    def _block_gauss_newton_step(self, code: torch.Tensor, features: torch.Tensor, target: torch.Tensor,
                                 block: int) -> torch.Tensor:
        """Images: the same step with one Jacobian per block x block pixels, taken at the block's mean code and
        RGB features (edges replicated to whole blocks); every pixel keeps its own residual."""
        n, k, height, width = code.shape
        pad = (0, -width % block, 0, -height % block)
        pooled = [F.avg_pool2d(F.pad(t, pad, mode="replicate"), block) for t in (code, features)]
        flat = [_pixels(t) for t in pooled]
        jac = torch.cat([self._decoder_jacobian(*chunk)[1] for chunk in zip(*(t.split(INFERENCE_CHUNK) for t in flat))])
        maps = (torch.linalg.inv(self._normal_matrix(_solvable(jac))) @ _solvable(jac)).to(jac.dtype)  # (JᵀJ)⁻¹Jᵀ
        rows, cols = pooled[0].shape[2:]
        maps = maps.view(n, rows, cols, k, -1)
        residual = target - self._unobservable_mlp(code, features)
        residual = F.pad(residual, pad, mode="replicate").view(n, -1, rows, block, cols, block)
        step = torch.einsum("nrckb,nbrycx->nkrycx", maps, residual).reshape(n, k, rows * block, cols * block)
        return step[:, :, :height, :width]

    def _unobservable_mlp(self, code: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """û as the MLPs produce it (scaled, intensity-normalised): linear part + RGB-conditioned residual."""
        linear = self.linear_decoder(code.movedim(1, -1)).movedim(-1, 1)
        return linear + self.decoder(torch.cat([code, features], dim=1))

    @apply_forward_hook
    def decode_unobservable(self, code: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """Code image + RGB -> û, the coordinates of the unobservable part (B-3 channels)."""
        self._check(code, self.config.code_channels, "decode")
        self._check(rgb, 3, "decode (rgb)")
        intensity = self._intensity(rgb)
        u = self._unobservable_mlp(code, self._rgb_features(rgb, intensity)) / self.config.unobservable_scale
        return u if intensity is None else u * intensity

    @apply_forward_hook
    def decode(self, code: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """Code image + RGB -> spectra Φ⁺c + N û, which render back to `rgb` exactly."""
        return self.split.compose(rgb, self.decode_unobservable(code, rgb), dim=1)

    def forward(
        self,
        hsi: torch.Tensor,
        rgb: Optional[torch.Tensor] = None,
        code_channel: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> tuple[torch.Tensor, ...]:
        """Round trip: (reconstruction, code), plus the reconstruction from `code_channel(code)` when given.

        `code_channel` models what happens to the code downstream (the frozen SpaAE's encode/decode in
        training); going through `forward` keeps DistributedDataParallel's gradient sync intact.
        """
        if rgb is None:
            rgb = self.split.render(hsi, dim=1)
        code = self.encode(hsi, rgb, refine_steps=0)  # the amortised encoder is what training fits
        outputs = (self.decode(code, rgb), code)
        if code_channel is not None:
            outputs += (self.decode(code_channel(code).clamp(-1, 1), rgb),)
        return outputs
