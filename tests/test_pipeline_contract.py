"""diffusers' pipeline contract: the checks of its PipelineTesterMixin that apply, for all three pipelines.

Each check runs on the ULDM, R2H-Diff and MST++ pipelines built from tiny components: the call signature and
components; save/load (safetensors, variants, pickles only on request, an absent optional component); dtype
moves; dict = tuple output; a batch = its images one at a time (a list of 1 x 3 x H x W tensors too);
`num_images_per_prompt`; step callbacks, `num_timesteps` and `interrupt`; given latents; output types ("np",
"pt", "pil", "latent"); the same image in any form; schedulers that cannot sample the model refused up front.
"""

from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Optional

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from test_mstpp import tiny_net
from test_r2hdiff_pipeline import tiny_network
from uldm import CameraResponse, MSTPlusPlusPipeline, R2HDiffPipeline, SpectralReconstructionPipeline
from uldm.models.r2hdiff import make_r2hdiff_scheduler
from uldm.pipelines.common import SCHEDULER_PREDICTION_TYPES, SpectralReconstructionOutput
from uldm.visualize import cube_to_srgb

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 16  # a multiple of every tiny pipeline's latent grid: no padding
CALL_PARAMETERS = {"num_inference_steps", "num_images_per_prompt", "generator", "latents", "output_type",
                   "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
COMPONENTS = {"uldm": {"unet", "vae", "scheduler", "speuae", "prompt_embedding", "code_prior"},
              "r2hdiff": {"net", "scheduler"}, "mstpp": {"net"}}


@dataclass
class Case:
    """One pipeline under test; `network` is the module that does its work (its calls are counted)."""

    name: str
    pipe: Any
    network: Optional[torch.nn.Module] = None

    @property
    def generative(self) -> bool:
        return self.name != "mstpp"

    @property
    def latent_shape(self) -> tuple:
        """What `output_type="latent"` returns for one SIZE x SIZE image and one member."""
        if self.name == "uldm":
            side = SIZE // self.pipe.vae_scale_factor
            return (1, self.pipe.unet.config.out_channels, side, side)
        return (1, 31, SIZE, SIZE)

    def __call__(self, image, seed: int = 0, **overrides):
        """A run on linear RGB with a seeded generator, 2 denoising steps for the diffusion pipelines."""
        kwargs = {"input_space": "linear", "show_progress_bar": False, "generator": torch.Generator().manual_seed(seed)}
        if self.generative:
            kwargs["num_inference_steps"] = 2
        return self.pipe(image, **{**kwargs, **overrides})

    def reloaded(self, pipe) -> "Case":
        return Case(self.name, pipe)


def build_case(name: str, request) -> Case:
    if name == "uldm":
        pipe = request.getfixturevalue("tiny_pipeline")
        return Case(name, pipe, pipe.unet)
    camera = CameraResponse.from_preset("nikon5100")
    if name == "r2hdiff":
        pipe = R2HDiffPipeline.for_camera(tiny_network(), make_r2hdiff_scheduler(), camera)
    else:
        pipe = MSTPlusPlusPipeline.for_camera(tiny_net(), camera)
    return Case(name, pipe, pipe.net)


@pytest.fixture(params=["uldm", "r2hdiff", "mstpp"])
def case(request) -> Case:
    return build_case(request.param, request)


@pytest.fixture(params=["uldm", "r2hdiff"])
def diffusion_case(request) -> Case:
    return build_case(request.param, request)


@pytest.fixture
def mstpp_case(request) -> Case:
    return build_case("mstpp", request)


def image(variant: int = 0) -> np.ndarray:
    """A smooth SIZE x SIZE x 3 linear RGB image of mid colours (in the Nikon's gamut); variants differ."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([0.2 + 0.5 * yy, 0.3 + 0.4 * xx, 0.6 - 0.3 * yy], axis=-1).astype(np.float32)
    return np.ascontiguousarray(np.rot90(rgb, variant)) * (1 - 0.2 * variant)


def as_batch_of_one(rgb: np.ndarray) -> torch.Tensor:
    """An H x W x 3 image as diffusers' tests pass one: a 1 x 3 x H x W tensor."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]


def members(case: Case, count: int) -> dict:
    """`ensemble_size=count` for the diffusion pipelines; nothing for MST++ (one answer only)."""
    return {"ensemble_size": count} if case.generative else {}


@contextmanager
def counted_calls(module: torch.nn.Module):
    calls = []
    handle = module.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def weight_files(folder) -> list[str]:
    suffixes = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in suffixes)


