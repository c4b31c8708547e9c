"""Model cards carry what the hub shows (base_model, datasets, pipeline_tag, a model-index with the metrics): the
shipped ones, the trainers', and those of pipelines pushed again after `from_pretrained`."""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from uldm import SpectralReconstructionPipeline
from uldm.hub import card_metadata, metric_type, read_model_card, write_model_card
from uldm.training.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
EVALUATION = {"dataset": "CAVE val scenes", "dataset_type": "cave", "split": "validation",
              "metrics": {"val PSNR (dB)": 30.5, "val SAM (deg)": 12.25}}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------------- shipped
@pytest.mark.parametrize("name,base_model", [("uldm-cave", "madebyollin/taesd3"), ("r2hdiff-cave", None),
                                             ("mstpp-cave", None)])
def test_every_shipped_card_carries_the_hubs_metadata_and_the_metrics_it_states(name, base_model):
    card = ModelCard.load(REPO / "checkpoints" / name / "README.md")
    assert card.data.pipeline_tag == "image-to-image" and card.data.library_name == "uldm"
    assert card.data.datasets == ["cave"] and card.data.base_model == base_model
    if base_model is None:
        assert "from scratch" in card.text  # no pretrained weights to name
    results = card.data.eval_results
    assert results and {(r.task_type, r.dataset_type, r.dataset_split) for r in results} == {
        ("image-to-image", "cave", "validation")}
    stated = card.data.uldm["metrics"]  # the model-index repeats the card's own figures, nothing else
    assert {r.metric_name: r.metric_value for r in results}.items() <= stated.items()
    assert {"psnr", "sam", "mrae"} <= {r.metric_type for r in results}


def test_the_uldm_ship_script_names_taesd3_as_the_base_of_the_pretrained_arms():
    ship = load_script("ship_uldm_cave")
    ablation = json.loads((REPO / "benchmarks" / "results" / "pretraining_ablation.json").read_text())
    shipped = card_metadata(read_model_card(REPO / "checkpoints" / "uldm-cave"))
    made = ship.card_metadata("c", ablation, shipped["metrics"])
    assert made == {key: shipped[key] for key in ("base_model", "datasets", "evaluation")}
    assert ship.card_metadata("a", ablation, {})["base_model"] is None  # nothing pretrained


def test_metric_types_are_the_standard_ids_the_names_contain():
    assert [metric_type(n) for n in ("val PSNR (dB)", "SAM", "val MRAE, rgb_consistent", "max RGB error")] == [
        "psnr", "sam", "mrae", "max-rgb-error"]


def test_updating_an_old_card_adds_what_it_lacks_and_keeps_its_text(tmp_path):
    (tmp_path / "README.md").write_text("---\nlibrary_name: uldm\nlicense: apache-2.0\nuldm:\n  metrics:\n"
                                        "    val PSNR (dB): 30.5\n    parameters: 1000\n---\n\n"
                                        "# Old model\n\nIts text.\n")
    update = load_script("update_card")
    assert update.main([str(tmp_path), "--dataset", "cave", "--eval-dataset", "CAVE val", "--metric",
                        "val PSNR (dB)"]) == 0
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "image-to-image" and card.data.datasets == ["cave"]
    assert [(r.metric_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("val PSNR (dB)", "psnr", 30.5)]
    assert card.data.model_name == "Old model" and card.text.strip() == "# Old model\n\nIts text."
    with pytest.raises(SystemExit):
        update.main([str(tmp_path), "--dataset", "cave", "--eval-dataset", "CAVE val", "--metric", "SSIM"])


# ---------------------------------------------------------------------------------------- load, push
@pytest.mark.usefixtures("single_thread")
def test_a_pipeline_loaded_and_pushed_again_keeps_its_card(tiny_pipeline, hub_server, tmp_path):
    tiny_pipeline.push_to_hub("testorg/first", metrics=EVALUATION["metrics"], evaluation=EVALUATION,
                              base_model="madebyollin/taesd3", datasets=["cave"])
    first = ModelCard.load("testorg/first")
    assert first.data.base_model == "madebyollin/taesd3" and first.data.datasets == ["cave"]
    assert {r.metric_name: r.metric_value for r in first.data.eval_results} == EVALUATION["metrics"]

    loaded = SpectralReconstructionPipeline.from_pretrained("testorg/first", cache_dir=str(tmp_path / "cache"))
    loaded.push_to_hub("testorg/again")
    assert str(ModelCard.load("testorg/again")) == str(first)
    loaded.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").read_text() == str(first)

    loaded.push_to_hub("testorg/described", description="The same weights, described anew.")
    described = ModelCard.load("testorg/described")
    assert "described anew" in described.text and described.data.base_model == "madebyollin/taesd3"
    assert described.data.datasets == ["cave"] and described.data.eval_results == first.data.eval_results

    loaded.push_to_hub("testorg/rescored", metrics={"val PSNR (dB)": 31.0})
    rescored = ModelCard.load("testorg/rescored")
    assert rescored.data.uldm["metrics"] == {"val PSNR (dB)": 31.0} and rescored.data.base_model == "madebyollin/taesd3"
    assert rescored.data.eval_results is None  # the old model-index would state other figures than the table


def test_a_card_without_front_matter_reads_as_no_metadata(tmp_path):
    assert card_metadata(None) == {} and card_metadata("# Only a title\n") == {}
    write_model_card(tmp_path, title="T", description="D", base_model="madebyollin/taesd3", evaluation=EVALUATION)
    assert card_metadata(read_model_card(tmp_path))["evaluation"] == EVALUATION


# ------------------------------------------------------------------------------------------- trainers
def mstpp_config(tmp_path: Path, data_root: Path, **overrides) -> Path:
    values = {"output_dir": str(tmp_path / "run"), "data_root": str(data_root), "train_scenes": ["balloons_ms"],
              "val_scenes": ["watercolors_ms"], "patch_size": 8, "patches_per_scene": 2, "train_batch_size": 2,
              "max_train_steps": 2, "checkpointing_steps": 2, "validation_steps": 2, "stages": 1, "levels": 1,
              "blocks": [1, 1], "report_to": None, **overrides}
    path = tmp_path / "mstpp.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.usefixtures("single_thread")
def test_a_trainers_card_names_the_configs_base_model_and_its_budget_has_iso_times(tmp_path, tiny_cave_root):
    from uldm.stages.train_mstpp import MSTPPConfig, train

    config = load_config(MSTPPConfig, mstpp_config(tmp_path, tiny_cave_root, base_model="someorg/pretrained"))
    train(config)
    card = ModelCard.load(tmp_path / "run" / "pipeline" / "README.md")
    assert card.data.base_model == "someorg/pretrained" and card.data.datasets == ["cave"]
    assert card.data.pipeline_tag == "image-to-image" and card.data.eval_results[0].metric_type == "psnr"
    (entry,) = json.loads((tmp_path / "run" / "logs" / "run_summary.json").read_text())
    started, ended = datetime.fromisoformat(entry["started"]), datetime.fromisoformat(entry["ended"])
    assert started.utcoffset().total_seconds() == 0 and started <= ended
    with pytest.raises(ConfigError, match="base_model names a model hub id"):
        load_config(MSTPPConfig, mstpp_config(tmp_path, tiny_cave_root, base_model="./runs/local"))
