"""Write the tables in README.md and docs/results.md from the JSON the benchmarks wrote (never typed by hand).

    python benchmarks/docs_tables.py            # rewrite every table
    python benchmarks/docs_tables.py --check    # exit 1 if a table differs from its JSON (the test suite runs this)

Each table sits between `<!-- table:NAME ... -->` and `<!-- /table:NAME -->` in its document; TABLES says which
JSON file(s) and which function make it. A table whose JSON is missing is left as it is (and reported).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import runpy
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _json(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


# ----------------------------------------------------------------------------------------------- tables
MODEL_NAMES = {"baseline-rootpoly-nikon5100.npz": "root-polynomial regression (degree 2), the baseline",
               "uldm-cave": "ULDM `checkpoints/uldm-cave`", "r2hdiff-cave (free)": "R2H-Diff `checkpoints/r2hdiff-cave`",
               "r2hdiff-cave (+RGB proj.)": "R2H-Diff + projection onto Φŝ = c"}


def _budget_cell(row: dict[str, Any]) -> str:
    """'steps / samples / wall-clock, threads'; a run with steps whose spend was never recorded says so."""
    cell = f"{row['steps']} / {row['samples']:,} / {row['seconds'] / 60:.0f} min ({row['device']})"
    unrecorded = row.get("unrecorded_steps", 0)
    return cell + (f"; {unrecorded} steps' spend unrecorded" if unrecorded else "")


def results_table() -> str:
    """README: every shipped model and the baseline on the standard CAVE val split (compare_models.py)."""
    rows = []
    for label, row in _json("compare_cave.json")["rows"].items():
        steps = f", {row['steps']} step{'s' if row['steps'] > 1 else ''}" if row.get("steps") else ""
        rows.append([f"{MODEL_NAMES.get(label, label)}{steps}", _cell(row.get("psnr"), "{:.2f}"),
                     _cell(row.get("sam"), "{:.2f}"), _cell(row.get("mrae"), "{:.4f}"), _cell(row.get("rmse"), "{:.4f}"),
                     _cell(row.get("max_rgb_error"), "{:.1e}"), _cell(row.get("parameters"), "{:,}"),
                     _cell(row.get("gflops_per_image"), "{:.2f}"), _cell(row.get("seconds_per_image"), "{:.2f}")])
    return _rows(["model", "PSNR (dB)", "SAM (°)", "MRAE", "RMSE", "max RGB error", "parameters", "GFLOP / image",
                  "s / image"], rows)


PEER_NAMES = {"uldm": "ULDM (arm c), 1 step", "r2hdiff": "R2H-Diff, 5 steps", "mstpp": "MST++",
              "root-polynomial baseline": "root-polynomial regression (degree 2)"}


def peers_table() -> str:
    """README: every model beside its peers on both splits' val scenes, costs and training budgets (peers.py)."""
    data = _json("peers.json")
    blocks = []
    for split, result in data["splits"].items():
        rows = []
        for name, row in result["rows"].items():
            cost = data["costs"][name]
            budget = (f"{row['steps']} steps, {row['seconds'] / 60:.0f} min, {row['device']}" if "steps" in row
                      else ("fitted in seconds" if name == "root-polynomial baseline" else "-"))
            rows.append([PEER_NAMES.get(name, name), f"{row['psnr']:.2f}", f"{row['sam']:.2f}", f"{row['mrae']:.4f}",
                         f"{row['rmse']:.4f}", f"{row['max_rgb_error']:.1e}", f"{cost['parameters']:,}",
                         f"{cost['gflops_per_image']:.2f}", f"{cost['seconds_per_image']:.2f}", budget])
        scenes = ", ".join(_scene(s) for s in result["val_scenes"])
        blocks.append(f"Split {split} (val: {scenes}):\n\n" + _rows(
            ["model", "PSNR (dB)", "SAM (°)", "MRAE", "RMSE", "max RGB error", "parameters", "GFLOP / image",
             "s / image", "training (stage 2 / the network)"], rows))
    return "\n".join(blocks)


ROUNDTRIPS = (("spaae_roundtrip_base_kl.json", "AutoencoderKL trained from random weights (the earlier ULDM's, 8 channels at 1/4)"),
              ("spaae_roundtrip_taesd.json", "TAESD (4 channels at 1/8), as pretrained"),
              ("spaae_roundtrip_taesd_adapted.json", "TAESD, adapted (300 steps)"),
              ("spaae_roundtrip_taesd3.json", "TAESD3 (16 channels at 1/8), as pretrained"),
              ("spaae_roundtrip_taesd3_adapted.json", "TAESD3, adapted (300 steps)"),
              ("spaae_roundtrip_taesd_train.json", "TAESD, as pretrained, on the 21 training scenes"),
              ("spaae_roundtrip_taesd3_train.json", "TAESD3, as pretrained, on the 21 training scenes"))
