"""Shared fixtures. Each is a plain named function; add yours below with a docstring saying what it writes."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REAL_CAVE_ROOT = REPO.parent / "shared" / "data" / "cave"


def pytest_configure(config: pytest.Config) -> None:
    """The suite's tiny models are the Nikon 5100's and read sRGB test images: their CameraMismatchWarning is noise
    here (test_srgb_observer.py checks it, overriding this filter). Set here rather than in pyproject.toml, whose
    hash decides when scripts/setup.sh reinstalls."""
    config.addinivalue_line("filterwarnings", "ignore:input_space='srgb' takes the image for an sRGB photo:UserWarning")


# ------------------------------------------------------------------------------------------------ datasets
TINY_CAVE_SIZE = 16
TINY_CAVE_BANDS = 31


def _tiny_cave_counts() -> dict[str, np.ndarray]:
    """Integer band values (H x W x 31) of the tiny CAVE scenes, as stored in their PNGs."""
    y, x, k = np.meshgrid(
        np.arange(TINY_CAVE_SIZE), np.arange(TINY_CAVE_SIZE), np.arange(1, TINY_CAVE_BANDS + 1), indexing="ij"
    )
    return {
        # 16-bit: the band index dominates, so band order is checkable; y and x differ, so orientation is too.
        "balloons_ms": (1000 * k + 16 * y + x).astype(np.uint16),
        "cd_ms": (2000 * k + 7 * y).astype(np.uint16),
        # 8-bit, stored as RGBA like CAVE's watercolors_ms: the band is the first channel.
        "watercolors_ms": (8 * k + (x % 4)).astype(np.uint8),
    }


@pytest.fixture
def tiny_cave_cubes() -> dict[str, np.ndarray]:
    """The float32 cubes (16 x 16 x 31, in [0, 1]) that `tiny_cave_root` writes, by scene name."""
    return {
        name: counts.astype(np.float32) / np.float32(65535 if counts.dtype == np.uint16 else 255)
        for name, counts in _tiny_cave_counts().items()
    }


@pytest.fixture
def tiny_cave_root(tmp_path: Path) -> Path:
    """A CAVE root in the native nested layout `<scene>_ms/<scene>_ms/<scene>_ms_01.png` with three 16x16
    scenes: `balloons_ms` and `cd_ms` as 16-bit greyscale PNGs, `watercolors_ms` as 8-bit RGBA (the real
    database's quirk; other channels hold decoys). Each scene also has a `<scene>_RGB.bmp` to be ignored."""
    from PIL import Image

    root = tmp_path / "cave"
    for name, counts in _tiny_cave_counts().items():
        folder = root / name / name
        folder.mkdir(parents=True)
        for band in range(TINY_CAVE_BANDS):
            plane = counts[..., band]
            if plane.dtype == np.uint8:
                decoy = 255 - plane
                image = Image.fromarray(np.stack([plane, decoy, decoy, np.full_like(plane, 255)], -1))  # RGBA
            else:
                image = Image.fromarray(plane)  # uint16 -> mode I;16
            image.save(folder / f"{name}_{band + 1:02d}.png")
        Image.new("RGB", (TINY_CAVE_SIZE, TINY_CAVE_SIZE), (200, 10, 10)).save(folder / f"{name[:-3]}_RGB.bmp")
    return root


MATLAB_V73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


def _write_mat_v73(path: Path, cube_hwb: np.ndarray, bands: np.ndarray) -> Path:
    """Write a cube the way MATLAB's `save -v7.3` does: HDF5 with a 512-byte MAT header, arrays transposed
    (so `cube` is B x W x H on disk), and `bands` as a 1 x B row vector."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as handle:
        cube = handle.create_dataset("cube", data=np.transpose(cube_hwb, (2, 1, 0)).astype(np.float32))
        cube.attrs["MATLAB_class"] = np.bytes_("single")
        rows = handle.create_dataset("bands", data=np.asarray(bands, dtype=np.float64).reshape(1, -1))
        rows.attrs["MATLAB_class"] = np.bytes_("double")
    header = MATLAB_V73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as raw:
        raw.write(header)
    return path


TINY_ARAD_HEIGHT, TINY_ARAD_WIDTH = 12, 20


@pytest.fixture
def mat_v73_writer():
    """`writer(path, cube_hwb, bands) -> path`: write any cube as an ARAD-style MATLAB v7.3 .mat."""
    return _write_mat_v73


@pytest.fixture
def tiny_arad_cube() -> np.ndarray:
    """The H x W x 31 cube (12 x 20, non-square) in `tiny_arad_mat`: value = k/31 + y/1000 + x/10000 for
    band k = 0..30, with pixel (0, 0) of the last band at 1.02 (ARAD cubes slightly exceed 1)."""
    y, x, k = np.meshgrid(np.arange(TINY_ARAD_HEIGHT), np.arange(TINY_ARAD_WIDTH), np.arange(31), indexing="ij")
    cube = (k / 31 + y / 1000 + x / 10000).astype(np.float32)
    cube[0, 0, -1] = 1.02
    return cube


@pytest.fixture
def tiny_arad_mat(tmp_path: Path, tiny_arad_cube: np.ndarray) -> Path:
    """`ARAD_1K_0001.mat` in the real NTIRE 2022 v7.3 layout holding `tiny_arad_cube`, bands 400-700 nm."""
    return _write_mat_v73(tmp_path / "ARAD_1K_0001.mat", tiny_arad_cube, np.arange(400.0, 701.0, 10.0))


@pytest.fixture
def cave_root() -> Path:
    """The real CAVE subset in ../shared/data/cave; skips the test when it is not there."""
    if not REAL_CAVE_ROOT.is_dir():
        pytest.skip(f"real CAVE data not found at {REAL_CAVE_ROOT}")
    return REAL_CAVE_ROOT


@pytest.fixture
def tiny_vae_dir(tmp_path: Path) -> Path:
    """A tiny Stable-Diffusion-format AutoencoderKL saved with save_pretrained (the real folder layout)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
    )
    vae.save_pretrained(tmp_path / "tiny-vae")
    return tmp_path / "tiny-vae"


