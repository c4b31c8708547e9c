"""Training configs: the settings every run has, the spectral-data settings of the spectral stages, YAML loading.

A stage defines a config dataclass (subclassing `TrainConfig`, or `RunConfig` when it trains on something other than
spectral scenes), read from YAML with `--set key=value` overrides; unknown or missing keys name the file, and
values take their fields' types.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

import yaml

from ..camera import CameraResponse
from ..degradation import Degradation

ConfigT = TypeVar("ConfigT", bound="RunConfig")


class ConfigError(ValueError):
    """A training config that cannot work: unknown or missing keys, wrong values, data that do not match."""


@dataclass
class RunConfig:
    """Settings every training run has, whatever it trains on: batches, optimisation, precision, bookkeeping."""

    output_dir: str
    train_batch_size: int = 8
    dataloader_num_workers: int = 0
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
    mixed_precision: Optional[str] = None  # no / fp16 / bf16; None: what `accelerate launch` / `accelerate config` say
    allow_tf32: bool = False  # TF32 matmuls on Ampere+ GPUs (faster, less precise)
    seed: int = 0
    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = 3
    validation_steps: int = 500
    report_to: Optional[str] = "tensorboard"
    tracker_project_name: str = "uldm"

    def validate(self) -> None:
        """Cheap checks before anything heavy happens; stages extend this."""
        if self.mixed_precision is False:  # YAML 1.1 reads an unquoted `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                     "validation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be between 0 and 1, got {self.ema_decay}")


@dataclass
class TrainConfig(RunConfig):
    """A run on spectral scenes: which scenes, which camera renders their RGB, patches and batch augmentation.
    Stage configs add their model and loss fields."""

    data_root: Optional[str] = None  # default: ../shared/data/cave (or $ULDM_CAVE_ROOT)
    data_format: str = "cave"
    train_scenes: Any = "train"  # "train"/"val"/"all" (CAVE split), a list of names, or a split-file path
    val_scenes: Any = "val"
    camera: str = "nikon5100"  # preset name/alias or CSV path
    degradation: Optional[dict] = None  # {photons, bit_depth, jpeg_quality}
    patch_size: int = 64
    patches_per_scene: int = 16
    scene_cache_size: Optional[int] = 32
    # batch augmentation (uldm.data.augment): share of patches mixed with another; spread of spectral tilts;
    # spread of log exposure gains
    mix_probability: float = 0.0
    tilt_std: float = 0.0
    gain_std: float = 0.0

    @property
    def augments(self) -> bool:
        """Whether any batch augmentation (mix / tilt / gain) is on."""
        return bool(self.mix_probability or self.tilt_std or self.gain_std)

    def validate(self) -> None:
        super().validate()
        if self.patches_per_scene < 1:
            raise ConfigError(f"patches_per_scene must be at least 1, got {self.patches_per_scene}")
        if not 0 <= self.mix_probability <= 1:
            raise ConfigError(f"mix_probability must be between 0 and 1, got {self.mix_probability}")
        for name in ("tilt_std", "gain_std"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tilt_std and self.degradation:
            raise ConfigError("tilt_std re-renders clean RGB from the tilted spectra, which would drop the "
                              "degradation: use one or the other")
        self.camera_response()
        Degradation.from_config(self.degradation)

    def camera_response(self) -> CameraResponse:
        try:
            return CameraResponse.load(self.camera)
        except ValueError as exc:
            raise ConfigError(f"camera: {exc}") from exc


@dataclass
class PipelineConfig(TrainConfig):
    """A run on spectral scenes that ends in a complete pipeline (`publish_pipeline`), pushed to the model hub when
    `push_to_hub` (to `hub_model_id`, private with `hub_private`)."""

    push_to_hub: bool = False
    hub_model_id: Optional[str] = None
    hub_private: bool = False
    # the hub id of the pretrained weights the run started from, the model card's base_model (e.g. the TAESD3
    # weights of a SpaAE that local folders passed on); default: the starting point when that is a hub id
    base_model: Optional[str] = None

    def validate(self) -> None:
        super().validate()
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id (org/name)")
        if self.base_model is not None:
            from ..hub import looks_like_local_path

            if looks_like_local_path(self.base_model):
                raise ConfigError(f"base_model names a model hub id (org/name), not a folder: {self.base_model!r}")


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


# flags of diffusers' training examples that set a config key (`--gradient_checkpointing` where the stage has it)
KEY_FLAGS = {"output_dir": str, "seed": int, "mixed_precision": str, "report_to": str, "gradient_checkpointing": None,
             "allow_tf32": None}


def keys_help(cls: Optional[type]) -> str:
    """The config keys of `cls` with their defaults, for --help."""
    if cls is None:
        return ""
    lines = ["config keys (YAML, or --set key=value), with their defaults:"]
    for f in dataclasses.fields(cls):
        default = "required" if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        lines.append(f"  {f.name} = {default!r}")
    return "\n".join(lines)


def base_argument_parser(description: str, cls: Optional[type] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, epilog=keys_help(cls),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config (see stages/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set max_train_steps=100")
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder to continue from")
    known = {f.name for f in dataclasses.fields(cls)} if cls is not None else set(KEY_FLAGS)
    for key, kind in KEY_FLAGS.items():
        if key not in known:
            continue
        if kind is None:
            parser.add_argument(f"--{key}", action="store_true", default=None, help=f"shortcut for --set {key}=true")
        else:
            parser.add_argument(f"--{key}", type=kind, help=f"shortcut for --set {key}=...")
    return parser


def config_from_args(cls: Type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """The config of `--config`, then the `--set` overrides, then the flags given (the flags win)."""
    flags = [f"{key}={getattr(args, key)}" for key in KEY_FLAGS if getattr(args, key, None) is not None]
    return load_config(cls, args.config, list(args.overrides) + flags)




def config_dict(config: TrainConfig) -> dict[str, Any]:
    """Flat, tracker-friendly copy of a config (lists and dicts as strings)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in dataclasses.asdict(config).items()}