TRUE_CODE = "SpeUAE + SpaAE (VAE round trip)"
RESIDUAL = "SpeUAE + SpaAE carrying 3 x the residual from the prior's code"


def roundtrip_table() -> str:
    """docs/results.md: the code's round trip through each SpaAE (benchmarks/speuae_roundtrip.py)."""
    rows = []
    for name, label in ROUNDTRIPS:
        mean = _json(name)["mean"]
        rows.append([label, f"{mean[TRUE_CODE]['psnr']:.2f}", f"{mean[TRUE_CODE]['sam']:.2f}",
                     f"{mean[RESIDUAL]['psnr']:.2f}", f"{mean[RESIDUAL]['sam']:.2f}"])
    return _rows(["SpaAE", "true code: PSNR (dB)", "SAM (°)", "3 x residual from the prior's code: PSNR (dB)", "SAM (°)"],
                 rows)


ARMS = {"a": "a: nothing pretrained", "b": "b: pretrained SpaAE", "c": "c: pretrained SpaAE + RGB-pretrained UNet"}


def _arm_label(label: str) -> str:
    arm, _, seed = label.partition(" seed ")
    return f"{ARMS[arm]} (seed {seed})" if arm in ARMS else label


def ablation_table() -> str:
    """docs/results.md: every arm and the baseline on both splits' val scenes, per scene (pretraining_ablation.py)."""
    data = _json("pretraining_ablation.json")
    blocks = []
    for split, result in data["splits"].items():
        scenes = result["val_scenes"]
        rows = [[_arm_label(label), f"{row['psnr']:.2f}", f"{row['sam']:.2f}", f"{row['mrae']:.4f}", f"{row['rmse']:.4f}",
                 *(f"{result['per_scene'][label][s]['psnr']:.2f}" for s in scenes),
                 _budget_cell(row) if "steps" in row else "-"]
                for label, row in result["rows"].items()]
        header = ["model", "PSNR (dB)", "SAM (°)", "MRAE", "RMSE", *(f"{s.removesuffix('_ms')} (dB)" for s in scenes),
                  "steps / samples / wall-clock"]
        blocks.append(f"Split {split} ({result['train_scenes']} training scenes; {result['pipelines_scored']} "
                      f"pipelines scored on its val scenes, once each):\n\n" + _rows(header, rows))
        diffs = [[name, *(f"{diff[m]['mean']:+.{4 if m in ('mrae', 'rmse') else 2}f}" for m in ("psnr", "sam", "mrae", "rmse")),
                  *(f"{diff['psnr']['per_scene'][s]:+.2f}" for s in scenes)]
                 for name, diff in result["paired"].items()]
        blocks.append(f"Paired differences on split {split}, same seed unless named (PSNR up is better; SAM, MRAE, "
                      f"RMSE down):\n\n" + _rows(["difference", "PSNR (dB)", "SAM (°)", "MRAE", "RMSE",
                                                  *(f"{s.removesuffix('_ms')} (dB)" for s in scenes)], diffs))
    verdicts = [[name, ", ".join(f"{split} {value:+.2f}" for split, value in v["psnr_mean_difference"].items()),
                 "-" if v["seed_spread_psnr"] is None else f"{v['seed_spread_psnr']:.2f}",
                 "yes" if v["same_sign_on_every_split"] else "no", "yes" if v["counts"] else "no"]
                for name, v in data["verdicts"].items()]
    blocks.append("Verdicts (a difference counts if its sign holds on both splits and exceeds the largest seed spread "
                  "measured):\n\n" + _rows(["comparison", "mean PSNR difference (dB)", "seed spread (dB)",
                                             "same sign on both splits", "counts"], verdicts))
    return "\n".join(blocks)


def _scene(name: str) -> str:
    return name.removesuffix("_ms")


