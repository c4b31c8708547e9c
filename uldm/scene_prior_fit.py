"""Fitting a `SceneMixturePrior` on training scenes: its bank of regressions, then its gate, leave-scene-out.

1. Per scene: the root-polynomial regression fitted on that scene alone (ridge-regularised: a scene of few colours
   determines few directions), its palette, and how badly it explains each chromaticity of its own scene (the
   error of the spectrum it predicts once made to render to the pixel's RGB exactly, as the pipeline composes it).
2. The global expert: the same regression on all scenes together (from the summed normal equations).
3. The gate, leave-scene-out: each training scene is mixed from the experts of the *other* scenes (and their
   global fit), and the gate's few weights minimise the mean over scenes of the log mean squared error, that is,
   they maximise the mean PSNR of scenes whose own expert is not in the bank, as at inference, plus an L2 penalty
   on the gate. The penalty (how sharp a retrieval the gate may make) is chosen by an inner cross-validation over
   the training scenes alone (`GATE_PENALTIES`, `INNER_FOLDS`): the gate is fitted on some scenes' problems and
   scored on the others'. 0 gives the unpenalised gate.

The fit is deterministic (a seeded pixel sample, full-batch L-BFGS) and takes seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .baseline import feature_names, rendered_scenes, root_polynomial_features
from .camera import CameraResponse
from .models.scene_prior import NUM_FEATURES, SceneMixturePrior, chromaticity_bins, palette, smooth_palette
from .nullspace import ObservableSplit

RIDGE = 1e-4           # ridge of the per-scene fits, relative to the mean diagonal of their normal equations
SAMPLE_PIXELS = 4096   # pixels per scene that the error statistics and the gate fit use
GATE_PENALTIES = (0.0, 1e-3, 1e-2, 1e-1)  # L2 penalties on the gate the inner cross-validation chooses from
INNER_FOLDS = 5
GATE_FEATURES = ("global", "density", "fit_error", "local_context", "image_context")  # the gate's weights, in order


@dataclass
class SceneData:
    """One training scene: its name, linear RGB (H x W x 3) and spectra (H x W x B)."""

    name: str
    rgb: np.ndarray
    cube: np.ndarray


@dataclass
class _Normal:
    """Normal equations of a least-squares fit: XᵀX (F x F) and XᵀY (F x B)."""

    xtx: torch.Tensor
    xty: torch.Tensor

    def solve(self, ridge: float = 0.0) -> torch.Tensor:
        regulariser = ridge * self.xtx.diagonal().mean() * torch.eye(len(self.xtx), dtype=self.xtx.dtype)
        return torch.linalg.solve(self.xtx + regulariser, self.xty)

    def __sub__(self, other: "_Normal") -> "_Normal":
        return _Normal(self.xtx - other.xtx, self.xty - other.xty)


def _consistent(split: ObservableSplit, spectra: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Spectra (... x B) made to render to `rgb` exactly: the unobservable part kept, the rest taken from the RGB."""
    return split.compose(rgb, split.unobservable(spectra))


def _binned_error(errors: torch.Tensor, rgb: torch.Tensor, bins: int) -> torch.Tensor:
    """Mean squared error per chromaticity bin (bins²,) of pixels (P errors, P x 3 RGB), smoothed over the grid;
    bins no pixel falls in take the overall mean."""
    index = chromaticity_bins(rgb, bins)
    sums = torch.zeros(bins * bins, dtype=torch.float64).index_add_(0, index, errors.double())
    counts = torch.zeros(bins * bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(errors, dtype=torch.float64))
    total_sums, total_counts = sums.sum(), counts.sum()
    sums, counts = smooth_palette(sums, bins) * total_sums, smooth_palette(counts, bins) * total_counts
    mean = total_sums / total_counts
    return torch.where(counts > 0.5, sums / counts.clamp_min(1e-12), mean)


