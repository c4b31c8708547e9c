"""Latents precomputed to disk, so training epochs skip the encoders (SpeUAE, the SpaAE's encoder).

For each of `epochs` epochs of a seeded item stream, whatever `encode` makes of every item (stage 2: the code
latent's mean and spread, so training still samples it, and the RGB condition latent; RGB pre-training: the
photo's latent) is stored in one safetensors file per epoch. Training then reads epoch `e % epochs`: the same items
the live pipeline would produce for those epochs, recycled after.
A fingerprint of everything that shapes the latents (settings, scenes, the encoders' weights: `weights_digest`) is
stored with them; a cache made with other settings or other weights is rebuilt, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .io import save_json

Encoder = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]  # a batch of stacked items -> named latents


def epoch_file(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch}.safetensors"


def weights_digest(*modules: torch.nn.Module) -> str:
    """SHA-256 of the modules' weights (names, dtypes and bytes): latents are stale once their encoders change."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}:{tensor.dtype}".encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def cache_is_current(folder: Path, epochs: int, fingerprint: dict) -> bool:
    meta = folder / "fingerprint.json"
    as_stored = json.loads(json.dumps(fingerprint))  # tuples become lists, as they are in the file
    return (meta.exists() and json.loads(meta.read_text()) == as_stored
            and all(epoch_file(folder, e).exists() for e in range(epochs)))


def encoding_order(length: int, epoch: int) -> torch.Tensor:
    """The items of an epoch in a seeded random order. The dataset lists each scene's patches together; encoded in
    this order, a chunk holds patches of many scenes, so a batch augmentation that pairs patches (`mix_patches`)
    mixes materials across scenes, as it does on the live, shuffled batches."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(epoch))


@torch.no_grad()
def build_latent_cache(folder: Path, dataset, epochs: int, encode: Encoder, fingerprint: dict,
                       batch_size: int = 16, show_progress: bool = True) -> Path:
    """Write `epochs` files of `encode(batch)`'s tensors for every item of `dataset` (which has `set_epoch`); the
    batches `encode` gets are the items' tensors stacked (other values, such as scene names, as lists)."""
    folder = Path(folder)
    if cache_is_current(folder, epochs, fingerprint):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fingerprint.json").unlink(missing_ok=True)  # invalid until every epoch is rewritten
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        order = encoding_order(len(dataset), epoch)
        parts: dict[str, list[torch.Tensor]] = {}
        for chunk in tqdm(order.split(batch_size), desc=f"latent cache, epoch {epoch}", disable=not show_progress):
            items = [dataset[int(i)] for i in chunk]
            batch = {key: torch.stack([item[key] for item in items]) if isinstance(value, torch.Tensor)
                     else [item[key] for item in items] for key, value in items[0].items()}
            for key, value in encode(batch).items():
                parts.setdefault(key, []).append(value.float().cpu())
        by_item = torch.argsort(order)  # back to dataset order: row i is item i's latents
        tmp = folder / f".tmp-epoch-{epoch}.safetensors"
        save_file({k: torch.cat(v)[by_item].contiguous() for k, v in parts.items()}, str(tmp))
        tmp.replace(epoch_file(folder, epoch))
    save_json(fingerprint, folder / "fingerprint.json")  # atomically: the file marks the cache complete
    return folder


class LatentCacheDataset(Dataset):
    """Items (the named latents `encode` made) of epoch `epoch % epochs`; one epoch file in memory at a time."""

    def __init__(self, folder: Path, epochs: int) -> None:
        self.folder, self.epochs, self.epoch = Path(folder), epochs, 0
        self._loaded: tuple[int, dict[str, torch.Tensor]] = (-1, {})
        self._length = len(next(iter(self._tensors().values())))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _tensors(self) -> dict[str, torch.Tensor]:
        which = self.epoch % self.epochs
        if self._loaded[0] != which:
            self._loaded = (which, load_file(str(epoch_file(self.folder, which))))
        return self._loaded[1]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self._tensors().items()}