def ablation_targets() -> str:
    """docs/results.md and README: the ablation's targets, checked against its JSON (so no figure is typed in)."""
    data = _json("pretraining_ablation.json")
    splits = data["splits"]
    lines = []
    for name in ("c - a", "b - a", "c - b"):
        verdict = data["verdicts"].get(name)
        if verdict is None:
            continue
        means = ", ".join(f"{split} {value:+.2f} dB" for split, value in verdict["psnr_mean_difference"].items())
        lines.append(f"- {name}: {means}; seed spread {verdict['seed_spread_psnr']:.2f} dB; "
                     f"{'counts' if verdict['counts'] else 'does not count'}.")
    c_minus_a = data["verdicts"]["c - a"]["psnr_mean_difference"]
    reached = all(value >= 1.0 for value in c_minus_a.values())
    lines.append(f"- Target (c) - (a) >= 1 dB on both splits: {'reached' if reached else 'not reached'}.")
    for split, result in splits.items():
        row = result["rows"].get("c seed 0")
        if row is None:
            continue
        lost = [f"{_scene(s)} ({d:+.2f} dB)" for s, d in result["paired"]["c - baseline"]["psnr"]["per_scene"].items()
                if d < 0]
        won = len(result["val_scenes"]) - len(lost)
        lines.append(f"- Split {split}: (c) {row['psnr']:.2f} dB mean (target 35: "
                     f"{'reached' if row['psnr'] >= 35 else 'not reached'}); beats the baseline on {won} of "
                     f"{len(result['val_scenes'])} scenes" + (f", loses on {', '.join(lost)}." if lost else "."))
    return "\n".join(lines) + "\n"


PRIOR_CODE = "prior's code (root-polynomial spectra, encoded)"


def ceilings_table() -> str:
    """docs/results.md: per val scene of each split, what the autoencoders could carry (the true code's residual
    through SpeUAE and SpaAE) beside what arm c generated, the prior's code alone and the regression (PSNR, dB)."""
    ablation = _json("pretraining_ablation.json")["splits"]
    rows = []
    for split in ("std", "b"):
        trip = _json(f"spaae_roundtrip_split_{split}.json")
        result = ablation[split]
        baseline = next(iter(result["rows"]))
        for scene in [*result["val_scenes"], "mean"]:
            def cell(source: dict, key: str) -> str:
                return f"{(source['mean'][key] if scene == 'mean' else source['per_scene'][key][scene])['psnr']:.2f}"
            def scored(label: str) -> str:
                return f"{(result['rows'][label] if scene == 'mean' else result['per_scene'][label][scene])['psnr']:.2f}"
            rows.append([split, _scene(scene), scored(baseline), cell(trip, PRIOR_CODE), scored("c seed 0"),
                         cell(trip, RESIDUAL)])
    return _rows(["split", "val scene", "root-polynomial regression", "its code through the SpeUAE",
                  "arm c (generated residual)", "true residual through SpaAE and SpeUAE (ceiling)"], rows)


SPAAE_MODULES = ("EncoderTiny", "DecoderTiny", "Encoder", "Decoder")


def costs_table() -> str:
    """docs/results.md: parameters, GFLOP (and the SpaAE's share) and CPU seconds of arms a and c
    (compare_models.py --costs-only)."""
    rows = []
    for size in (256, 512):
        for label, row in _json(f"ablation_costs_{size}.json")["rows"].items():
            spaae = sum(v for k, v in row["gflops_by_module"].items() if k in SPAAE_MODULES)
            rows.append([f"{label} at {size} x {size}", f"{row['parameters']:,}", f"{row['gflops_per_step']:.2f}",
                         f"{row['gflops_per_image']:.2f}", f"{spaae:.2f} ({spaae / row['gflops_per_image']:.0%})",
                         f"{row['seconds_per_image']:.2f}"])
    return _rows(["model", "parameters", "GFLOP / step (UNet)", "GFLOP / image", "of which the SpaAE",
                  "s / image (2 CPU threads)"], rows)


def training_table() -> str:
    """docs/results.md: the RGB pre-training run (benchmarks/training_summary.py)."""
    data = _json("rgb_pretrain_cpu.json")
    rows = [[str(v["step"]), f"{v['val/loss']:.4f}"] for v in data["validations"]]
    head = (f"{data['steps']} steps, {data['samples']:,} crops, {data['seconds'] / 60:.1f} min of training on "
            f"{data['device']}; training loss (mean of the first / last {data['window']} steps) "
            f"{data['train_loss_first']:.4f} / {data['train_loss_last']:.4f}.\n\n")
    return head + _rows(["step", "held-out loss (fixed noise and timesteps)"], rows)


LARGE_IMAGES = (("large_images_baseline.json", "root-polynomial baseline"),
                ("large_images_uldm.json", "ULDM `checkpoints/uldm-cave` (diffusion at 512, the rest at full size)"),
                ("large_images_uldm_alone.json", "ULDM, the other jobs paused (diffusion at 512, the rest at full size)"))


