"""The `uldm` command. Each subcommand is an `add_*` function that registers its parser and its handler."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

Handler = Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------------------------------ shared options
def add_data_arguments(parser: argparse.ArgumentParser, default_split: str) -> None:
    """--data/--format/--split/--split-file: which ground-truth scenes a command reads."""
    parser.add_argument("--data", required=True, type=Path,
                        help="dataset root (CAVE folders, ARAD .mat, or .h5 cubes), or one scene file")
    parser.add_argument("--format", choices=["cave", "arad", "h5"], default="cave", help="dataset layout (default: cave)")
    parser.add_argument("--split", choices=["train", "val", "all"], default=default_split,
                        help=f"CAVE split (README of the data; default: {default_split}); ignored with --split-file")
    parser.add_argument("--split-file", type=Path, help="text file with one scene name per line")


def add_camera_arguments(parser: argparse.ArgumentParser) -> None:
    """--camera and the NTIRE-style degradation of the rendered RGB."""
    parser.add_argument("--camera", default="nikon5100", help="camera preset or CSV (wavelength,r,g,b); default nikon5100")
    add_degradation_arguments(parser)


def add_degradation_arguments(parser: argparse.ArgumentParser) -> None:
    """How the RGB rendered from ground truth is degraded (NTIRE 2022 style); all off by default."""
    parser.add_argument("--noise-photons", type=float, help="Poisson shot noise: photo-electrons at value 1.0")
    parser.add_argument("--bit-depth", type=int, help="quantise the RGB to this many bits (NTIRE: 8)")
    parser.add_argument("--jpeg-quality", type=int, help="JPEG-compress the RGB at this quality")


def degradation_from_args(args: argparse.Namespace):
    from .degradation import Degradation

    return Degradation(photons=args.noise_photons, bit_depth=args.bit_depth, jpeg_quality=args.jpeg_quality)


def select_scenes(args: argparse.Namespace) -> list[Path]:
    from .data import cave_split, list_scenes, read_split_file, select_scenes as pick

    if args.data.is_file():  # one scene, e.g. `--data samples/colorchecker_truth.h5 --format h5`
        return [args.data]
    paths = list_scenes(args.data, args.format)
    if args.split_file is not None:
        return pick(paths, read_split_file(args.split_file))
    if args.split == "all":
        return paths
    if args.format != "cave":
        raise SystemExit("error: --split train/val is defined for CAVE only; give --split-file or --split all")
    return cave_split(args.data)[args.split]


def camera_and_degradation(args: argparse.Namespace):
    from .camera import CameraResponse

    return CameraResponse.load(args.camera), degradation_from_args(args)


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype names -> torch attribute names


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and the diffusion options every command that runs a model takes."""
    parser.add_argument("--checkpoint", help="pipeline folder, hub id (org/name) or baseline .npz (default: the "
                                             "best model in checkpoints/ for the input space; `uldm info` names it)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--ensemble", type=int, help="samples per image; their spread is the uncertainty (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--processing-resolution", type=int,
                        help="run the diffusion with the longer side at this size (0: native; default: the pipeline's)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="the networks' precision (default fp32; bf16 is faster on GPUs and on CPUs with bf16 "
                             "units; the spectra are composed in float32 either way, so they stay exact in RGB)")
    parser.add_argument("--device", help="where the model runs (default: this process's accelerator, else the CPU; "
                                         "under `accelerate launch` each process its own GPU)")
    parser.add_argument("--raw", action="store_true",
                        help="the model's raw estimate: skip the projection onto physical spectra (by default every "
                             "spectrum renders to its RGB exactly and is non-negative, at most 1 where the RGB allows "
                             "it; pixels whose RGB no such spectrum renders to are flagged out of gamut)")


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """--max-pixels: the largest photo a command reads, checked from the file's header before it is decoded."""
    from .images import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse photos of more pixels than this (read from the file's header, before decoding, "
                             f"so a huge photo cannot exhaust the memory; default: {DEFAULT_MAX_PIXELS:,}; 0: no limit)")


def model_from_args(args: argparse.Namespace):
    import torch

    from .checkpoints import load_reconstructor
    from .distributed import process_state

    device = torch.device(args.device) if args.device else process_state().device
    input_space = getattr(args, "input_space", "linear")  # commands without --input-space render linear RGB
    model = load_reconstructor(args.checkpoint, steps=args.steps, ensemble=args.ensemble, seed=args.seed,
                               processing_resolution=args.processing_resolution, device=device,
                               dtype=getattr(torch, DTYPES[args.dtype]), physical=not args.raw,
                               input_space=input_space)
    if hasattr(args, "input_space"):  # the model takes linear RGB from the command: the command checks the space
        from .pipelines.common import warn_if_camera_mismatch

        warn_if_camera_mismatch(model, args.input_space)
    return model


