"""Run a stage trainer in this process (under `accelerate launch`) and dump this rank's final weights.

    accelerate launch --multi_gpu --num_processes 2 tests/helpers/train_and_dump.py CONFIG.yaml
writes <output_dir>/rank<i>.pt on every rank, so a test can check all ranks ended with identical weights.
"""

import sys
from pathlib import Path

import torch
from accelerate import PartialState

from uldm.stages.train_speuae import SpeUAEConfig, train
from uldm.training import load_config

config = load_config(SpeUAEConfig, Path(sys.argv[1]))
model = train(config)
state = PartialState()
torch.save(model.state_dict(), Path(config.output_dir) / f"rank{state.process_index}.pt")
print(f"rank {state.process_index}/{state.num_processes} {state.distributed_type}")