def large_images_table() -> str:
    """docs/results.md: peak memory and seconds of `uldm reconstruct` from 1 to 48 MP, with the load average of the
    machine when each run began, then where the time of one run goes, the models side by side (large_images.py)."""
    rows, profiles = [], {}
    for name, label in LARGE_IMAGES:
        if not (RESULTS / name).exists():
            continue
        data = _json(name)
        for row in data["rows"]:
            rows.append([label, f"{row['width']} x {row['height']}", f"{row['megapixels']:.1f}",
                         f"{row['seconds']:.1f}", f"{row['peak_rss_gib']:.2f}",
                         _cell(row.get("load_average_before"), "{:.1f}")])
        if "profile" in data:
            profiles[label.split(" (")[0]] = data["profile"]
    table = _rows(["model", "image", "MP", "seconds (model loading included)", "peak memory (GiB)",
                   "load average at the start"], rows)
    if not profiles:
        return table
    longest_first = sorted(profiles.values(), key=lambda profile: -len(profile["parts"]))
    parts = list(dict.fromkeys(part for profile in longest_first for part in profile["parts"]))
    lines = [[part] + [_cell(profile["parts"].get(part), "{:.1f}") for profile in profiles.values()] for part in parts]
    lines.append(["(the writer's thread, alongside the above)"]
                 + [f"{profile['writer_thread_s']:.1f}" for profile in profiles.values()])
    lines.append(["**whole command**"] + [f"**{profile['seconds']:.1f}**" for profile in profiles.values()])
    header = ["seconds of one run at {:.0f} MP".format(next(iter(profiles.values()))["megapixels"]), *profiles]
    return table + "\n" + _rows(header, lines)


SPEED_NAMES = {"uldm": "ULDM `checkpoints/uldm-cave`", "mstpp": "MST++ `checkpoints/mstpp-cave`"}
SPEED_SHORT = {"uldm": "ULDM", "mstpp": "MST++"}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def speed_before_after_table() -> str:
    """docs/results.md: the side-by-side latencies and the ULDM's profile before and after the speed work, same
    command (inference_speed.py)."""
    before, after = _json("inference_speed_cpu_db0c55f.json"), _json("inference_speed_cpu_fp32.json")
    rows = []
    for size in after["side_by_side"]:
        old, new = before["side_by_side"][size], after["side_by_side"][size]
        rows.append([f"{size} x {size}", _ms(old["mstpp"]["seconds"]), _ms(old["uldm"]["seconds"]),
                     f"{old['uldm']['ratio_to_first']:.2f}", _ms(new["mstpp"]["seconds"]),
                     _ms(new["uldm"]["seconds"]), f"{new['uldm']['ratio_to_first']:.2f}"])
    side = _rows(["image", "MST++ ms (before)", "ULDM ms (before)", "ULDM / MST++ (before)", "MST++ ms (after)",
                  "ULDM ms (after)", "ULDM / MST++ (after)"], rows)
    sizes = list(after["side_by_side"])
    parts = list(after["profiles"][f"uldm@{sizes[0]}"])
    rows = [[part] + [_ms(data["profiles"][f"uldm@{size}"][part]) for size in sizes for data in (before, after)]
            for part in parts]
    header = ["ULDM, one call, ms"] + [f"{size}: {when}" for size in sizes for when in ("before", "after")]
    return side + "\n" + _rows(header, rows)


def speed_side_table() -> str:
    """README and docs/results.md: the models at their defaults, side by side (inference_speed.py)."""
    data = _json("inference_speed_cpu.json")
    rows = [[f"{size} x {size}", *(_ms(row["seconds"]) for row in models.values()),
             *(f"{row['ratio_to_first']:.2f}" for row in list(models.values())[1:])]
            for size, models in data["side_by_side"].items()]
    names = list(next(iter(data["side_by_side"].values())))
    short = [SPEED_SHORT.get(n, n) for n in names]
    return _rows(["image", *(f"{s} ms / image" for s in short), *(f"{s} / {short[0]}" for s in short[1:])], rows)