# ------------------------------------------------------------------------------------------------- info
def add_info(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="version, camera presets, dataset formats and the cameras the "
                                                "default models assume")
    parser.add_argument("--checkpoint", help="name the camera this model assumes instead (pipeline folder, "
                                             "baseline .npz or hub id; read from its configs, weights not loaded)")
    parser.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
    from . import __version__, available_cameras
    from .spectral import DEFAULT_GRID

    print(f"uldm {__version__}")
    print(f"spectral grid: {DEFAULT_GRID}")
    print("camera presets: " + ", ".join(available_cameras()) + " (or a CSV: wavelength,r,g,b)")
    print("dataset formats: cave (native PNG folders), arad (NTIRE 2022 .mat v7.3), h5 (uldm .h5/.npz/.npy cubes)")
    for line in model_camera_lines(args.checkpoint):
        print(line)
    return 0


def model_camera_lines(checkpoint: Optional[str]) -> list[str]:
    """'<which model>: <where> (camera <name>)' for `checkpoint`, or for the default model of each input space."""
    from .camera import SRGB_OBSERVER
    from .checkpoints import checkpoint_camera_name, default_checkpoint, resolve_checkpoint
    from .hub import resolve_pretrained

    if checkpoint is not None:
        specs = {"model": checkpoint}
    else:
        specs = {}
        for space in ("srgb", "linear"):
            try:
                specs[f"default model for --input-space {space}"] = default_checkpoint(space)
            except FileNotFoundError:
                specs[f"default model for --input-space {space}"] = None
    lines = []
    for label, spec in specs.items():
        if spec is None:
            lines.append(f"{label}: none (give --checkpoint or set ULDM_CHECKPOINT)")
            continue
        where = resolve_checkpoint(spec)
        if not isinstance(where, Path):  # a hub id: its configs are enough
            where = resolve_pretrained(where, allow_patterns=["*.json"])
        camera = checkpoint_camera_name(where)
        warns = camera != SRGB_OBSERVER and (checkpoint is not None or "srgb" in label)
        note = "; sRGB photos (--input-space srgb) get a CameraMismatchWarning" if warns else ""
        lines.append(f"{label}: {spec} (camera {camera}{note})")
    return lines


# --------------------------------------------------------------------------------------------- baseline
def add_baseline(subparsers: argparse._SubParsersAction) -> None:
    from .baseline import DEGREES

    parser = subparsers.add_parser("baseline", help="root-polynomial regression baseline: fit / evaluate")
    actions = parser.add_subparsers(dest="action", required=True)

    fit = actions.add_parser("fit", help="least-squares fit on training scenes")
    add_data_arguments(fit, default_split="train")
    add_camera_arguments(fit)
    fit.add_argument("-o", "--output", required=True, type=Path, help="where to write the fitted .npz")
    fit.add_argument("--degree", type=int, default=2, choices=DEGREES,
                     help="root-polynomial degree (default 2, the baseline; 1 is linear regression)")
    fit.set_defaults(handler=run_baseline_fit)

    evaluate = actions.add_parser("evaluate", help="score a fitted baseline on ground-truth scenes")
    evaluate.add_argument("--model", required=True, type=Path, help=".npz written by `uldm baseline fit`")
    add_data_arguments(evaluate, default_split="val")
    add_camera_arguments(evaluate)
    add_report_arguments(evaluate)
    evaluate.set_defaults(handler=run_baseline_evaluate, camera=None)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crop", type=int, default=0, help="score the central crop: drop this many pixels per side (NTIRE ARAD: 128)")
    parser.add_argument("--json", type=Path, help="write per-scene and mean metrics as JSON")
    parser.add_argument("--save-dir", type=Path, help="keep the reconstructed cubes here (HDF5, same scene names)")


def run_baseline_fit(args: argparse.Namespace) -> int:
    from .baseline import RootPolynomialRegression

    camera, degradation = camera_and_degradation(args)
    scenes = select_scenes(args)
    model = RootPolynomialRegression.fit_scenes(scenes, camera, degradation=degradation, format=args.format,
                                                degree=args.degree)
    model.save(args.output)
    print(f"fitted degree {args.degree} on {len(scenes)} scenes with {camera.name}; wrote {args.output}")
    return 0