class _Bank:
    """The per-scene pieces every expert bank is assembled from."""

    def __init__(self, scenes: Sequence[SceneData], camera: CameraResponse, degree: int, bins: int, seed: int) -> None:
        self.split = ObservableSplit(camera)
        self.degree, self.bins = degree, bins
        generator = np.random.default_rng(seed)
        self.normals, self.weights, self.palettes, self.errors, self.samples = [], [], [], [], []
        for scene in scenes:
            rgb = torch.from_numpy(np.asarray(scene.rgb, np.float64).reshape(-1, 3))
            cube = torch.from_numpy(np.asarray(scene.cube, np.float64).reshape(len(rgb), -1))
            features = root_polynomial_features(rgb, degree)
            normal = _Normal(features.T @ features, features.T @ cube)
            weights = normal.solve(RIDGE)
            pick = torch.from_numpy(generator.choice(len(rgb), size=min(SAMPLE_PIXELS, len(rgb)), replace=False))
            self.normals.append(normal)
            self.weights.append(weights)
            self.palettes.append(palette(rgb, bins))
            self.errors.append(self.error_map(weights, rgb, cube))
            self.samples.append((rgb[pick], cube[pick], pick))
        self.total = _Normal(sum(n.xtx for n in self.normals), sum(n.xty for n in self.normals))

    def error_map(self, weights: torch.Tensor, rgb: torch.Tensor, cube: torch.Tensor) -> torch.Tensor:
        """How badly a regression explains each chromaticity of these pixels (bins²,)."""
        predicted = _consistent(self.split, root_polynomial_features(rgb, self.degree) @ weights, rgb)
        return _binned_error((predicted - cube).square().mean(-1), rgb, self.bins)

    def global_expert(self, members: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, palette, error map) of the regression fitted on the scenes `members` together."""
        left_out = [i for i in range(len(self.normals)) if i not in set(members)]
        normal = self.total
        for i in left_out:
            normal = normal - self.normals[i]
        weights = normal.solve()
        rgb = torch.cat([self.samples[i][0] for i in members])
        cube = torch.cat([self.samples[i][1] for i in members])
        palette_ = torch.stack([self.palettes[i] for i in members]).mean(0)
        return weights, palette_, self.error_map(weights, rgb, cube)

    def prior(self, members: Sequence[int], use_context: bool, context_window: float,
              names: Optional[list] = None) -> SceneMixturePrior:
        """A prior whose experts are the global fit of `members`, then each member's own."""
        weights, palette_, errors = self.global_expert(members)
        prior = SceneMixturePrior(num_bands=self.split.num_bands, degree=self.degree, num_experts=len(members) + 1,
                                  bins=self.bins, context_window=context_window, use_context=use_context,
                                  scene_names=names)
        prior.expert_weights.data = torch.stack([weights, *(self.weights[i] for i in members)]).float()
        prior.palettes.data = torch.stack([palette_, *(self.palettes[i] for i in members)]).float()
        prior.fit_errors.data = torch.stack([errors, *(self.errors[i] for i in members)]).float()
        return prior


