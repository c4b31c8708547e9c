"""Every config shipped in stages/configs loads and validates with its stage's config class."""

from __future__ import annotations

import pytest
from conftest import REPO

from uldm.training import load_config

CONFIGS = sorted((REPO / "stages" / "configs").glob("*.yaml"))


def config_class(name: str):
    from uldm.stages.pretrain_rgb import RGBPretrainConfig
    from uldm.stages.pretrain_spaae import SpaAEConfig
    from uldm.stages.train_r2hdiff import R2HDiffConfig
    from uldm.stages.train_speuae import SpeUAEConfig
    from uldm.stages.train_uldm import ULDMConfig

    prefixes = {"speuae_": SpeUAEConfig, "spaae_": SpaAEConfig, "uldm_": ULDMConfig, "r2hdiff_": R2HDiffConfig,
                "rgb_pretrain_": RGBPretrainConfig}
    matches = [cls for prefix, cls in prefixes.items() if name.startswith(prefix)]
    assert len(matches) == 1, f"{name}: no stage owns this config name"
    return matches[0]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid(path):
    config = load_config(config_class(path.name), path)
    assert config.output_dir.startswith("runs/")
    assert path.read_text().startswith("#")  # a header saying what it is for and how to run it


def test_the_configs_cover_every_stage():
    assert {config_class(p.name).__name__ for p in CONFIGS} == {
        "SpeUAEConfig", "SpaAEConfig", "ULDMConfig", "R2HDiffConfig", "RGBPretrainConfig"}
