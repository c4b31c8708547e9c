"""What every trainer in `stages/` shares: YAML configs, the Accelerator, data, checkpoints and resume.

A stage defines a config dataclass (subclassing `TrainConfig`), a model and a loss; this module supplies the rest,
so checkpointing, resume and logging behave the same in every stage:

- configs come from YAML, with `--set key=value` overrides; unknown or missing keys name the file;
- batches are a pure function of (seed, epoch, position), so `--resume_from_checkpoint latest` continues with
  exactly the batches an uninterrupted run would have seen;
- checkpoints are written by `accelerator.save_state` into a temporary folder renamed into place, so a run killed
  at any moment leaves the previous checkpoint intact; only the newest `checkpoints_total_limit` are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Type, TypeVar

import torch
import yaml
from tqdm.auto import tqdm

from .camera import CameraResponse
from .degradation import Degradation

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
ConfigT = TypeVar("ConfigT", bound="TrainConfig")


class ConfigError(ValueError):
    """A training config that cannot work: unknown or missing keys, wrong values, data that do not match."""


@dataclass
class TrainConfig:
    """Settings every stage has. Stage configs add their model and loss fields."""

    output_dir: str
    # data
    data_root: Optional[str] = None  # default: ../shared/data/cave (or $ULDM_CAVE_ROOT)
    data_format: str = "cave"
    train_scenes: Any = "train"  # "train"/"val"/"all" (CAVE split), a list of names, or a split-file path
    val_scenes: Any = "val"
    camera: str = "nikon5100"  # preset name/alias or CSV path
    degradation: Optional[dict] = None  # {photons, bit_depth, jpeg_quality}
    patch_size: int = 64
    patches_per_scene: int = 16
    # batch augmentation (uldm.data.augment): share of patches mixed with another; spread of spectral tilts;
    # spread of log exposure gains
    mix_probability: float = 0.0
    tilt_std: float = 0.0
    gain_std: float = 0.0
    train_batch_size: int = 8
    dataloader_num_workers: int = 0
    scene_cache_size: Optional[int] = 32
    # optimisation
    max_train_steps: int = 1000
    learning_rate: float = 1e-3
    adam_weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    use_ema: bool = False  # validate and save an exponential moving average of the weights (see ModelEMA)
    ema_decay: float = 0.999
    mixed_precision: str = "no"  # no / fp16 / bf16
    seed: int = 0
    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = 3
    validation_steps: int = 500
    report_to: Optional[str] = "tensorboard"
    tracker_project_name: str = "uldm"

    @property
    def augments(self) -> bool:
        """Whether any batch augmentation (mix / tilt / gain) is on."""
        return bool(self.mix_probability or self.tilt_std or self.gain_std)

    def validate(self) -> None:
        """Cheap checks before anything heavy happens; stages extend this."""
        if self.mixed_precision is False:  # YAML 1.1 reads an unquoted `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                     "validation_steps", "patches_per_scene"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.mix_probability <= 1:
            raise ConfigError(f"mix_probability must be between 0 and 1, got {self.mix_probability}")
        for name in ("tilt_std", "gain_std"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tilt_std and self.degradation:
            raise ConfigError("tilt_std re-renders clean RGB from the tilted spectra, which would drop the "
                              "degradation: use one or the other")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be between 0 and 1, got {self.ema_decay}")
        self.camera_response()
        Degradation.from_config(self.degradation)

    def camera_response(self) -> CameraResponse:
        try:
            return CameraResponse.load(self.camera)
        except ValueError as exc:
            raise ConfigError(f"camera: {exc}") from exc


# ------------------------------------------------------------------------------------------------ configs
def typed_value(name: str, value: Any, hint: Any) -> Any:
    """`value` as its field's int / float / bool, or a ConfigError naming the key. YAML 1.1 reads `1e-4` as a
    string (it wants `1.0e-4`), so numbers written that way are converted rather than failing deep in training."""
    members = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    if value is None and type(None) in members:
        return None
    kinds = [member for member in members if member is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else None
    if kind not in (int, float, bool):
        return value  # str, lists, mappings, Any: the stage's own validate() checks what it needs
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and kind is float:
            return number
        if number is not None and number.is_integer():
            return int(number)
    raise ConfigError(f"{name} must be {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}")


def load_config(cls: Type[ConfigT], path: Optional[Path], overrides: Sequence[str] = ()) -> ConfigT:
    """YAML file + `key=value` overrides (values parsed as YAML) -> a validated config dataclass."""
    values: dict[str, Any] = {}
    where = str(path) if path is not None else "command line"
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values")
        values.update(loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        values[key.strip()] = yaml.safe_load(raw)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{where}: missing required keys {missing}")
    hints = typing.get_type_hints(cls)
    try:
        values = {name: typed_value(name, value, hints[name]) for name, value in values.items()}
        config = cls(**values)
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return config


def base_argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="YAML config (see stages/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set max_train_steps=100")
    parser.add_argument("--output_dir", help="shortcut for --set output_dir=...")
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder to continue from")
    return parser


def config_from_args(cls: Type[ConfigT], args: argparse.Namespace) -> ConfigT:
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    return load_config(cls, args.config, overrides)


# --------------------------------------------------------------------------------------------------- data
def scene_paths(config: TrainConfig, which: Any) -> list[Path]:
    """Resolve a config's scene selection ("train"/"val"/"all", names, or a split file) to paths."""
    from .data import cave_split, default_cave_root, list_scenes, read_split_file, select_scenes

    root = Path(config.data_root) if config.data_root else default_cave_root()
    if root is None or not root.exists():
        raise ConfigError(f"data_root {root} does not exist (set data_root or $ULDM_CAVE_ROOT)")
    paths = list_scenes(root, config.data_format)
    if which == "all":
        return paths
    if which in ("train", "val"):
        if config.data_format != "cave":
            raise ConfigError(f"scene selection {which!r} is defined for CAVE only; give a list of names or a split file")
        return cave_split(root)[which]
    if isinstance(which, str):
        return select_scenes(paths, read_split_file(which))
    return select_scenes(paths, list(which))