def speed_table() -> str:
    """docs/results.md: the side by side, then every configuration of the CPU speed run (inference_speed.py)."""
    data = _json("inference_speed_cpu.json")
    rows = []
    for row in data["configurations"]:
        label = [SPEED_NAMES.get(row["model"], row["model"]), str(row["resolution"]), row["dtype"],
                 row["variant"].replace("_", " ")]
        if "error" in row:
            rows.append(label + [f"failed: {row['error']}"] + ["-"] * 4)
            continue
        rates = ", ".join(f"{rate:.2f} (batch {batch})" for batch, rate in row["throughput"].items())
        rows.append(label + [f"{row['ms_per_image_batch1']:.0f}", rates, f"{row['gflops_per_image']:.1f}",
                             f"{row['achieved_tflops'] * 1000:.0f}",
                             f"{row['warmup_seconds']:.0f}" if row["variant"] == "compile" else "-"])
    header = ["model", "image", "dtype", "variant", "ms / image (batch 1)", "images / s", "GFLOP / image",
              "achieved GFLOP/s", "compile s"]
    return speed_side_table() + "\n" + _rows(header, rows)


FLOP_PARTS = {"UNet2DConditionModel": "UNet", "EncoderTiny": "SpaAE encoder", "Encoder": "SpaAE encoder",
              "DecoderTiny": "SpaAE decoder", "Decoder": "SpaAE decoder"}
SCAFFOLD_NAMES = {"sd21-tiny": "SD 2.1 UNet + AutoencoderTiny (random weights)",
                  "sd21-kl": "SD 2.1 UNet + AutoencoderKL (random weights)"}


def flops_table() -> str:
    """docs/results.md: GFLOP per 512 x 512 image by component (FlopCounterMode, inference_speed.py), and the time
    that many FLOPs take at the H200's datasheet bf16 peak: a bound, not a measurement."""
    peak = runpy.run_path(str(REPO / "benchmarks" / "inference_speed.py"))["PEAKS"]["H200"]["bf16"]
    rows = [row for row in _json("inference_speed_cpu.json")["configurations"]
            if row["model"] == "uldm" and row["resolution"] == 512][:1]
    rows += _json("inference_speed_sd21_cpu.json")["configurations"]
    out = []
    for row in rows:
        parts = {"UNet": 0.0, "SpaAE encoder": 0.0, "SpaAE decoder": 0.0, "rest": 0.0}
        for module, gflops in row["gflops_by_module"].items():
            parts[FLOP_PARTS.get(module, "rest")] += gflops
        name = SCAFFOLD_NAMES.get(row["model"], SPEED_NAMES.get(row["model"], row["model"]))
        out.append([name, *(f"{value:.1f}" for value in parts.values()), f"{row['gflops_per_image']:.1f}",
                    f"{row['gflops_per_image'] / peak:.2f}"])
    return _rows(["model (1 step, 512 x 512)", "UNet", "SpaAE encoder", "SpaAE decoder", "rest", "GFLOP / image",
                  f"ms at {peak:g} TFLOP/s"], out)


def physical_spectra_table() -> str:
    """docs/results.md: what share of a photo's pixels get unphysical spectra, raw and made physical, per model,
    photo set and size (benchmarks/physical_spectra.py: as they are, and with --max-side 256)."""
    rows, full_size = [], _json("physical_spectra.json")
    runs = [(full_size, "as they are"), (_json("physical_spectra_256.json"), "longer side 256")]
    for name, size in (("physical_spectra_srgb.json", "as they are"),
                       ("physical_spectra_srgb_256.json", "longer side 256")):
        if (RESULTS / name).exists():  # the model for sRGB photos (`--models uldm-srgb`)
            runs.append((_json(name), size))
    larges = [data["large"] for data, _ in runs if data.get("large")]
    for data, size in runs:
        for model, sets in data["results"].items():
            for name, row in sets.items():
                if not isinstance(row, dict) or "raw" not in row:
                    continue
                raw, physical = row["raw"], row["physical"]
                rows.append([model, f"{name} ({row['images']})", size,
                             f"{raw['negative']:.2f} % → {physical['negative']:.2f} %",
                             f"{raw['above_one']:.2f} % → {physical['above_one']:.2f} %", f"{raw['min']:.3f}",
                             f"{physical['out_of_gamut']:.2f} %", f"{physical['in_gamut_rgb_error']:.1e}",
                             f"+{row['projection_overhead_percent']:.1f} %"])
    for large in larges:  # --large-megapixels: the ULDM's composition on one enlarged photo
        height, width = large["size"]
        rows.append([large.get("model", "ULDM"), large["image"], f"{width} x {height}", "-", "-", "-",
                     f"{large['out_of_gamut']:.2f} %",
                     "-", f"+{large['projection_overhead_percent']:.1f} %"])
    return _rows(["model", "photos", "size", "band < -0.01 (raw → physical)", "band > 1.01 (raw → physical)",
                  "most negative (raw)", "out of gamut (flagged)", "in-gamut RGB error", "projection's cost"], rows)