def _held_out_problem(bank: _Bank, scenes: Sequence[SceneData], held_out: int, use_context: bool,
                      context_window: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the gate must do for one training scene mixed from the others' experts: (gate features P x K x 5,
    every expert's RGB-consistent spectra P x K x B, true spectra P x B) at the scene's sampled pixels."""
    others = [i for i in range(len(scenes)) if i != held_out]
    prior = bank.prior(others, use_context, context_window).double()
    image = torch.from_numpy(np.asarray(scenes[held_out].rgb, np.float64)).permute(2, 0, 1)[None]
    rgb, cube, pick = bank.samples[held_out]
    with torch.no_grad():
        context = prior.image_context(image)
        features = prior.gate_features(image, context, None).reshape(-1, prior.config.num_experts, NUM_FEATURES)[pick]
        spectra = torch.einsum("pf,kfb->pkb", root_polynomial_features(rgb, bank.degree), prior.expert_weights)
        spectra = _consistent(bank.split, spectra, rgb[:, None, :])
    return features, spectra, cube


Problem = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def mixture_loss(gate: torch.Tensor, problems: Sequence[Problem]) -> torch.Tensor:
    """The mean over scenes of log(mean squared error) of the gate's mixtures: minus the mean PSNR, up to scale."""
    losses = []
    for features, spectra, target in problems:
        weights = torch.softmax(features @ gate, dim=-1)
        losses.append(((weights.unsqueeze(-1) * spectra).sum(1) - target).square().mean().log())
    return torch.stack(losses).mean()


def fit_gate(problems: Sequence[Problem], mask: torch.Tensor, penalty: float = 0.0,
             max_iter: int = 100) -> tuple[torch.Tensor, float]:
    """Gate weights (5,) minimising `mixture_loss` + penalty·|gate|², from a uniform mixture (all zeros); the
    features `mask` leaves out keep weight 0. Returns the gate and its loss (without the penalty)."""
    gate = torch.zeros(NUM_FEATURES, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([gate], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = mixture_loss(gate * mask, problems) + penalty * (gate * mask).square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return gate.detach() * mask, float(mixture_loss(gate * mask, problems))


def choose_penalty(problems: Sequence[Problem], mask: torch.Tensor,
                   penalties: Sequence[float] = GATE_PENALTIES) -> tuple[float, dict[str, float]]:
    """The gate penalty with the best inner cross-validated loss over the training scenes' problems (scenes dealt
    into `INNER_FOLDS` folds in order), and every penalty's loss."""
    folds = [list(range(k, len(problems), INNER_FOLDS)) for k in range(min(INNER_FOLDS, len(problems)))]
    scores = {}
    for penalty in penalties:
        held_out_losses = []
        for fold in folds:
            fitted = [problems[i] for i in range(len(problems)) if i not in fold]
            gate, _ = fit_gate(fitted, mask, penalty)
            with torch.no_grad():
                held_out_losses.append(float(mixture_loss(gate, [problems[i] for i in fold])))
        scores[f"{penalty:g}"] = float(np.mean(held_out_losses))
    best = min(penalties, key=lambda penalty: scores[f"{penalty:g}"])
    return best, scores


def scene_data(paths: Sequence, camera: CameraResponse, degradation=None, format: Optional[str] = None,
               seed: int = 0) -> list[SceneData]:
    """The training scenes of a scene mixture, read and rendered as `uldm.baseline.rendered_scenes` does."""
    return [SceneData(*scene) for scene in rendered_scenes(paths, camera, degradation, format, seed)]


def fit_scene_mixture_prior(scenes: Sequence[SceneData], camera: CameraResponse, *, degree: int = 2,
                            bins: int = 16, context_window: float = 0.125, use_context: bool = True,
                            penalties: Sequence[float] = GATE_PENALTIES, gate: Optional[Sequence[float]] = None,
                            seed: int = 0) -> tuple[SceneMixturePrior, dict]:
    """The prior for `scenes` (its experts: their global fit and each scene's own) and a record of the fit (the
    gate, its penalty and the inner cross-validation that chose it, its leave-scene-out loss, the scenes).
    `penalties=(0,)` fits the unpenalised gate without an inner cross-validation; `gate` (5 weights, e.g. from an
    earlier fit's record) is used as it is instead of being fitted (the bank is deterministic, so this rebuilds
    that fit's prior)."""
    if len(scenes) < 3:
        raise ValueError(f"a scene mixture needs at least 3 training scenes (each is mixed from the others), got {len(scenes)}")
    bank = _Bank(scenes, camera, degree, bins, seed)
    prior = bank.prior(list(range(len(scenes))), use_context, context_window, names=[s.name for s in scenes])
    if gate is not None:
        prior.gate.data = torch.tensor(list(gate), dtype=torch.float32) * prior.gate_mask()
        return prior, {"gate": dict(zip(GATE_FEATURES, prior.gate.tolist())), "scenes": [s.name for s in scenes]}
    problems = [_held_out_problem(bank, scenes, i, use_context, context_window) for i in range(len(scenes))]
    mask = prior.gate_mask().double()
    penalty, inner = choose_penalty(problems, mask, penalties) if len(penalties) > 1 else (penalties[0], {})
    gate, loss = fit_gate(problems, mask, penalty)
    prior.gate.data = gate.float()
    record = {"gate": dict(zip(GATE_FEATURES, gate.tolist())),
              "penalty": penalty, "inner_crossval_log_mse": inner,
              "leave_scene_out_log_mse": loss, "scenes": [s.name for s in scenes], "degree": degree, "bins": bins,
              "context_window": context_window, "use_context": use_context, "features": list(feature_names(degree)),
              "sample_pixels": SAMPLE_PIXELS, "ridge": RIDGE, "seed": seed}
    return prior, record