class EpochSampler(torch.utils.data.Sampler):
    """A permutation fixed by (seed, epoch): the same on every process and after a resume."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def build_train_loader(config: TrainConfig, camera: CameraResponse):
    """(dataset, sampler, loader) of seeded random patches; call `set_epoch` on dataset and sampler per epoch."""
    from .data import SpectralPatchDataset

    dataset = SpectralPatchDataset(
        scene_paths(config, config.train_scenes), camera, patch_size=config.patch_size,
        patches_per_scene=config.patches_per_scene, augment=True,
        degradation=Degradation.from_config(config.degradation), format=config.data_format,
        cache_size=config.scene_cache_size, seed=config.seed,
    )
    # Read the first scene now (into the dataset's cache): data that cannot be brought onto the camera's grid
    # fails here, naming the file, before any model is built.
    dataset.scene(0)
    sampler, loader = make_loader(config, dataset)
    return dataset, sampler, loader


def build_augmentation(config: TrainConfig, camera: CameraResponse, device: torch.device):
    """The `BatchAugmentation` the config asks for (tilts re-render RGB with `camera`), or None."""
    if not config.augments:
        return None
    from .data.augment import BatchAugmentation
    from .nullspace import ObservableSplit

    return BatchAugmentation(ObservableSplit(camera).to(device), config.mix_probability, config.tilt_std,
                             config.gain_std)


def sample_pixels(dataset, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb P x 3, hsi P x B) of the first `pixels` pixels of the dataset's patches, for data-driven starts.

    Patches are seeded, so every process draws the same pixels and the models start identical on all ranks.
    """
    rgbs, cubes, count = [], [], 0
    for index in range(len(dataset)):
        item = dataset[index]
        rgbs.append(item["rgb"].flatten(1).T)
        cubes.append(item["hsi"].flatten(1).T)
        count += len(cubes[-1])
        if count >= pixels:
            break
    return torch.cat(rgbs)[:pixels], torch.cat(cubes)[:pixels]


def make_loader(config: TrainConfig, dataset):
    """(sampler, loader) over any dataset with `set_epoch`: seeded order per epoch, fixed-size batches."""
    sampler = EpochSampler(len(dataset), config.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train_batch_size, sampler=sampler, drop_last=True,
        num_workers=config.dataloader_num_workers,
    )
    if len(loader) == 0:
        raise ConfigError(f"{len(dataset)} training items are fewer than one batch of {config.train_batch_size}")
    return sampler, loader