# ------------------------------------------------------------------------------------------- model hub
HUB_TEST_TOKEN = "hf_uldm_dummy_test_token"


def _setattr_if_loaded(monkeypatch: pytest.MonkeyPatch, module_name: str, name: str, value) -> None:
    """Patch a copy of a constant that a module took at import time (`from ..constants import X`), if loaded."""
    import sys

    module = sys.modules.get(module_name)
    if module is not None and hasattr(module, name):
        monkeypatch.setattr(module, name, value)


def _use_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Point huggingface_hub (this process and subprocesses) at `endpoint`, with home/cache/token under `home`.

    huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, ... once, at import, into `huggingface_hub.constants`
    (ENDPOINT, the /resolve/ URL template, the trusted-hosts set and every path derived from HF_HOME), so the
    environment variables alone only reach subprocesses: the constants are patched too.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"), "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"), "HF_TOKEN": HUB_TEST_TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HUGGINGFACE_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(key, raising=False)
    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname}),
        "HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"), "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    for name, value in patched.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    _setattr_if_loaded(monkeypatch, "huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", str(cache))
    _setattr_if_loaded(monkeypatch, "huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", str(home / "assets"))
    # the module-level HfApi behind `huggingface_hub.model_info` & co. (diffusers calls those) took the endpoint at import
    from huggingface_hub import hf_api

    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    # diffusers keeps its own copies (used in its messages and offline checks)
    _setattr_if_loaded(monkeypatch, "diffusers.utils.constants", "HUGGINGFACE_CO_RESOLVE_ENDPOINT", endpoint)
    _setattr_if_loaded(monkeypatch, "diffusers.utils.hub_utils", "HUGGINGFACE_CO_RESOLVE_ENDPOINT", endpoint)
    _setattr_if_loaded(monkeypatch, "diffusers.utils.hub_utils", "HF_HUB_OFFLINE", False)


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running Hugging Face Hub-compatible server (tests/hub_server.py) on 127.0.0.1, its repos stored in
    tmp_path/'hub-server'. While the test runs, huggingface_hub talks to it (constants and HF_ENDPOINT patched),
    with HF_HOME in tmp_path/'hf-home' (cache in its 'hub'), a dummy HF_TOKEN, telemetry off and offline mode
    off. Yields the HubServer; afterwards it is stopped and every patch undone."""
    from hub_server import HubServer

    server = HubServer(tmp_path / "hub-server").start()
    try:
        _use_hub(monkeypatch, server.url, tmp_path / "hf-home")
        yield server
    finally:
        server.stop()


@pytest.fixture
def unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Like `hub_server`, but huggingface_hub points at a 127.0.0.1 port nobody listens on; returns that URL."""
    url = f"http://127.0.0.1:{_free_port()}"
    _use_hub(monkeypatch, url, tmp_path / "hf-home")
    return url


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion checkpoint in the real diffusers layout (unet/, vae/, scheduler/, text_encoder/,
    tokenizer/, model_index.json), written once per session by the same code users' recipes rely on."""
    from uldm.sd_scaffold import write_small_sd

    return write_small_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", size="tiny")