CROSSVAL_ORDER = ("regression", "scene-mixture-nocontext-sharp", "scene-mixture-sharp", "scene-mixture-nocontext",
                  "scene-mixture", "uldm-c-prior-only", "uldm-c", "uldm-b-prior-only", "uldm-b",
                  "uldm-scene-mixture-prior-only", "uldm-scene-mixture", "uldm-scene-mixture-seed1",
                  "uldm-scene-mixture-weighted", "mstpp", "r2hdiff")
# rows that only split or repeat another recipe's score (its prior alone, another seed): docs/results.md only
DIAGNOSTIC_SUFFIXES = ("-prior-only", "-seed1")


def _crossval_runs() -> list[dict[str, Any]]:
    """Every cross-validation summary (benchmarks/crossval.py), in CROSSVAL_ORDER, then any other by name."""
    found = {path.stem.removeprefix("crossval_"): path for path in RESULTS.glob("crossval_*.json")}
    if "regression" not in found:
        raise FileNotFoundError(2, "missing", str(RESULTS / "crossval_regression.json"))
    names = [n for n in CROSSVAL_ORDER if n in found] + sorted(set(found) - set(CROSSVAL_ORDER))
    return [json.loads(found[name].read_text()) for name in names]


def _mean_psnr(per_scene: dict[str, dict[str, float]]) -> float:
    """The mean PSNR of a fold's {scene: metrics}."""
    return sum(row["psnr"] for row in per_scene.values()) / len(per_scene)


def _fit_cell(summary: dict[str, Any]) -> str:
    """How long a recipe took to fit per fold: seconds for the fitted ones, the training budget for trained ones."""
    folds = summary["folds"]
    budgets = [fold["record"].get("budgets") for fold in folds if fold["record"].get("budgets")]
    if not budgets:
        return f"{sum(fold['fit_seconds'] for fold in folds) / len(folds):.0f} s per fold"
    seconds = [sum(run.get("seconds", 0) for run in budget.values()) for budget in budgets]
    return f"{sum(seconds) / len(seconds) / 60:.0f} min of training per fold (shared pre-training included)"


def crossval_table(diagnostics: bool = True) -> str:
    """docs/results.md: every recipe of the leave-scenes-out cross-validation (crossval.py); README and card
    (`diagnostics=False`): without the rows that only split or repeat a ULDM's score (DIAGNOSTIC_SUFFIXES)."""
    rows = []
    for summary in _crossval_runs():
        if not diagnostics and summary["recipe"].endswith(DIAGNOSTIC_SUFFIXES):
            continue
        mean, versus = summary["mean"], summary.get("vs_regression")
        rows.append([f"`{summary['recipe']}`: {summary['description']}", f"{mean['psnr']:.2f}", f"{mean['sam']:.2f}",
                     f"{mean['mrae']:.4f}", f"{mean['rmse']:.4f}",
                     "-" if versus is None else f"{versus['mean_psnr_difference']:+.2f}",
                     "-" if versus is None else f"{versus['scenes_won']} / {summary['scenes']}",
                     "-" if versus is None else f"{versus['worst_psnr_difference']:+.2f}", _fit_cell(summary)])
    return _rows(["recipe", "PSNR (dB)", "SAM (°)", "MRAE", "RMSE", "Δ PSNR vs regression (dB)", "scenes won",
                  "worst scene Δ (dB)", "fit"], rows)


def crossval_scenes_table() -> str:
    """docs/results.md: PSNR of every scene under every cross-validated recipe (crossval.py)."""
    runs = _crossval_runs()
    scenes = sorted(runs[0]["per_scene"])
    rows = [[_scene(name), *(f"{run['per_scene'][name]['psnr']:.2f}" if name in run["per_scene"] else "-"
                             for run in runs)] for name in scenes]
    return _rows(["scene", *(f"`{run['recipe']}`" for run in runs)], rows)


