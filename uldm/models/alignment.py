"""Give loaded weights fresh, 64-byte-aligned storage, so results depend on the values alone.

Weights memory-mapped from safetensors sit at arbitrary byte offsets, and CPU matrix kernels round differently
for differently aligned operands: a model and its saved-then-reloaded copy disagreed by ~1e-7 although every
weight was equal. PyTorch's own allocations are 64-byte aligned; copying into them once at load time makes a
save/load round trip bit-exact (at the cost of one copy of the weights while loading).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def realign_weights(*modules: nn.Module) -> None:
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()