@pytest.fixture(scope="session")
def tiny_speuae_dir(tmp_path_factory) -> Path:
    from uldm.models import SpeUAE

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("speuae") / "speuae"
    SpeUAE(encoder_channels=16, decoder_channels=16, num_layers=2).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_pipeline(tiny_sd_dir, tiny_speuae_dir):
    """An untrained SpectralReconstructionPipeline assembled exactly as stage 2 assembles the trained one."""
    from uldm.models import SpeUAE
    from uldm.models.sd_adapter import load_stable_diffusion
    from uldm.stages.train_uldm import build_pipeline

    parts = load_stable_diffusion(str(tiny_sd_dir))
    return build_pipeline(parts.unet.eval(), parts.vae, parts.noise_scheduler, SpeUAE.from_pretrained(tiny_speuae_dir),
                          parts.empty_prompt, default_denoising_steps=2)


@pytest.fixture
def loaded_reconstructors(monkeypatch) -> list:
    """Every model `uldm.checkpoints.load_reconstructor` returns while the test runs (the CLI loads through it)."""
    from uldm import checkpoints

    loaded, load = [], checkpoints.load_reconstructor
    monkeypatch.setattr(checkpoints, "load_reconstructor", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    return loaded


@pytest.fixture
def load_benchmark():
    """Import a script from benchmarks/ by name (they are scripts, not a package): load_benchmark("compare_models")."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


# ----------------------------------------------------------------------------------------- SpaAE / photos
TINY_TAESD_CONFIG = {"latent_channels": 4, "encoder_block_out_channels": (8, 8, 8, 8),
                     "decoder_block_out_channels": (8, 8, 8, 8)}


def write_taesd_files(folder: Path, model, variant: str = "taesd") -> Path:
    """Write an AutoencoderTiny's weights as the TAESD files are distributed: the original `nn.Sequential` keys, one
    file per half (`<variant>_encoder.safetensors`, `<variant>_decoder.safetensors`), bfloat16."""
    from safetensors.torch import save_file

    from uldm.models.taesd import original_key

    folder.mkdir(parents=True, exist_ok=True)
    halves: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "decoder": {}}
    for key, tensor in model.state_dict().items():
        halves[key.split(".")[0]][original_key(key)] = tensor.to(torch.bfloat16).contiguous()
    for half, tensors in halves.items():
        save_file(tensors, str(folder / f"{variant}_{half}.safetensors"))
    return folder


@pytest.fixture
def tiny_taesd_dir(tmp_path: Path) -> Path:
    """A folder of TAESD-layout files (original keys, bf16) of a tiny AutoencoderTiny (`TINY_TAESD_CONFIG`, seeded)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return write_taesd_files(tmp_path / "taesd", AutoencoderTiny(**TINY_TAESD_CONFIG))


@pytest.fixture
def tiny_tae_sd_dir(tmp_path: Path, tiny_sd_dir: Path) -> Path:
    """`tiny_sd_dir` with its SpaAE replaced by a tiny AutoencoderTiny (4 latent channels, 1/8 resolution, seeded)."""
    from diffusers import AutoencoderTiny

    from uldm.models.sd_adapter import save_sd_folder

    torch.manual_seed(1)
    return save_sd_folder(tiny_sd_dir, tmp_path / "tiny-tae-sd", vae=AutoencoderTiny(**TINY_TAESD_CONFIG))


def _smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random smooth colour image (uint8): a few blobs, so autoencoders and crops see structure."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.zeros((height, width, 3))
    for _ in range(4):
        cy, cx, radius = rng.random(3) * [1, 1, 0.5] + [0, 0, 0.1]
        image += rng.random(3) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / radius ** 2)[..., None]
    return np.clip(image / image.max() * 255, 0, 255).astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """A folder tree of photographs: photos/a/*.jpg (4 images, 40 x 48 and 48 x 40), photos/b/*.png (2, one
    greyscale), photos/held/*.png (2, for held-out use), plus an unreadable photos/a/broken.jpg and a notes.txt."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for folder, count, suffix in (("a", 4, "jpg"), ("b", 2, "png"), ("held", 2, "png")):
        (root / folder).mkdir(parents=True)
        for index in range(count):
            size = (40, 48) if index % 2 else (48, 40)
            image = Image.fromarray(_smooth_image(rng, *size))
            if folder == "b" and index == 1:
                image = image.convert("L")
            image.save(root / folder / f"photo{index}.{suffix}")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def single_thread():
    """For tests of tiny tensors: a second thread only adds synchronisation, and on a busy 2-core machine it made an
    optimisation test 8x slower (3 s instead of 0.4 s). Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- physical spectra