def run_baseline_evaluate(args: argparse.Namespace) -> int:
    from .baseline import RootPolynomialRegression

    model = RootPolynomialRegression.load(args.model)
    if args.camera is not None and args.camera != model.camera.name:
        print(f"note: the baseline was fitted for {model.camera.name}; rendering with that camera")
    args.camera = model.camera
    camera, degradation = camera_and_degradation(args)
    return report(model, select_scenes(args), camera, degradation, args)


def report(reconstruct, scenes, camera, degradation, args: argparse.Namespace) -> int:
    """Evaluate, print the table, write JSON if asked: shared by every `evaluate` command."""
    from .evaluation import evaluate

    result = evaluate(reconstruct, scenes, camera, format=args.format, degradation=degradation,
                      crop=args.crop, save_dir=args.save_dir, keep_going=len(scenes) > 1)  # one scene: its error
    if result.per_scene:
        print(result.table())
    if args.json is not None:
        result.save_json(args.json)
        print(f"wrote {args.json}")
    for scene, reason in result.failures.items():  # the others were scored: the JSON lists these too
        print(f"failed: {scene}: {reason}", file=sys.stderr)
    return 1 if result.failures else 0


# ------------------------------------------------------------------------------------------- reconstruct
OUTPUT_SUFFIXES = {"h5": ".h5", "mat": ".mat", "envi": ".hdr", "npz": ".npz"}


