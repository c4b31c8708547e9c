"""The trained weights: atomic saves, gathering sharded models, and the exponential moving average."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..io import atomic_folder
from .config import ConfigError, PipelineConfig, RunConfig


def save_pretrained_atomic(model, path: Path) -> Path:
    """`save_pretrained` into a temporary sibling folder, then swap it in: readers never see half a model."""
    with atomic_folder(path) as tmp:
        model.save_pretrained(str(tmp))
    return Path(path)


def publish_pipeline(accelerator, config: PipelineConfig, pipeline, write_card: Callable[[Path], object]) -> Optional[Path]:
    """On the main process: the trained pipeline saved atomically to <output_dir>/pipeline, its model card written
    by `write_card(folder)`, and pushed to the hub when the config says `push_to_hub` (with `hub_model_id`,
    `hub_private`). Returns the folder (None on the other processes)."""
    if not accelerator.is_main_process:
        return None
    folder = save_pretrained_atomic(pipeline, Path(config.output_dir) / "pipeline")
    write_card(folder)
    accelerator.print(f"saved {folder}")
    if config.push_to_hub:
        from ..hub import push_folder

        accelerator.print(f"pushed: {push_folder(folder, config.hub_model_id, private=config.hub_private)}")
    return folder


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

    Averaging damps the step-to-step noise of small-batch training. Checkpoints hold it as the diffusers training
    examples do: a model folder `<name>_ema/` (`save_pretrained` of the averaged weights, float32, plus the
    average's own state in `ema_state.json`), so `UNet2DConditionModel.from_pretrained(checkpoint,
    subfolder="unet_ema")` loads it; `build_ema` registers the save and load hooks, and a resumed run continues it.
    """

    STATE_FILE = "ema_state.json"

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

    def averaged_model(self, template: torch.nn.Module) -> torch.nn.Module:
        """A new float32 model of `template`'s class and config holding the averaged weights."""
        model = type(template).from_config(template.config).float()
        self.average.copy_to(model.parameters())
        return model

    def save_pretrained(self, folder: Path, template: torch.nn.Module) -> None:
        """The averaged weights as a model folder (`template`: the unwrapped trained model), and the average's
        state (step count, decay) beside them."""
        import json

        self.averaged_model(template).save_pretrained(str(folder))
        state = {k: v for k, v in self.average.state_dict().items() if k != "shadow_params"}
        (Path(folder) / self.STATE_FILE).write_text(json.dumps(state, indent=2, default=float))

    def load_pretrained(self, folder: Path, template: torch.nn.Module) -> None:
        """Continue the average saved by `save_pretrained`."""
        import json

        loaded = type(template).from_pretrained(str(folder)).float()
        state = {**self.average.state_dict(), **json.loads((Path(folder) / self.STATE_FILE).read_text()),
                 "shadow_params": [p.detach().clone() for p in loaded.parameters()]}
        self.average.load_state_dict(state)
        self.average.to(self.device)


def build_ema(accelerator, config: RunConfig, trained: torch.nn.Module, name: str) -> Optional[ModelEMA]:
    """The ModelEMA of `trained` (the prepared model) when `config.use_ema`, saved in every checkpoint as
    `<name>_ema/` and restored on resume (accelerate's save / load state hooks); else None.

    Call it after `accelerator.prepare` and before `resume`, so a resumed run continues its average.
    """
    from accelerate.utils import DistributedType

    if not config.use_ema:
        return None
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("use_ema is not supported under FSDP (each process holds a shard of the model); "
                          "use DDP or DeepSpeed ZeRO-2, or set use_ema: false")
    ema = ModelEMA(trained, config.ema_decay, accelerator.device)
    folder = f"{name}_ema"

    def save_hook(models, weights, output_dir) -> None:
        if accelerator.is_main_process:
            ema.save_pretrained(Path(output_dir) / folder, accelerator.unwrap_model(trained))

    def load_hook(models, input_dir) -> None:
        ema.load_pretrained(Path(input_dir) / folder, accelerator.unwrap_model(trained))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
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


