"""Peak memory of restoration at 1x, 4x and 16x output area, tiled vs untiled.

Each (mode, size) runs in a fresh subprocess, so every ``ru_maxrss`` (peak resident memory) belongs to
one restoration only. ``baseline`` is the peak after loading the model and restoring a 16x16 warm-up
image; ``working`` = peak - baseline is what the image itself cost. With tiling the transformer and the
VAE only ever see one tile, so the working memory grows with the few bytes per pixel of the image
buffers, not with attention over the whole image (the untiled rows show that growth).

    .venv/bin/python benchmarks/restore_tiling.py --json            # tiny model on the CPU (~1-2 min)
    .venv/bin/python benchmarks/restore_tiling.py --json --device cuda --dtype bfloat16   # + peak CUDA memory

Prints one JSON object with --json (else a table): per mode and size the output pixels, peak / baseline /
working RSS in MiB, seconds, and ratios of each size to 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"1x": 1, "4x": 2, "16x": 4}  # area factor -> side factor


def child(args: argparse.Namespace) -> None:
    """Restore one image of side ``args.side`` and print the measurements as JSON."""
    import resource
    import time

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from fluxir.parameters.config import load_params
    from fluxir.restoration.files import split_params
    from fluxir.restoration.sampler import Restorer

    tiled = args.mode == "tiled"
    # conf/base's restore settings (every field), this run's own after them
    config = split_params(
        {
            **load_params("base", [], REPO)["restore"],
            "steps": args.steps,
            "scale": args.scale,
            "dtype": args.dtype,
            "device": args.device,
            "color_fix": "wavelet",
            "tile_size": args.tile if tiled else None,
            "tile_overlap": args.tile_overlap,
            "vae_tile_size": args.vae_tile if tiled else None,
            "vae_tile_overlap": args.vae_tile_overlap,
        }
    )[1]
    restorer = Restorer.from_source(args.model, None, config)
    restorer.restore(np.zeros((16, 16, 3), np.uint8))  # warm-up: one-time allocations belong to the baseline
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    lq = np.random.default_rng(0).integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)
    start = time.perf_counter()
    out = restorer.restore(lq)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "out_pixels": int(out.shape[0] * out.shape[1]),
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(baseline, 1),
        "working_rss_mb": round(peak - baseline, 1),
        "seconds": round(seconds, 2),
    }
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


def run_one(args: argparse.Namespace, mode: str, side: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--side", str(side)]
    for name in (
        "model",
        "steps",
        "scale",
        "tile",
        "tile_overlap",
        "vae_tile",
        "vae_tile_overlap",
        "dtype",
        "device",
        "threads",
    ):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} side {side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", default=str(REPO / "data/01_raw/tiny/flux"), help="Flux pipeline folder or hub id")
    parser.add_argument("--base", type=int, default=64, help="LQ side at 1x (output side = base x scale)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256, help="diffusion tile (output pixels)")
    parser.add_argument("--tile-overlap", type=int, default=64)
    parser.add_argument("--vae-tile", type=int, default=256)
    parser.add_argument("--vae-tile-overlap", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="tiled,untiled", help="comma-separated: tiled, untiled")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="tiled", help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    report: dict = {
        "model": args.model,
        "lq_side_1x": args.base,
        "scale": args.scale,
        "steps": args.steps,
        "tile_size": args.tile,
        "tile_overlap": args.tile_overlap,
        "vae_tile_size": args.vae_tile,
        "vae_tile_overlap": args.vae_tile_overlap,
        "device": args.device,
        "dtype": args.dtype,
    }
    for mode in args.modes.split(","):
        rows = {name: run_one(args, mode, args.base * k) for name, k in SIZES.items()}
        for key in ("peak_rss_mb", "working_rss_mb", "peak_cuda_mb"):
            if key in rows["1x"]:
                for name in ("4x", "16x"):
                    rows[f"{key.removesuffix('_mb')}_ratio_{name}"] = round(
                        rows[name][key] / max(rows["1x"][key], 1.0), 2
                    )
        rows["peak_sublinear"] = rows["peak_rss_ratio_16x"] < 16 and rows["peak_rss_ratio_4x"] < 4
        report[mode] = rows
    if args.json:
        print(json.dumps(report))
        return
    for mode in args.modes.split(","):
        print(f"{mode}:")
        for name in SIZES:
            r = report[mode][name]
            print(
                f"  {name:>3}  {r['out_pixels'] / 1e6:6.2f} MP  peak {r['peak_rss_mb']:8.1f} MiB  working "
                f"{r['working_rss_mb']:8.1f} MiB  {r['seconds']:7.2f} s"
            )
        print(f"  peak ratios 4x {report[mode]['peak_rss_ratio_4x']}, 16x {report[mode]['peak_rss_ratio_16x']}")


if __name__ == "__main__":
    main()
