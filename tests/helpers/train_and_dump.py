"""Run a stage trainer in this process (under `accelerate launch`) and dump this rank's final weights.

    accelerate launch --multi_gpu --num_processes 2 tests/helpers/train_and_dump.py {speuae|uldm} CONFIG.yaml [RESUME]
(RESUME: a --resume_from_checkpoint value such as "latest") writes <output_dir>/rank<i>.pt on every rank, so a test can check all ranks ended with identical weights.
"""

import sys
from pathlib import Path

import torch
from accelerate import PartialState

from uldm.training import load_config

stage, config_path = sys.argv[1], Path(sys.argv[2])
resume_from = sys.argv[3] if len(sys.argv) > 3 else None
if stage == "speuae":
    from uldm.stages.train_speuae import SpeUAEConfig as Config, train
else:
    from uldm.stages.train_uldm import ULDMConfig as Config, train

config = load_config(Config, config_path)
result = train(config, resume_from)
weights = result.state_dict() if stage == "speuae" else result.unet.state_dict()
state = PartialState()
torch.save(weights, Path(config.output_dir) / f"rank{state.process_index}.pt")
print(f"rank {state.process_index}/{state.num_processes} {state.distributed_type}")
