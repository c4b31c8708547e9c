"""diffusers' generic entry point, `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`, loads every
uldm pipeline family from a local folder and from a hub repo, and gives exactly what uldm's own loader gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from uldm import CameraResponse, MSTPlusPlusPipeline, R2HDiffPipeline, SpectralReconstructionPipeline
from uldm.pipelines.remote_code import ENTRY_MODULE

RGB = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_r2hdiff() -> R2HDiffPipeline:
    from uldm.models.r2hdiff import R2HDiffNet, make_r2hdiff_scheduler

    torch.manual_seed(0)
    net = R2HDiffNet(block_channels=[8, 16], rgb_feature_channels=[4, 8], layers_per_level=[1, 1],
                     attention_heads=[1, 2], time_embed_dim=16).eval()
    return R2HDiffPipeline.for_camera(net, make_r2hdiff_scheduler(), CameraResponse.from_preset("nikon5100"))


def tiny_mstpp() -> MSTPlusPlusPipeline:
    from uldm.models.mstpp import MSTPlusPlus

    torch.manual_seed(0)
    return MSTPlusPlusPipeline.for_camera(MSTPlusPlus(channels=31, stages=1).eval(),
                                          CameraResponse.from_preset("nikon5100"))


@pytest.fixture(params=["uldm", "r2hdiff", "mstpp"])
def saved(request, tmp_path, tiny_pipeline):
    """(pipeline class, a folder saved by that family's save_pretrained)."""
    pipeline = {"uldm": lambda: tiny_pipeline, "r2hdiff": tiny_r2hdiff, "mstpp": tiny_mstpp}[request.param]()
    folder = tmp_path / request.param
    pipeline.save_pretrained(folder)
    return type(pipeline), folder


def spectra(pipeline) -> np.ndarray:
    return pipeline(RGB, input_space="linear", generator=torch.Generator().manual_seed(0),
                    show_progress_bar=False).spectra


def test_a_saved_folder_names_its_class_through_a_file_that_only_imports_uldm(saved):
    pipeline_class, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == [ENTRY_MODULE, pipeline_class.__name__]
    entry = (folder / f"{ENTRY_MODULE}.py").read_text()
    assert f"from {pipeline_class.__module__} import {pipeline_class.__name__}" in entry
    for component, value in index.items():
        if isinstance(value, list) and str(value[0]).startswith("uldm."):
            assert (folder / component / f"{value[0]}.py").is_file(), component


def test_generic_loader_on_a_local_folder_matches_uldms_own(saved):
    pipeline_class, folder = saved
    generic = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    own = pipeline_class.from_pretrained(folder)
    assert type(generic) is pipeline_class and type(own) is pipeline_class
    np.testing.assert_array_equal(spectra(generic), spectra(own))


def test_generic_loader_asks_for_trust_remote_code(saved):
    _, folder = saved
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder)


def test_uldms_loader_does_not_run_a_code_file_it_did_not_write(saved):
    pipeline_class, folder = saved
    entry = folder / f"{ENTRY_MODULE}.py"
    entry.write_text(entry.read_text() + "raise SystemExit('ran foreign code')\n")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline_class.from_pretrained(folder)


def test_folders_saved_before_the_code_files_still_load(tiny_pipeline, tmp_path):
    folder = tmp_path / "old"
    tiny_pipeline.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "SpectralReconstructionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    for path in list(folder.glob("*.py")) + list(folder.glob("*/*.py")):
        path.unlink()
    np.testing.assert_array_equal(spectra(SpectralReconstructionPipeline.from_pretrained(folder)), spectra(tiny_pipeline))


@pytest.mark.parametrize("make", [lambda p: p, lambda p: tiny_r2hdiff()], ids=["uldm", "r2hdiff"])
def test_generic_loader_on_a_hub_repo_matches_uldms_own(make, tiny_pipeline, hub_server):
    pipeline = make(tiny_pipeline)
    repo = f"testorg/generic-{type(pipeline).__name__.lower()}"
    pipeline.push_to_hub(repo)
    generic = DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)
    own = type(pipeline).from_pretrained(repo)
    assert type(generic) is type(pipeline)
    np.testing.assert_array_equal(spectra(generic), spectra(own))
    np.testing.assert_array_equal(spectra(generic), spectra(pipeline))


def test_save_pretrained_with_push_to_hub_uploads_uldms_card(tiny_pipeline, tmp_path, hub_server):
    from huggingface_hub import HfApi, ModelCard

    tiny_pipeline.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="testorg/pushed-by-save")
    files = {s.rfilename for s in HfApi().model_info("testorg/pushed-by-save").siblings}
    assert {"model_index.json", "README.md", f"{ENTRY_MODULE}.py"} <= files
    card = ModelCard.load("testorg/pushed-by-save")
    assert card.data.library_name == "uldm"
    assert "SpectralReconstructionPipeline.from_pretrained" in card.text