# ---------------------------------------------------------------------------------------------- accelerate
def build_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    # accelerate keeps process-wide singletons: a second run in one process (a notebook, the tests) with another
    # mixed precision would be refused. Reset them; the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs"))
    report_to = config.report_to if config.report_to not in (None, "none") else None
    # Subnormal floats make CPU arithmetic orders of magnitude slower; a VAE run here slowed 30x mid-training.
    torch.set_flush_denormal(True)
    # Without a GPU, cpu=True makes `accelerate launch --multi_gpu --num_processes N` form a gloo process
    # group (MULTI_CPU) instead of N unrelated single processes.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=report_to,
        project_config=project,
    )
    warn_if_one_cpu_thread(accelerator)
    return accelerator


def warn_if_one_cpu_thread(accelerator) -> None:
    """`accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, so a lone process on a CPU-only machine
    uses one core: stage 1's fast recipe took 10 min 19 s that way on 2 cores, 7 min 23 s with both."""
    cores = os.cpu_count() or 1
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1 and torch.get_num_threads() == 1 < cores:
        logger.warning("training on the CPU with 1 thread of %d (OMP_NUM_THREADS=%s): `accelerate launch "
                       "--num_cpu_threads_per_process %d ...` or plain `python ...` uses them all",
                       cores, os.environ.get("OMP_NUM_THREADS"), cores)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, num_processes: int):
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process per optimizer step
    return get_scheduler(
        config.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=config.max_train_steps * num_processes,
    )


def checkpoints_in(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are not listed)."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def save_checkpoint(accelerator, output_dir: Path, step: int, limit: Optional[int]) -> Path:
    """`save_state` into a temporary folder, then rename: a crash mid-save never corrupts a checkpoint."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process: RNG states and sharded states are per process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if limit is not None:
            for old in checkpoints_in(output_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, output_dir: Path, spec: Optional[str]) -> int:
    """Load a checkpoint ('latest' or a path) and return its step; 0 when there is nothing to resume."""
    if not spec:
        return 0
    if spec == "latest":
        found = checkpoints_in(output_dir)
        if not found:
            accelerator.print(f"no checkpoint in {output_dir}; starting from scratch")
            return 0
        path = found[-1]
    else:
        path = Path(spec)
        if not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name):
            raise ConfigError(f"{spec}: not a checkpoint folder (expected .../checkpoint-<step>)")
    accelerator.load_state(str(path))
    step = int(CHECKPOINT_PATTERN.match(path.name).group(1))
    accelerator.print(f"resumed from {path} at step {step}")
    return step


def batches_from(loader, dataset, sampler, accelerator, start_step: int, accumulation: int) -> Iterator[tuple[int, Any]]:
    """Endless (epoch, batch) stream positioned after `start_step` optimizer steps."""
    batches_per_epoch = len(loader)
    consumed = start_step * accumulation
    epoch, skip = divmod(consumed, batches_per_epoch)
    while True:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        if hasattr(epoch_loader, "set_epoch"):
            # accelerate's loaders count their own epochs and re-seed the sampler from that count on every
            # iteration: set it, or a resumed run would replay epoch 0's order.
            epoch_loader.set_epoch(epoch)
        for batch in without_rng_draws(epoch_loader):
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def without_rng_draws(loader) -> Iterator[Any]:
    """Iterate `loader`, undoing the global-RNG draw its iterator makes on the first fetch (the workers' base seed).

    Batches here are seeded per item, so that draw only shifts the stream a loss uses for noise; undoing it keeps
    the noise a function of the step alone, identical in a resumed run (which starts an extra, skipping iterator).
    """
    iterator = iter(loader)
    state = torch.get_rng_state()
    first = next(iterator, None)
    torch.set_rng_state(state)
    if first is None:
        return
    yield first
    yield from iterator


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """Flat, tracker-friendly copy of a config (lists and dicts as strings)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in dataclasses.asdict(config).items()}


