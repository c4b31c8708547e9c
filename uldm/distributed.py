"""The processes of a command started with `accelerate launch`: which one this is, and gathering their results.

Outside `accelerate launch` there is one process and nothing to gather. On a machine without a GPU the processes
form a gloo group (`accelerate launch --multi_gpu --num_processes N` there runs N CPU processes).
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def process_state():
    """accelerate's PartialState: `process_index`, `num_processes`, `is_main_process`, `device`."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def gather_lists(items: list[T]) -> list[T]:
    """Every process's items, concatenated in process order, on every process (a collective: call it on all)."""
    state = process_state()
    if state.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return list(gather_object(list(items)))


__all__ = ["gather_lists", "process_state"]