def crossval_partial_table() -> str:
    """docs/results.md: recipes whose folds are not all scored yet, fold by fold beside the regression on the same
    scenes (benchmarks/results/crossval/<recipe>/fold<k>.json): progress, not a result."""
    folder = RESULTS / "crossval"
    complete = {path.stem.removeprefix("crossval_") for path in RESULTS.glob("crossval_*.json")}
    rows = []
    for recipe in sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in complete):
        for path in sorted((folder / recipe).glob("fold*.json")):
            fold = json.loads(path.read_text())
            base = json.loads((folder / "regression" / path.name).read_text())
            mean = _mean_psnr(fold["per_scene"])
            ref = sum(base["per_scene"][name]["psnr"] for name in fold["per_scene"]) / len(fold["per_scene"])
            won = sum(row["psnr"] > base["per_scene"][name]["psnr"] for name, row in fold["per_scene"].items())
            rows.append([f"`{recipe}`", str(fold["fold"]), ", ".join(_scene(n) for n in fold["per_scene"]),
                         f"{mean:.2f}", f"{ref:.2f}", f"{won} / {len(fold['per_scene'])}",
                         f"{fold['fit_seconds']:.0f} s"])
    return _rows(["recipe", "fold", "scenes", "PSNR (dB)", "regression (dB)", "scenes won", "fit"], rows)


def crossval_uncertainty_table() -> str:
    """docs/results.md: how well a pipeline's ensemble spread predicts its error, per pixel, on the scenes its
    folds never saw (crossval.py --uncertainty E)."""
    rows = []
    for summary in _crossval_runs():
        found = summary.get("uncertainty")
        if found is None:
            continue
        missing = ", ".join(str(fold) for fold in found.get("missing_folds", [])) or "none"
        rows.append([f"`{summary['recipe']}`", str(found["ensemble_size"]),
                     str(found.get("scenes", len(found["spearman_per_scene"]))), missing,
                     f"{found['mean_spearman']:.3f}", f"{min(found['spearman_per_scene'].values()):.3f}",
                     f"{found['pooled_spearman']:.3f}"])
    if not rows:
        return "(no recipe measured yet: `python benchmarks/crossval.py --recipe NAME --uncertainty E`)"
    return _rows(["recipe", "ensemble", "scenes", "folds left out", "Spearman, mean over scenes", "lowest scene",
                  "Spearman, pooled pixels"], rows)


@functools.lru_cache(maxsize=None)
def _crossval_module() -> dict[str, Any]:
    """benchmarks/crossval.py's names (COMPARISONS, paired_psnr), run once: it imports torch and uldm."""
    return runpy.run_path(str(REPO / "benchmarks" / "crossval.py"))


def crossval_comparisons_table() -> str:
    """docs/results.md and README: the paired comparisons of crossval.COMPARISONS whose two recipes are complete,
    scene by scene over the 25 scenes (physical spectra, the default output)."""
    crossval = _crossval_module()
    runs = {run["recipe"]: run for run in _crossval_runs()}
    rows = []
    for recipe, other, meaning in crossval["COMPARISONS"]:
        if recipe in runs and other in runs:
            versus = crossval["paired_psnr"](runs[recipe]["per_scene"], runs[other]["per_scene"], "scenes_won")
            rows.append([f"`{recipe}` − `{other}`", meaning, f"{versus['mean_psnr_difference']:+.2f}",
                         f"{versus['scenes_won']} / {len(versus['psnr_difference_per_scene'])}",
                         f"{versus['worst_psnr_difference']:+.2f}"])
    return _rows(["pair", "what the difference measures", "mean Δ PSNR (dB)", "scenes won", "worst scene Δ (dB)"],
                 rows)


def crossval_physical_table() -> str:
    """docs/results.md: the physical spectra (the default output) against the model's raw estimate, paired per
    scene, for every recipe's folds scored both ways so far (crossval.py's `per_scene` and `per_scene_raw`)."""
    paired_psnr = _crossval_module()["paired_psnr"]
    rows = []
    for folder in sorted(p for p in (RESULTS / "crossval").iterdir() if p.is_dir()):
        folds = [json.loads(path.read_text()) for path in sorted(folder.glob("fold*.json"))]
        physical = {name: row for fold in folds if "per_scene_raw" in fold for name, row in fold["per_scene"].items()}
        raw = {name: row for fold in folds if "per_scene_raw" in fold for name, row in fold["per_scene_raw"].items()}
        if not physical:
            continue
        versus = paired_psnr(physical, raw, "scenes_better")
        rows.append([f"`{folder.name}`", str(len(physical)), f"{versus['mean_psnr_difference']:+.4f}",
                     str(versus["scenes_better"]), str(versus["scenes_worse"]),
                     f"{versus['worst_psnr_difference']:+.4f}"])
    return _rows(["recipe", "scenes scored both ways", "mean Δ PSNR, physical − raw (dB)", "scenes better",
                  "scenes worse", "worst scene Δ (dB)"], rows)


