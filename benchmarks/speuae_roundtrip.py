"""Stage-1 benchmark: SpeUAE round trip vs the best linear codes, on the CAVE val split, plus CPU timing.

    python benchmarks/speuae_roundtrip.py --speuae runs/speuae-cave/speuae [--data ../shared/data/cave]

The linear code is PCA of the unobservable part u = Nᵀs fitted on the train split (k = 3 and k = 6 dimensions);
every model composes ŝ = Φ⁺c + N û, so all rows re-render to the RGB exactly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from uldm.baseline import RootPolynomialRegression
from uldm.data import cave_split, cave_split_from_files, default_cave_root, read_scene
from uldm.io import save_json
from uldm.metrics import evaluate_cube, format_table, mean_metrics
from uldm.models import SpeUAE, spaae
from uldm.models.code_prior import RootPolynomialPrior, code_to_residual, prior_code, residual_to_code
from uldm.nullspace import ObservableSplit


def linear_code_model(split: ObservableSplit, train_cubes: list[np.ndarray], k: int):
    """PCA of u on training pixels -> a function cube -> round-trip cube through a k-dimensional code."""
    u = np.concatenate([split.unobservable(torch.from_numpy(c).double()).reshape(-1, split.num_unobservable).numpy()
                        for c in train_cubes])
    mean = u.mean(axis=0)
    _, _, vh = np.linalg.svd(u - mean, full_matrices=False)
    basis = torch.from_numpy(vh[:k].T)  # 28 x k

    def round_trip(cube: np.ndarray) -> np.ndarray:
        s = torch.from_numpy(cube).double()
        rgb, u_true = split.split(s)
        code = (u_true - torch.from_numpy(mean)) @ basis
        return split.compose(rgb, code @ basis.T + torch.from_numpy(mean)).float().numpy()

    return round_trip


def as_batch(cube: np.ndarray) -> torch.Tensor:
    """H x W x B cube -> 1 x B x H x W tensor, as the models take it."""
    return torch.from_numpy(cube).permute(2, 0, 1)[None]


def as_cube(batch: torch.Tensor) -> np.ndarray:
    """1 x B x H x W tensor -> H x W x B cube, as the metrics take it."""
    return batch[0].permute(1, 2, 0).numpy()


def speuae_model(model: SpeUAE, refine_steps: int):
    """Encode (one pass, then `refine_steps` Gauss-Newton steps), then decode."""

    @torch.no_grad()
    def round_trip(cube: np.ndarray) -> np.ndarray:
        hsi = as_batch(cube)
        rgb = model.split.render(hsi, dim=1)
        return as_cube(model.decode(model.encode(hsi, rgb, refine_steps=refine_steps), rgb))

    return round_trip


def fit_latent(vae, latent: torch.Tensor, code: torch.Tensor, steps: int, lr: float = 0.05) -> torch.Tensor:
    """`steps` Adam steps on the (scaled) latent so the SpaAE decodes it closer (squared error) to `code`; `lr` is
    the step in the autoencoder's own, unscaled latent units."""
    latent = latent.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=lr * vae.config.scaling_factor)
    for _ in range(steps):
        loss = (spaae.decode(vae, latent) - code).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return latent.detach()


def prior_model(model: SpeUAE, prior: RootPolynomialPrior):
    """The prior's code, decoded: what a ULDM with that prior gives when its diffusion model adds nothing."""

    @torch.no_grad()
    def round_trip(cube: np.ndarray) -> np.ndarray:
        rgb = model.split.render(as_batch(cube), dim=1)
        return as_cube(model.decode(prior_code(prior, model, rgb), rgb))

    return round_trip


def spaae_model(model: SpeUAE, vae, fit_steps: int = 0, prior: Optional[RootPolynomialPrior] = None, scale: float = 1.0):
    """Code through the SpaAE (encode: a KL posterior's mean; decode) before decoding: the ULDM's ceiling. With a `prior`,
    the VAE carries the code's residual from the prior's code times `scale`, as in a ULDM trained with that prior.
    With `fit_steps` (diagnostic), the latent is then fitted to the VAE's target image (`fit_latent`): what the
    ceiling would be if the VAE encoder picked the best latent its decoder can use."""

    def round_trip(cube: np.ndarray) -> np.ndarray:
        hsi = as_batch(cube)
        rgb = model.split.render(hsi, dim=1)
        with torch.no_grad():
            code = model.encode(hsi, rgb)  # with the model's own refine_steps
            anchor = prior_code(prior, model, rgb)  # None without a prior: the VAE carries the code itself
            target = code_to_residual(code, anchor, scale)
            latent = spaae.encode(vae, target)
        latent = fit_latent(vae, latent, target, fit_steps) if fit_steps else latent
        with torch.no_grad():
            decoded = spaae.decode(vae, latent).clamp(-1, 1)
            return as_cube(model.decode(residual_to_code(decoded, anchor, scale), rgb))

    return round_trip