# ------------------------------------------------------------------------------------------- signature
def test_the_call_takes_diffusers_arguments_and_lists_its_components(case):
    parameters = inspect.signature(type(case.pipe).__call__).parameters
    assert parameters["image"].default is inspect.Parameter.empty
    optional = {name for name, parameter in parameters.items() if parameter.default is not inspect.Parameter.empty}
    assert CALL_PARAMETERS <= optional, CALL_PARAMETERS - optional
    assert case.pipe._callback_tensor_inputs == ["latents"]
    assert case.pipe.num_timesteps == 0 and case.pipe.interrupt is False  # before any call
    assert set(case.pipe.components) == COMPONENTS[case.name]


# -------------------------------------------------------------------------------------------- save/load
def test_save_and_load_give_identical_outputs_from_safetensors_and_variants(case, tmp_path):
    expected = case(image()).spectra
    case.pipe.save_pretrained(tmp_path / "plain")
    case.pipe.save_pretrained(tmp_path / "variant", variant="fp16")
    plain, variant = weight_files(tmp_path / "plain"), weight_files(tmp_path / "variant")
    assert plain and all(name.endswith(".safetensors") for name in plain), plain  # no pickles by default
    assert all(name.endswith(".fp16.safetensors") for name in variant), variant
    assert [name.replace(".fp16.", ".") for name in variant] == plain
    loaded = (type(case.pipe).from_pretrained(tmp_path / "plain"),
              type(case.pipe).from_pretrained(tmp_path / "variant", variant="fp16"))
    for pipe in loaded:
        np.testing.assert_array_equal(case.reloaded(pipe)(image()).spectra, expected)


def test_pickled_weights_only_on_request_and_they_load_the_same(case, tmp_path):
    case.pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    files = weight_files(tmp_path / "pickled")
    assert files and all(name.endswith(".bin") for name in files), files
    loaded = type(case.pipe).from_pretrained(tmp_path / "pickled")
    np.testing.assert_array_equal(case.reloaded(loaded)(image()).spectra, case(image()).spectra)


def test_an_absent_optional_component_stays_absent(tiny_pipeline, tmp_path):
    assert tiny_pipeline._optional_components == ["code_prior"] and tiny_pipeline.code_prior is None
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["code_prior"] == [None, None]
    assert not (tmp_path / "pipe" / "code_prior").exists()
    assert SpectralReconstructionPipeline.from_pretrained(tmp_path / "pipe").code_prior is None


def test_to_dtype_moves_every_module_and_matches_loading_in_that_dtype(case, tmp_path):
    case.pipe.save_pretrained(tmp_path / "pipe")
    modules = [c for c in case.pipe.components.values() if isinstance(c, torch.nn.Module)]
    assert modules and {m.dtype for m in modules} == {torch.float32}
    case.pipe.to(dtype=torch.bfloat16)
    assert {m.dtype for m in modules} == {torch.bfloat16}
    moved = case(image())
    assert moved.spectra.dtype == np.float32 and np.isfinite(moved.spectra).all()
    loaded = type(case.pipe).from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16)
    np.testing.assert_array_equal(case.reloaded(loaded)(image()).spectra, moved.spectra)


# ----------------------------------------------------------------------------------------------- outputs
def test_the_tuple_holds_the_dicts_fields_in_order(case):
    as_dict, as_tuple = case(image(), **members(case, 2)), case(image(), return_dict=False, **members(case, 2))
    names = [field.name for field in fields(SpectralReconstructionOutput)]
    assert len(as_tuple) == len(names)
    for name, value in zip(names, as_tuple):
        expected = getattr(as_dict, name)
        if expected is None:
            assert value is None, name
        else:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=name)
    np.testing.assert_array_equal(as_dict[0], as_tuple[0])  # diffusers' own check: the first output