# ------------------------------------------------------------------------------------------------ models
def save_pretrained_atomic(model, path: Path) -> Path:
    """`save_pretrained` into a temporary sibling folder, then swap it in: readers never see half a model."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    old = path.with_name(f".old-{path.name}")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def full_model(accelerator, model: torch.nn.Module,
               rebuild: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None) -> torch.nn.Module:
    """The trained module with every weight present, for validation and the final save.

    Under FSDP (and DeepSpeed ZeRO-3) each process holds a shard, so `unwrap_model` alone is incomplete;
    `get_state_dict` gathers the weights into a fresh module, `rebuild(unwrapped)` (default: the same class from
    its diffusers config). That gather is a collective: call this on EVERY process, not only the main one (the
    main process gets the full copy; the others get their unwrapped module back, unused). Elsewhere it is
    `unwrap_model`, no copy.
    """
    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return unwrapped
    state = accelerator.get_state_dict(model)  # collective
    if not accelerator.is_main_process:
        return unwrapped
    copy = rebuild(unwrapped) if rebuild else type(unwrapped).from_config(unwrapped.config)
    copy.load_state_dict(state)
    return copy.to(accelerator.device)


class ModelEMA:
    """An exponential moving average of a trained model's weights (`use_ema`), for validation and the final save.

    Averaging damps the step-to-step noise of small-batch training. Registered with accelerate, it is saved in
    every checkpoint (as diffusers' EMAModel state) and restored on resume, on the training device.
    """

    def __init__(self, trained: torch.nn.Module, decay: float, device: torch.device) -> None:
        from diffusers.training_utils import EMAModel

        self.trained, self.device = trained, device
        # float32 shadows even when the prepared model holds low-precision weights (DeepSpeed bf16): an average of
        # small steps kept in bf16 would round most of them away
        self.average = EMAModel([p.detach().float() for p in trained.parameters()], decay=decay)
        self.average.to(device)

    def step(self) -> None:
        """Fold the trained model's current weights into the average (after each optimizer step)."""
        self.average.step(self.trained.parameters())

    def copy_to(self, model: torch.nn.Module) -> None:
        """Put the averaged weights into `model` (the trained one, or the full copy `full_model` returns)."""
        self.average.copy_to(model.parameters())

    @contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the block with the averaged weights in `model`, then put its own weights back."""
        self.average.store(model.parameters())
        self.average.copy_to(model.parameters())
        try:
            yield
        finally:
            self.average.restore(model.parameters())

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
        self.average.to(self.device)  # accelerate hands the state over on the CPU


def build_ema(accelerator, config: TrainConfig, trained: torch.nn.Module) -> Optional[ModelEMA]:
    """The ModelEMA of `trained` (the prepared model) when `config.use_ema`, registered for checkpoints; else None.

    Call it after `accelerator.prepare` and before `resume`, so a resumed run continues its average.
    """
    from accelerate.utils import DistributedType

    if not config.use_ema:
        return None
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("use_ema is not supported under FSDP (each process holds a shard of the model); "
                          "use DDP or DeepSpeed ZeRO-2, or set use_ema: false")
    ema = ModelEMA(trained, config.ema_decay, accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return ema


def final_model(accelerator, model: torch.nn.Module, ema: Optional[ModelEMA]) -> torch.nn.Module:
    """The module to save at the end of a run: `full_model`, holding the averaged weights when the run kept them.
    Collective like `full_model`: call it on every process."""
    model = full_model(accelerator, model)
    if ema is not None:
        ema.copy_to(model)
    return model


@contextmanager
def averaged_weights(ema: Optional[ModelEMA], model: torch.nn.Module) -> Iterator[None]:
    """`ema.swapped_into(model)`, or nothing when the run keeps no average."""
    if ema is None:
        yield
    else:
        with ema.swapped_into(model):
            yield


def load_frozen_vae(path: str, device: torch.device):
    """An SD-format AutoencoderKL (a VAE folder, or a pipeline folder holding vae/), frozen, in eval mode."""
    from diffusers import AutoencoderKL

    folder = Path(path)
    if (folder / "vae" / "config.json").exists():
        folder = folder / "vae"
    if not (folder / "config.json").exists():
        raise ConfigError(f"vae_path {path}: no config.json there or in {path}/vae (expected a diffusers AutoencoderKL)")
    try:
        vae = AutoencoderKL.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"vae_path {path}: cannot load an AutoencoderKL ({exc})") from exc
    vae.requires_grad_(False)
    return vae.eval().to(device)


# ---------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate_pipeline(pipeline, scenes: Sequence[Path], *, data_format: str, num_inference_steps: Optional[int] = None,
                      trackers: Sequence[Any] = (), step: int = 0, seed: int = 0) -> dict[str, float]:
    """Score a diffusion pipeline on whole validation scenes; returns {"val/<metric>": mean}.

    Every trainer validates through this, so its numbers are computed exactly as `uldm evaluate` computes them:
    the pipeline is wrapped as a `PipelineReconstructor` (linear RGB in, its default ensemble and projection,
    noise from `seed`) and scored by `uldm.evaluation.evaluate` (RGB rendered with the pipeline's camera; MRAE,
    RMSE, PSNR, SAM, RGB error, seconds). A true-colour preview of the first scene, ground truth beside
    reconstruction, goes to any tensorboard tracker.
    """
    import numpy as np

    from .checkpoints import PipelineReconstructor
    from .data import read_scene
    from .evaluation import evaluate
    from .visualize import cube_to_srgb

    camera = pipeline.camera
    reconstructor = PipelineReconstructor(pipeline, steps=num_inference_steps, seed=seed)
    first: list[np.ndarray] = []

    def reconstruct(rgb: np.ndarray) -> np.ndarray:
        cube = reconstructor(rgb)
        if not first:
            first.append(cube)
        return cube

    result = evaluate(reconstruct, scenes, camera, format=data_format, seed=seed, progress=False)
    tensorboards = [tracker for tracker in trackers if tracker.name == "tensorboard"]
    if tensorboards and first:
        wavelengths = camera.grid.as_array()
        truth = read_scene(scenes[0], format=data_format, grid=camera.grid).cube
        preview = np.concatenate([cube_to_srgb(truth, wavelengths), cube_to_srgb(first[0], wavelengths)], axis=1)
        for tracker in tensorboards:
            tracker.writer.add_images("val/ground_truth|reconstruction", preview[None], step, dataformats="NHWC")
    return {f"val/{k}": v for k, v in result.mean.items()}


# -------------------------------------------------------------------------------------------------- loop
def train_loop(
    accelerator,
    config: TrainConfig,
    *,
    models: Sequence[torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    loader,
    dataset,
    sampler,
    start_step: int,
    loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    validate_fn: Optional[Callable[[int], dict[str, float]]] = None,
    ema: Optional[ModelEMA] = None,
    desc: str = "train",
) -> int:
    """The optimisation loop every stage shares; returns the last step.

    `loss_fn(batch) -> (loss, logs)` is the stage's only business. Around it: gradient accumulation and
    clipping, the `ema` update after each optimizer step, atomic checkpoints every
    `checkpointing_steps`, `validate_fn(step)` every `validation_steps`, tracker logging and a progress bar.
    `validate_fn` runs on every process (so it can call the collective `full_model`) and returns the main
    process's metrics ({} elsewhere).
    """
    output_dir = Path(config.output_dir)
    step = start_step
    params = [p for model in models for p in model.parameters() if p.requires_grad]
    progress = tqdm(total=config.max_train_steps, initial=step, desc=desc, disable=not accelerator.is_local_main_process)
    for _, batch in batches_from(loader, dataset, sampler, accelerator, step, config.gradient_accumulation_steps):
        if step >= config.max_train_steps:
            break
        with accelerator.accumulate(*models):
            loss, logs = loss_fn(batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        step += 1
        if ema is not None:
            ema.step()
        progress.update(1)
        logs = {"train/loss": loss.detach().item(), **logs, "lr": lr_scheduler.get_last_lr()[0]}
        progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
        if step % config.checkpointing_steps == 0 or step == config.max_train_steps:
            save_checkpoint(accelerator, output_dir, step, config.checkpoints_total_limit)
        if validate_fn is not None and (step % config.validation_steps == 0 or step == config.max_train_steps):
            metrics = validate_fn(step)  # on every process: gathering sharded weights is collective
            if accelerator.is_main_process:
                logs.update(metrics)
                tqdm.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            accelerator.wait_for_everyone()
        accelerator.log(logs, step=step)
    progress.close()
    return step


def stage_main(description: str, config_class: Type[ConfigT], train: Callable[[ConfigT, Optional[str]], Any],
               argv: Optional[Sequence[str]] = None) -> int:
    """The command line every stage script shares: --config/--set/--output_dir/--resume_from_checkpoint, then
    `train(config, resume_from)`; a config problem is printed (naming the file) with exit code 2."""
    import sys

    args = base_argument_parser(description).parse_args(argv)
    try:
        train(config_from_args(config_class, args), args.resume_from_checkpoint)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