def time_model(model: SpeUAE, size: int, refine_steps: int, repeats: int = 5) -> tuple[float, float]:
    hsi = torch.rand(1, model.num_bands, size, size)
    with torch.inference_mode():
        rgb = model.split.render(hsi, dim=1)
        code = model.encode(hsi, rgb, refine_steps=refine_steps)
        model.decode(code, rgb)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model.encode(hsi, rgb, refine_steps=refine_steps)
        encode = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            model.decode(code, rgb)
        decode = (time.perf_counter() - start) / repeats
    return encode, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speuae", type=Path, required=True, help="folder written by save_pretrained")
    parser.add_argument("--data", type=Path, default=default_cave_root())
    parser.add_argument("--vae", type=Path, help="also pass the code through this SpaAE (an AutoencoderKL or "
                        "AutoencoderTiny folder, or a pipeline folder with vae/)")
    parser.add_argument("--vae-fit-steps", type=int, default=0,
                        help="with --vae, also score latents fitted to the code by this many Adam steps (diagnostic: "
                             "how much of the VAE's ceiling is its encoder's choice of latent)")
    parser.add_argument("--prior", type=Path,
                        help="a root-polynomial baseline (.npz from `uldm baseline fit`): also score its code alone and, "
                             "with --vae, the VAE carrying the code's residual from it (the ULDM with a code prior)")
    parser.add_argument("--residual-scale", type=float, default=3.0, help="the residual's scale before the VAE")
    parser.add_argument("--per-scene", action="store_true", help="also print every model's per-scene table")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every model's mean and per-scene metrics")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="scenes to score (train: how well the models fit what they were fitted on)")
    parser.add_argument("--split-files", type=Path, nargs=2, metavar=("TRAIN", "VAL"),
                        help="another split: files of scene names (e.g. stages/configs/splits/cave_b_train.txt "
                             "cave_b_val.txt) instead of the standard one")
    parser.add_argument("--refine-steps", type=int,
                        help="also score (and time) encoding with this many Gauss-Newton steps (default: the model's "
                             "own refine_steps, when it has any)")
    parser.add_argument("--refine-block", type=int,
                        help="pixels per side of the blocks that share one Jacobian in those steps (default: the "
                             "model's own refine_block; 1 is the exact per-pixel step)")
    args = parser.parse_args()

    model = SpeUAE.from_pretrained(args.speuae).eval()
    if args.refine_block is not None:
        model.register_to_config(refine_block=args.refine_block)
    camera = model.camera
    split = ObservableSplit(camera)
    scenes = cave_split(args.data) if args.split_files is None else cave_split_from_files(args.data, *args.split_files)
    train = [read_scene(p, grid=camera.grid).cube for p in scenes["train"]]
    scored = {p.name: read_scene(p, grid=camera.grid).cube for p in scenes[args.split]}

    models = {"linear code k=3 (PCA of u)": linear_code_model(split, train, 3),
              "linear code k=6 (PCA of u)": linear_code_model(split, train, 6),
              f"SpeUAE ({sum(p.numel() for p in model.parameters())} params), one-pass encoder": speuae_model(model, 0)}
    refine_steps = model.config.refine_steps if args.refine_steps is None else args.refine_steps
    if refine_steps:
        block = model.config.refine_block
        models[f"SpeUAE, encoder + {refine_steps} Gauss-Newton step(s), Jacobian per {block}x{block}"] = speuae_model(
            model, refine_steps)
    prior = None if args.prior is None else RootPolynomialPrior.from_regression(RootPolynomialRegression.load(args.prior))
    if prior is not None:
        models["prior's code (root-polynomial spectra, encoded)"] = prior_model(model, prior)
    if args.vae is not None:
        vae = spaae.load_spaae(args.vae).eval().requires_grad_(False)
        models["SpeUAE + SpaAE (VAE round trip)"] = spaae_model(model, vae)
        if prior is not None:
            models[f"SpeUAE + SpaAE carrying {args.residual_scale:g} x the residual from the prior's code"] = spaae_model(
                model, vae, prior=prior, scale=args.residual_scale)
        if args.vae_fit_steps:
            models[f"SpeUAE + SpaAE, latents fitted ({args.vae_fit_steps} Adam steps)"] = spaae_model(
                model, vae, args.vae_fit_steps)
    summary, per_scene = {}, {}
    for name, round_trip in models.items():
        rows = {scene: evaluate_cube(round_trip(cube), cube) for scene, cube in scored.items()}
        summary[name], per_scene[name] = mean_metrics(list(rows.values())), rows
        if args.per_scene:
            print(f"{name}:\n{format_table(rows, first_column='scene')}\n")
    print(f"Round trip on the CAVE {args.split} split ({len(scored)} scenes), camera {camera.name}:")
    print(format_table(summary, first_column="model", mean_row=False))
    if args.json is not None:
        save_json({"split": args.split, "scenes": list(scored), "speuae": str(args.speuae),
                   "vae": None if args.vae is None else str(args.vae), "residual_scale": args.residual_scale,
                   "mean": summary, "per_scene": per_scene}, args.json)
        print(f"wrote {args.json}")
    for steps in sorted({0, refine_steps}):
        for size in (256, 512):
            encode, decode = time_model(model, size, steps)
            print(f"SpeUAE {size}x{size} on {torch.get_num_threads()} CPU threads, {steps} Gauss-Newton steps: "
                  f"encode {encode:.3f} s, decode {decode:.3f} s")


if __name__ == "__main__":
    main()