@pytest.fixture
def check_physical_by_default():
    """`check(call, rgb, camera)`: `call(image, **kwargs)` runs a pipeline on an H x W x 3 linear image with
    `output_type="pt"`. Checks, on `rgb` with a pure-green patch (outside the Nikon 5100's gamut) in its corner,
    that the default output is the physical projection (`uldm.feasibility`) of the raw one (`physical=False`,
    whose mask is None): the patch flagged and nothing else, no negative band, exact RGB outside the patch."""
    from uldm.feasibility import project_feasible

    def check(call, rgb: np.ndarray, camera) -> None:
        image = rgb.copy()
        image[:4, :5] = (0.0, 1.0, 0.0)
        raw, out = call(image, physical=False), call(image)
        assert raw.out_of_gamut is None and out.out_of_gamut.dtype == torch.bool
        target = torch.from_numpy(image).permute(2, 0, 1)[None]
        expected, mask = project_feasible(raw.spectra, target, camera, dim=1)
        torch.testing.assert_close(out.spectra, expected, rtol=0, atol=1e-6)
        assert torch.equal(out.out_of_gamut, mask)
        assert out.out_of_gamut[0, :4, :5].all() and out.out_of_gamut.sum() == 20 and out.spectra.min() >= 0
        rendered = camera.render(out.spectra[0].double(), channel_axis=0)
        assert (rendered - target[0].double())[:, 4:].abs().max() < 1e-5 < out.rgb_error[0]

    return check


# ------------------------------------------------------------------------------------- child processes
@contextlib.contextmanager
def child_process(target, *args):
    """`target(*args)` in a fresh interpreter, killed and reaped on the way out whatever the test did. Spawned, not
    forked: a forked child of a process whose OpenMP pool has run can hang for ever, and a hung non-daemon child
    would also hold pytest at exit."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    try:
        yield process
    finally:
        if process.is_alive():
            process.kill()
        process.join(timeout=30)


def wait_for_file(path: Path, process, seconds: float = 180) -> bool:
    """Whether `path` appeared before `process` ended or `seconds` passed (a spawned child imports torch first)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()