def add_reconstruct(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct", help="RGB images -> 31-band cubes (HDF5), with previews; sharded under accelerate launch",
        description="Every image (or every image under a folder, recursively) gets one cube; outputs mirror the "
                    "inputs' relative paths. Existing outputs are skipped, so a rerun resumes (--overwrite replaces "
                    "them); a failing input is reported and the batch goes on (exit code 1 if any failed). Every image "
                    "is recorded in the manifest as it finishes, so a killed run loses nothing finished. Runs into "
                    "one output folder share the work: each image is claimed before it is computed. Under "
                    "`accelerate launch --num_processes N` each process takes every N-th image.")
    parser.add_argument("inputs", nargs="+", type=Path, help="images (PNG/JPEG/BMP/TIFF, 8 or 16 bit) or folders of them")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder: one cube per image (<name>.h5, or as --output-format says)")
    add_model_arguments(parser)
    parser.add_argument("--input-space", choices=["srgb", "linear"], default="srgb",
                        help="how the image values are encoded (default: srgb, as ordinary photos are)")
    parser.add_argument("--preview", action="store_true", help="also write <name>_preview.png and <name>_spectra.png")
    parser.add_argument("--output-format", choices=sorted(OUTPUT_SUFFIXES), default="h5",
                        help="h5 (default: cube, uncertainty, camera, provenance), mat (MATLAB: cube, bands, "
                             "uncertainty), envi (<name>.hdr + <name>.img, the uncertainty in <name>_uncertainty.hdr "
                             "+ .img) or npz. h5, MAT 7.3 and envi are written band of rows by band of rows, in "
                             "bounded memory at any size; npz and MAT 5 are built in memory, for cubes up to 512 MiB "
                             "(about 4 megapixels)")
    parser.add_argument("--mat-version", choices=["5", "7.3"],
                        help="with --output-format mat: 5 (scipy.io.loadmat reads it) or 7.3 (HDF5; h5py reads it); "
                             "default: 5 for cubes up to 512 MiB (about 4 megapixels; built in memory), else 7.3 "
                             "(written as the rows come)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: skip them)")
    parser.add_argument("--manifest", type=Path,
                        help="where to record every image's output, status, seconds and RGB error (.json or .csv; "
                             "default: <output>/manifest.json)")
    add_max_pixels_argument(parser)
    parser.set_defaults(handler=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import time

    from tqdm.auto import tqdm

    from .batch import plan_jobs, prepare_output_folder, preview_paths, run_jobs, shard, summary_line
    from .distributed import gather_lists, process_state
    from .images import load_linear_rgb
    from .io import envi_companion_path, open_cube_writer
    from .locks import sharing_folder
    from .visualize import StreamedPreview, pick_pixels

    if args.mat_version and args.output_format != "mat":
        raise ValueError(f"--mat-version {args.mat_version} applies to --output-format mat only")
    started = time.time()
    jobs = plan_jobs(args.inputs, args.output, OUTPUT_SUFFIXES[args.output_format])  # fails before the model loads
    prepare_output_folder(args.output)
    manifest = args.manifest or args.output / "manifest.json"
    state = process_state()
    mine = shard(jobs, state.process_index, state.num_processes)
    model = model_from_args(args)
    wavelengths = model.camera.grid.as_array()

    def reconstruct(job) -> dict:
        """The cube of one photo, written into its file band of rows by band of rows as the model computes them
        (never held whole), with the previews drawn from the same rows; what the manifest records of it."""
        rgb = load_linear_rgb(job.source, args.input_space, max_pixels=args.max_pixels or None)
        provenance = {"source": str(job.source), "input_space": args.input_space,
                      "checkpoint": str(args.checkpoint or "default"), "steps": args.steps, "ensemble": args.ensemble,
                      "seed": args.seed, "physical": not args.raw}
        height, width = rgb.shape[:2]
        preview = StreamedPreview(height, width, wavelengths, pick_pixels(rgb)) if args.preview else None
        with open_cube_writer(job.output, height, width, wavelengths, camera=model.camera, attrs=provenance,
                              overwrite=args.overwrite, mat_version=args.mat_version) as writer:
            info = write_rows(model, rgb, writer, preview)
            if preview is not None:
                preview.save(*preview_paths(job.output))
        if args.output_format == "envi":  # ENVI holds one array per file
            info.update({f"{name}_file": str(envi_companion_path(job.output, name)) for name in writer.stored[1:]})
        return info

    bar = tqdm(total=len(mine), desc=f"reconstruct ({len(jobs)} images, {state.num_processes} processes)",
               disable=not state.is_main_process)

    def show(result) -> None:  # progress of this process's shard
        bar.update(1)
        if result.status != "done":
            tqdm.write(f"{result.input}: {result.status}: {result.reason}")

    with sharing_folder(args.output, started):  # removes what killed runs left there, when no other run works there
        own = run_jobs(mine, reconstruct, overwrite=args.overwrite, progress=show, manifest=manifest)
    results = gather_lists(own)
    bar.close()
    order = {str(job.output): index for index, job in enumerate(jobs)}
    results.sort(key=lambda result: order[result.output])  # failures reported in input order, however sharded
    if not state.is_main_process:
        return 0
    failed = [r for r in results if r.status == "failed"]
    print(f"{summary_line(results)} ({len(jobs)} images); manifest {manifest}")
    for result in failed:
        print(f"failed: {result.input}: {result.reason}", file=sys.stderr)
    return 1 if failed else 0


def write_rows(model, rgb, writer, preview=None) -> dict:
    """Stream the model's reconstruction of `rgb` into `writer` (`uldm.io.CubeWriter`) and `preview` (a
    `uldm.visualize.StreamedPreview`), a band of rows at a time (`uldm.checkpoints.stream_rows`); what the manifest
    records: the largest |Φŝ − c| (float64, against the linear RGB) and the out-of-gamut pixels."""
    from .checkpoints import stream_rows

    info: dict = {"rgb_error": 0.0}

    def write(rows: slice, spectra, uncertainty, out_of_gamut) -> None:
        writer.write(spectra, uncertainty, out_of_gamut)
        info["rgb_error"] = max(info["rgb_error"], model.camera.render_error(spectra, rgb[rows]))
        if out_of_gamut is not None:
            info["out_of_gamut_pixels"] = info.get("out_of_gamut_pixels", 0) + int(out_of_gamut.sum())
        if preview is not None:
            preview.add(rows, spectra, uncertainty, out_of_gamut)

    stream_rows(model, rgb, write)
    return info


# ----------------------------------------------------------------------------------------------- relight
def add_relight(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relight", help="re-render a photo under another illuminant through its reconstructed spectra",
        description="Reconstruct spectra from INPUT, then render them as the camera (or the CIE observer, "
                    "--space srgb) would see the scene under --to. `uldm relight --list` names the illuminants.",
    )
    parser.add_argument("input", nargs="?", type=Path, metavar="INPUT", help="the photo (PNG/JPEG/BMP/TIFF, 8 or 16 bit)")
    parser.add_argument("--to", metavar="ILLUMINANT", help="illuminant to relight under: a name (D65, A, FL11/F11, LED-B1, ...) or a CSV wavelength,power")
    parser.add_argument("--from", dest="from_", default="E", metavar="ILLUMINANT",
                        help="illuminant the photo was taken under (default: E, how uldm's training RGB is rendered)")
    parser.add_argument("-o", "--output", dest="destination", type=Path, metavar="OUT.png",
                        help="where to write the relit 8-bit PNG")
    add_model_arguments(parser)
    parser.add_argument("--input-space", choices=["srgb", "linear"], default="srgb",
                        help="how the image values are encoded (default: srgb, as ordinary photos are)")
    parser.add_argument("--space", choices=["camera", "srgb"], default="camera",
                        help="colour space of the rendering: the model's camera RGB, encoded like the input "
                             "(default), or sRGB through the CIE 1931 observer")
    parser.add_argument("--white-balance", action="store_true",
                        help="remove the light's colour cast, as an auto-white-balanced camera would")
    add_max_pixels_argument(parser)
    parser.add_argument("--list", action="store_true", help="print the illuminant names and exit")
    parser.set_defaults(handler=run_relight)


def run_relight(args: argparse.Namespace) -> int:
    from .relight import available_illuminants, load_illuminant

    if args.list:
        print("\n".join(available_illuminants()))
        print("(F1-F12 mean FL1-FL12; case does not matter; or give a CSV file wavelength,power)")
        return 0
    missing = [flag for flag, value in (("INPUT", args.input), ("--to", args.to), ("-o", args.destination)) if value is None]
    if missing:
        raise ValueError(f"relight needs {', '.join(missing)} (or --list to see the illuminants)")

    from .images import load_linear_rgb
    from .relight import relight, save_srgb_png

    if not args.input.is_file():  # before the model loads
        raise FileNotFoundError(f"{args.input}: no such image file")
    model = model_from_args(args)
    for spec in (args.to, args.from_):  # a typo should fail before the reconstruction runs, not after
        load_illuminant(spec, model.camera.grid)
    rgb = load_linear_rgb(args.input, args.input_space, max_pixels=args.max_pixels or None)
    relit = relight(model(rgb), model.camera.grid.as_array(), args.to, from_=args.from_, camera=model.camera,
                    output=args.space, white_balance=args.white_balance)
    save_srgb_png(args.destination, relit)
    print(f"{args.input} -> {args.destination} (from {args.from_} to {args.to}, {args.space} RGB"
          f"{', white-balanced' if args.white_balance else ''})")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score a checkpoint on ground-truth cubes (RGB rendered with its camera)")
    add_data_arguments(parser, default_split="val")
    add_model_arguments(parser)
    add_degradation_arguments(parser)
    add_report_arguments(parser)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    scenes = select_scenes(args)  # a wrong --data fails before the model loads
    model = model_from_args(args)
    return report(model, scenes, model.camera, degradation_from_args(args), args)


# ------------------------------------------------------------------------------------------------- hub
def add_hub(subparsers: argparse._SubParsersAction) -> None:
    pull = subparsers.add_parser("pull", help="download a pipeline from the model hub (HF_ENDPOINT) into the cache or a folder")
    pull.add_argument("repo_id", help="org/name")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    pull.add_argument("-o", "--output", type=Path, help="also copy it to this folder")
    pull.add_argument("--cache-dir", help="huggingface_hub cache to use")
    pull.set_defaults(handler=run_pull)
    push = subparsers.add_parser("push", help="upload a saved pipeline folder (with its model card) to the model hub")
    push.add_argument("folder", type=Path, help="a folder written by save_pretrained (e.g. runs/uldm-cave/pipeline)")
    push.add_argument("repo_id", help="org/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.set_defaults(handler=run_push)


def run_pull(args: argparse.Namespace) -> int:
    import shutil

    from .hub import resolve_pretrained

    folder = resolve_pretrained(args.repo_id, revision=args.revision, cache_dir=args.cache_dir)
    if args.output is not None:
        shutil.copytree(folder, args.output, dirs_exist_ok=True)
        folder = args.output
    print(folder)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from .hub import push_folder

    if not (args.folder / "model_index.json").exists():
        raise ValueError(f"{args.folder}: no model_index.json (push a folder written by save_pretrained)")
    print(push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision))
    return 0


# ------------------------------------------------------------------------------------------------- main
SUBCOMMANDS = (add_info, add_reconstruct, add_evaluate, add_relight, add_baseline, add_hub)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="uldm", description="RGB-to-hyperspectral reconstruction (ULDM). In every "
                                     "command, -o/--output names where the command writes its result.")
    parser.add_argument("--version", action="version", version=f"uldm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


@contextlib.contextmanager
def plain_warnings(command: str) -> Iterator[None]:
    """Within the block, warnings print as `uldm COMMAND: warning (Category): message`: they are for the user,
    not a source line."""
    import warnings

    saved = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: (
        f"uldm {command}: warning ({category.__name__}): {message}\n")
    try:
        yield
    finally:
        warnings.formatwarning = saved


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with plain_warnings(args.command):
            return args.handler(args)
    except (ValueError, OSError) as exc:  # our errors say what went wrong and where: no traceback needed
        print(f"uldm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