def crossval_weights_table() -> str:
    """docs/results.md: per fold, the inner check that weights the generated residual (crossval.py's
    `weighted_residual`): the inner model's mean PSNR on its 5 held-out training scenes at each weight, the weight
    chosen, and what the fold's own val scenes then score with it, as trained (weight 1) and with the prior alone."""
    folder = RESULTS / "crossval"

    def fold_mean(recipe: str, name: str) -> str:
        path = folder / recipe / name
        return f"{_mean_psnr(json.loads(path.read_text())['per_scene']):.2f}" if path.exists() else "-"

    rows, weights = [], ""
    for path in sorted((folder / "uldm-scene-mixture-weighted").glob("fold*.json")):
        fold = json.loads(path.read_text())
        record, name = fold["record"], path.name
        weights = " / ".join(record["inner_psnr"])
        inner = " / ".join(f"{psnr:.2f}" for psnr in record["inner_psnr"].values())
        rows.append([str(fold["fold"]), inner, f"{record['code_residual_weight']:g}", fold_mean(path.parent.name, name),
                     *(fold_mean(recipe, name) for recipe in ("uldm-scene-mixture", "uldm-scene-mixture-prior-only",
                                                               "regression"))])
    if not rows:
        return "(no fold scored yet: `python benchmarks/crossval.py --recipe uldm-scene-mixture-weighted --train`)"
    return _rows(["fold", f"inner PSNR at weight {weights} (dB)", "weight chosen", "fold's val: weighted (dB)",
                  "weight 1 (dB)", "prior alone (dB)", "regression (dB)"], rows)


TABLES: dict[str, tuple[Path, Callable[[], str]]] = {
    "crossval-weights": (REPO / "docs" / "results.md", crossval_weights_table),
    "crossval-partial": (REPO / "docs" / "results.md", crossval_partial_table),
    "crossval": (REPO / "docs" / "results.md", crossval_table),
    "crossval-scenes": (REPO / "docs" / "results.md", crossval_scenes_table),
    "crossval-physical": (REPO / "docs" / "results.md", crossval_physical_table),
    "crossval-comparisons": (REPO / "docs" / "results.md", crossval_comparisons_table),
    "crossval-uncertainty": (REPO / "docs" / "results.md", crossval_uncertainty_table),
    "crossval-summary": (REPO / "README.md", lambda: crossval_table(diagnostics=False)),
    "physical-spectra": (REPO / "docs" / "results.md", physical_spectra_table),
    "results": (REPO / "docs" / "results.md", results_table),
    "peers": (REPO / "docs" / "results.md", peers_table),
    "spaae-roundtrip": (REPO / "docs" / "results.md", roundtrip_table),
    "ablation": (REPO / "docs" / "results.md", ablation_table),
    "ablation-targets": (REPO / "docs" / "results.md", ablation_targets),
    "ablation-ceilings": (REPO / "docs" / "results.md", ceilings_table),
    "ablation-summary": (REPO / "README.md", ablation_targets),
    "ablation-costs": (REPO / "docs" / "results.md", costs_table),
    "rgb-pretrain": (REPO / "docs" / "results.md", training_table),
    "large-images": (REPO / "docs" / "results.md", large_images_table),
    "speed-before-after": (REPO / "docs" / "results.md", speed_before_after_table),
    "speed-cpu": (REPO / "docs" / "results.md", speed_table),
    "speed-summary": (REPO / "README.md", speed_side_table),
    "speed-flops": (REPO / "docs" / "results.md", flops_table),
}


def block(name: str) -> re.Pattern:
    # the name ends at a space or the comment's end: "crossval" must not match "crossval-weights"
    return re.compile(rf"(<!-- table:{re.escape(name)}(?=\s|-->)[^\n]*-->\n)(.*?)(<!-- /table:{re.escape(name)} -->)", re.S)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a table differs from its JSON")
    args = parser.parse_args(argv)
    status = 0
    for name, (document, make) in TABLES.items():
        text = document.read_text()
        match = block(name).search(text)
        if match is None:
            print(f"{document}: no <!-- table:{name} --> block", file=sys.stderr)
            status = 1
            continue
        try:
            expected = make()
        except FileNotFoundError as exc:
            print(f"table {name}: {exc.filename} is missing; left as it is", file=sys.stderr)
            status = 1 if args.check else status
            continue
        if match[2] == expected:
            continue
        if args.check:
            print(f"{document}: table {name} differs from its JSON; run benchmarks/docs_tables.py", file=sys.stderr)
            status = 1
        else:
            document.write_text(text[:match.start(2)] + expected + text[match.end(2):])
            print(f"wrote table {name} in {document}")
    return status


if __name__ == "__main__":
    sys.exit(main())