def test_output_types_np_pt_pil_and_latent(case):
    as_np, as_pt, as_pil = (case(image(), output_type=kind) for kind in ("np", "pt", "pil"))
    np.testing.assert_array_equal(as_pt.spectra.permute(0, 2, 3, 1).numpy(), as_np.spectra)
    np.testing.assert_array_equal(as_pil.spectra, as_np.spectra)  # "pil" keeps the spectra, in the "np" layout
    assert as_np.images is None and as_np.latents is None and len(as_pil.images) == 1
    picture = as_pil.images[0]
    assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == (SIZE, SIZE)
    np.testing.assert_array_equal(np.asarray(picture), cube_to_srgb(as_np.spectra[0], as_np.wavelengths))
    latent = case(image(), output_type="latent")
    assert isinstance(latent.latents, torch.Tensor) and tuple(latent.latents.shape) == case.latent_shape
    assert latent.spectra is None and latent.uncertainty is None and latent.rgb_error is None
    np.testing.assert_array_equal(latent.wavelengths, as_np.wavelengths)
    with pytest.raises(ValueError, match="output_type must be one of"):
        case(image(), output_type="pillow")


# ----------------------------------------------------------------------------------------------- batches
def test_a_batch_equals_its_images_one_at_a_time(case):
    """diffusers' batch checks: a list of 1 x 3 x H x W tensors with one generator each, and the same as one
    4-D tensor, give what each image gives alone with its generator."""
    images = [as_batch_of_one(image(0)), as_batch_of_one(image(1))]
    generators = lambda: [torch.Generator().manual_seed(seed) for seed in (0, 1)]  # noqa: E731
    listed = case(images, generator=generators(), batch_size=2, **members(case, 2))
    stacked = case(torch.cat(images), generator=generators(), batch_size=2, **members(case, 2))
    assert listed.spectra.shape == (2, SIZE, SIZE, 31)
    np.testing.assert_allclose(stacked.spectra, listed.spectra, rtol=0, atol=1e-6)
    for index, single_image in enumerate(images):
        single = case(single_image, seed=index, **members(case, 2))
        np.testing.assert_allclose(listed.spectra[index], single.spectra[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(listed.uncertainty[index], single.uncertainty[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_images", [1, 2])
def test_num_images_per_prompt_gives_k_outputs_per_image(case, num_images):
    images = [as_batch_of_one(image(index)) for index in range(num_images)]
    out = case(images, num_images_per_prompt=2, output_type="pil", **members(case, 2))
    count = 2 * num_images
    assert out.spectra.shape == (count, SIZE, SIZE, 31) and out.uncertainty.shape == out.spectra.shape
    assert len(out.images) == count and out.rgb_error.shape == (count,) and out.out_of_gamut.shape[0] == count
    assert case(images, num_images_per_prompt=2, output_type="latent").latents.shape[0] == count
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        case(images, num_images_per_prompt=0)


def test_samples_are_independent_ensembles_one_generator_each_as_diffusers_takes_them(diffusion_case):
    """k samples = k ensembles of E members: sample j of a call with one generator per sample is the k = 1 answer
    of generator j (mean and spread); with one generator per image, the samples differ from each other."""
    seeds = (5, 6, 7)
    out = diffusion_case(image(), ensemble_size=2, num_images_per_prompt=3,
                         generator=[torch.Generator().manual_seed(seed) for seed in seeds])
    for index, seed in enumerate(seeds):
        alone = diffusion_case(image(), seed=seed, ensemble_size=2)
        np.testing.assert_allclose(out.spectra[index], alone.spectra[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(out.uncertainty[index], alone.uncertainty[0], rtol=0, atol=1e-5)
    shared = diffusion_case(image(), ensemble_size=2, num_images_per_prompt=3).spectra
    assert all(not np.allclose(shared[i], shared[j], atol=1e-4) for i, j in ((0, 1), (0, 2), (1, 2)))
    with pytest.raises(ValueError, match="pass 1 .one per image. or 3 .one per sample."):
        diffusion_case(image(), num_images_per_prompt=3, generator=[torch.Generator(), torch.Generator()])


def test_the_regression_pipeline_repeats_its_one_answer(mstpp_case):
    alone = mstpp_case(image()).spectra
    repeated = mstpp_case(image(), num_images_per_prompt=3).spectra
    for sample in repeated:
        np.testing.assert_array_equal(sample, alone[0])


# --------------------------------------------------------------------------------------------- callbacks
def test_step_callbacks_get_the_tensors_asked_for_at_every_step(case):
    """diffusers' test_callback_inputs: a subset, then all of `_callback_tensor_inputs`, none; handing back what
    they got changes nothing."""
    calls = []

    def subset(pipe, index, timestep, tensors):
        assert set(tensors) <= set(pipe._callback_tensor_inputs)
        calls.append(index)
        return tensors

    def every(pipe, index, timestep, tensors):
        assert set(tensors) == set(pipe._callback_tensor_inputs)
        return tensors

    baseline = case(image()).spectra
    with_subset = case(image(), callback_on_step_end=subset, callback_on_step_end_tensor_inputs=["latents"])
    assert case.pipe.num_timesteps == (2 if case.generative else 1)
    assert calls == list(range(case.pipe.num_timesteps))
    with_every = case(image(), callback_on_step_end=every,
                      callback_on_step_end_tensor_inputs=case.pipe._callback_tensor_inputs)
    handed = []
    with_none = case(image(), callback_on_step_end=lambda pipe, i, t, tensors: handed.append(dict(tensors)),
                     callback_on_step_end_tensor_inputs=[])
    assert handed and all(tensors == {} for tensors in handed)
    for out in (with_subset, with_every, with_none):
        np.testing.assert_array_equal(out.spectra, baseline)


def test_a_tensor_the_pipeline_does_not_have_is_refused_before_any_work(case):
    with counted_calls(case.network) as calls, pytest.raises(ValueError, match="may only name"):
        case(image(), callback_on_step_end=lambda *args: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert calls == []


def test_a_callback_replaces_the_latents_at_the_last_step(case):
    def zero_last(pipe, index, timestep, tensors):
        if index == pipe.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    latent = case(image(), output_type="latent", callback_on_step_end=zero_last).latents
    assert latent.abs().max() == 0  # what the callback returned is what the pipeline went on with
    zeroed, baseline = case(image(), callback_on_step_end=zero_last).spectra, case(image()).spectra
    assert np.isfinite(zeroed).all() and np.abs(zeroed - baseline).max() > 1e-3


def test_interrupt_stops_every_batch_and_keeps_the_latents_where_they_stood(diffusion_case):
    noise = torch.randn(2, *diffusion_case.latent_shape[1:], generator=torch.Generator().manual_seed(0))
    seen = []

    def stop(pipe, index, timestep, tensors):
        seen.append((index, tensors["latents"].clone()))
        pipe._interrupt = True
        return tensors

    stopped = diffusion_case(image(), ensemble_size=2, latents=noise, output_type="latent", callback_on_step_end=stop)
    assert [index for index, _ in seen] == [0] and diffusion_case.pipe.interrupt  # no step after it, in any batch
    assert torch.equal(stopped.latents[:1], seen[0][1])  # the first member after its one step
    assert torch.equal(stopped.latents[1:], noise[1:] * diffusion_case.pipe.scheduler.init_noise_sigma)
    steps = []
    diffusion_case(image(), callback_on_step_end=lambda pipe, index, t, tensors: steps.append(index) or tensors)
    assert steps == [0, 1] and not diffusion_case.pipe.interrupt  # reset by the next call


def test_the_regression_pipelines_one_step_is_called_back_once_per_batch(mstpp_case):
    seen = []
    mstpp_case([as_batch_of_one(image(0)), as_batch_of_one(image(1))], batch_size=1,
               callback_on_step_end=lambda pipe, i, t, tensors: seen.append((i, t, tuple(tensors["latents"].shape))))
    assert seen == [(0, 0, (1, 31, SIZE, SIZE))] * 2 and mstpp_case.pipe.num_timesteps == 1


# ------------------------------------------------------------------------------------------------ latents
def test_given_latents_are_the_noise_the_generator_would_draw(diffusion_case):
    shape = (2, *diffusion_case.latent_shape[1:])
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    drawn = diffusion_case(image(), ensemble_size=2)
    given = diffusion_case(image(), ensemble_size=2, generator=None, latents=noise)
    np.testing.assert_array_equal(given.spectra, drawn.spectra)
    np.testing.assert_array_equal(given.uncertainty, drawn.uncertainty)
    with pytest.raises(ValueError, match="latents must have shape"):
        diffusion_case(image(), latents=noise)  # two members' noise for one


def test_the_regression_pipeline_refuses_latents(mstpp_case):
    with pytest.raises(ValueError, match="takes no `latents`"):
        mstpp_case(image(), latents=torch.zeros(1, 31, SIZE, SIZE))


# ------------------------------------------------------------------------------------------------- inputs
def test_the_same_image_in_any_form_gives_the_same_output(case, tmp_path):
    """An 8-bit sRGB image as PIL, a PNG, uint8 and float arrays (u / 255), tensors (3 x H x W, 1 x 3 x H x W)
    and a list of one: the same spectra. (diffusers' pt/np/pil check gives PIL a float image rounded to 8 bits:
    its inputs differ by up to 1/510, and the outputs then differ by the model's response to that.)"""
    u8 = (np.random.default_rng(0).uniform(0.2, 0.8, (SIZE, SIZE, 3)) * 255).round().astype(np.uint8)
    Image.fromarray(u8).save(tmp_path / "image.png")
    floats = u8.astype(np.float32) / 255
    forms = {"png": tmp_path / "image.png", "uint8": u8, "float32": floats, "float64": u8 / 255.0,
             "tensor": torch.from_numpy(floats).permute(2, 0, 1), "batch of one": as_batch_of_one(floats),
             "list": [Image.fromarray(u8)]}
    reference = case(Image.fromarray(u8), input_space="srgb").spectra
    for name, form in forms.items():
        np.testing.assert_allclose(case(form, input_space="srgb").spectra, reference, rtol=0, atol=1e-5,
                                   err_msg=name)


# --------------------------------------------------------------------------------------------- schedulers
def test_a_scheduler_that_cannot_sample_the_model_is_refused_before_any_work(diffusion_case):
    pipe = diffusion_case.pipe
    config = {**pipe.scheduler.config, "prediction_type": "sample"}  # what the shipped models predict
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(config)
    with counted_calls(diffusion_case.network) as calls, pytest.raises(ValueError) as error:
        diffusion_case("no-such-image.png")  # refused before the image is even read
    message = str(error.value)
    assert "EulerAncestralDiscreteScheduler cannot sample" in message and "'sample'" in message and calls == []
    fits = message.split("Schedulers that fit: ")[1].split(", ")
    assert {"DDIMScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler"} <= set(fits)
    assert not set(fits) & set(SCHEDULER_PREDICTION_TYPES)
    for name in fits:  # every scheduler it names samples the model
        pipe.scheduler = getattr(diffusers, name).from_config(config)
        assert np.isfinite(diffusion_case(image()).spectra).all(), name


def test_r2hdiff_refuses_a_scheduler_for_another_prediction_type(request):
    r2h = build_case("r2hdiff", request)
    r2h.pipe.scheduler = diffusers.DDIMScheduler.from_config(r2h.pipe.scheduler.config, prediction_type="epsilon")
    with pytest.raises(ValueError, match="configured for prediction_type 'epsilon', but the model predicts 'sample'"):
        r2h(image())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_scheduler_table_says_which_steps_run():
    """Every compatible scheduler's step, 4 steps of a tiny tensor: it runs for a prediction type iff the table
    (`SCHEDULER_PREDICTION_TYPES`, unlisted: all three) says it can."""
    for cls in diffusers.DDIMScheduler().compatibles:
        for prediction_type in ("epsilon", "sample", "v_prediction"):
            allowed = prediction_type in SCHEDULER_PREDICTION_TYPES.get(cls.__name__, (prediction_type,))
            try:
                config = diffusers.DDIMScheduler(prediction_type=prediction_type, num_train_timesteps=50).config
                scheduler = cls.from_config(config)  # 50 training steps: KDPM2's set-up takes 0.5 s at 1000
                assert scheduler.config.prediction_type == prediction_type, cls.__name__
                scheduler.set_timesteps(4)
                sample = torch.zeros(1, 1, 2, 2)
                for t in scheduler.timesteps:
                    model_input = scheduler.scale_model_input(sample, t)
                    sample = scheduler.step(torch.zeros_like(sample), t, model_input, return_dict=False)[0]
            except ImportError:  # an optional package the scheduler needs (torchsde)
                continue
            except (NotImplementedError, ValueError) as exc:
                assert not allowed and prediction_type in str(exc), (cls.__name__, prediction_type, exc)
                continue
            assert allowed, (cls.__name__, prediction_type)
