"""Every config shipped in stages/configs loads and validates with its stage's config class."""

from __future__ import annotations

import pytest
from conftest import REPO

from uldm.training import load_config

CONFIGS = sorted((REPO / "stages" / "configs").glob("*.yaml"))


def config_class(name: str):
    from uldm.stages.pretrain_rgb import RGBPretrainConfig
    from uldm.stages.pretrain_spaae import SpaAEConfig
    from uldm.stages.train_mstpp import MSTPPConfig
    from uldm.stages.train_r2hdiff import R2HDiffConfig
    from uldm.stages.train_speuae import SpeUAEConfig
    from uldm.stages.train_uldm import ULDMConfig

    prefixes = {"speuae_": SpeUAEConfig, "spaae_": SpaAEConfig, "uldm_": ULDMConfig, "r2hdiff_": R2HDiffConfig,
                "rgb_pretrain_": RGBPretrainConfig, "mstpp_": MSTPPConfig}
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
        "SpeUAEConfig", "SpaAEConfig", "ULDMConfig", "R2HDiffConfig", "RGBPretrainConfig", "MSTPPConfig"}


def test_accelerates_mixed_precision_wins_unless_the_config_sets_it(tmp_path, monkeypatch):
    from uldm.stages.train_speuae import SpeUAEConfig
    from uldm.training import build_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    unset = load_config(SpeUAEConfig, None, [f"output_dir={tmp_path}", "report_to=null"])
    assert unset.mixed_precision is None and build_accelerator(unset).mixed_precision == "bf16"
    explicit = load_config(SpeUAEConfig, None, [f"output_dir={tmp_path}", "report_to=null", "mixed_precision=no"])
    assert build_accelerator(explicit).mixed_precision == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert build_accelerator(unset).mixed_precision == "no"


def test_diffusers_example_flags_set_config_keys_and_help_lists_every_key(tmp_path, capsys):
    from uldm.stages.train_speuae import SpeUAEConfig
    from uldm.stages.train_uldm import ULDMConfig
    from uldm.training import base_argument_parser, config_from_args

    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {tmp_path}\nspeuae_path: s\npretrained_model_name_or_path: p\nseed: 3\n")
    parser = base_argument_parser("stage 2", ULDMConfig)
    args = parser.parse_args(["--config", str(path), "--seed", "7", "--mixed_precision", "bf16", "--report_to", "none",
                              "--gradient_checkpointing", "--allow_tf32", "--output_dir", str(tmp_path / "o")])
    config = config_from_args(ULDMConfig, args)
    assert (config.seed, config.mixed_precision, config.report_to) == (7, "bf16", "none")
    assert config.gradient_checkpointing and config.allow_tf32 and config.output_dir == str(tmp_path / "o")
    with pytest.raises(SystemExit):  # stage 1 has no gradient checkpointing: not a flag there
        base_argument_parser("stage 1", SpeUAEConfig).parse_args(["--gradient_checkpointing"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "code_prior_degree = 2" in text and "pretrained_model_name_or_path = None" in text
