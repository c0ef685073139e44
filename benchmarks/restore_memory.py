"""Memory and speed of the low-memory restore modes (``restore.offload`` / ``restore.quantize``).

Every mode restores the same image with a Flux that has FLUX.1-dev's 19 + 38 blocks at a small width
(random seeded weights, bf16, r = 4 adapter, tiny VAE), each in a fresh subprocess so its memory figures
are its own. Per mode:

- ``weights_rss_mib``: resident memory added by building the models in that mode (CPU RSS after the
  restorer is built minus before): this is where quantisation shows on the CPU;
- ``restore_peak_rss_mib``: the highest RSS sampled (every 2 ms) while restoring, minus the same baseline;
- ``linear_weight_mib``: bytes of the transformer's linear weights as stored (incl. quantisation scales);
- ``step_s``: median seconds per Euler step; ``step_ratio`` = step_s / step_s of ``none`` in this run;
- ``accelerator_peak_mib`` (CUDA only): ``torch.cuda.max_memory_allocated`` over the restore.

On a CPU the offload modes cannot lower RSS (the CPU is both the home and the execution device); their
rows prove the hooks run and what they cost. ``flux1_dev_1024_estimate`` gives the accelerator peak each
mode would need for FLUX.1-dev at 1024x1024, computed from parameter counts (meta device) and marked as
an estimate: replace it with a CUDA run (``--device cuda``) when a GPU is available.

    .venv/bin/python benchmarks/restore_memory.py --json                 # CPU, ~1-2 min
    .venv/bin/python benchmarks/restore_memory.py --json --device cuda   # + accelerator peaks, real ratios
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {  # name -> (offload, quantize)
    "none": ("none", "none"),
    "model": ("model", "none"),
    "sequential": ("sequential", "none"),
    "int8": ("none", "int8"),
    "fp8": ("none", "fp8"),
    "nf4": ("none", "nf4"),
    "model+int8": ("model", "int8"),
}
GIB = 2**30


def scaled_config(width: int) -> dict:
    """FLUX.1-dev's config at ``width`` channels (heads of 32); rope axes scaled to the head size."""
    return {
        "num_attention_heads": width // 32,
        "attention_head_dim": 32,
        "joint_attention_dim": 64,
        "pooled_projection_dim": 64,
        "axes_dims_rope": [8, 12, 12],
    }


def child(args: argparse.Namespace) -> None:
    """Build the restorer for ``args.mode``, restore once, print the measurements as JSON."""
    import threading
    import time

    import numpy as np
    import psutil
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.flux import build_tiny_vae, build_transformer, fixed_prompt_embeddings
    from fluxir.parameters.config import load_params
    from fluxir.restoration.files import split_params
    from fluxir.restoration.lowmem import linear_weight_bytes
    from fluxir.restoration.sampler import Restorer

    torch.set_num_threads(args.threads)
    process = psutil.Process()
    offload, quantize = MODES[args.mode]
    build_tiny_vae(0)  # import what building imports lazily (diffusers' model classes) before the baseline
    baseline = resident(process)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: no float32 copy inflates the peak
    try:
        flux = build_transformer("flux1_dev_transformer", seed=0, **scaled_config(args.width))
        vae = build_tiny_vae(0)
    finally:
        torch.set_default_dtype(default)
    prompt, pooled = fixed_prompt_embeddings(flux, seq_len=8)
    base = load_params("base", [], REPO)
    adapter = FluxIRAdapter.from_flux(flux, **{**base["train"]["adapter"], "text_seq_len": 8, "rank": 4})
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config
    # conf/base's restore settings (every field), this run's own after them
    cfg = split_params(
        {
            **base["restore"],
            "steps": args.steps,
            "dtype": "bfloat16",
            "device": args.device,
            "tile_size": None,
            "vae_tile_size": None,
            "color_fix": "none",
            "offload": offload,
            "quantize": quantize,
        }
    )[1]
    restorer = Restorer(flux, vae, scheduler, prompt, pooled, adapter, cfg)
    del flux, vae, adapter
    weights = resident(process) - baseline

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    lq = np.random.default_rng(0).integers(0, 256, (args.side // 4, args.side // 4, 3), dtype=np.uint8)
    restorer.restore(lq)  # warm-up (first calls allocate workspaces)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []

    def on_step(done_steps: int, total: int) -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    restorer.restore(lq, on_step=on_step)
    done.set()
    sampler.join()
    steps = np.diff([start, *stamps])[1:]  # the first interval also holds the VAE encode
    print(
        json.dumps(
            {
                "mode": args.mode,
                "offload": offload,
                "quantize": quantize,
                "weights_rss_mib": round(weights / 2**20, 1),
                "restore_peak_rss_mib": round((peak[0] - baseline) / 2**20, 1),
                "linear_weight_mib": round(linear_weight_bytes(restorer.transformer) / 2**20, 2),
                "step_s": float(np.median(steps)),
                "accelerator_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if args.device == "cuda"
                else None,
            }
        )
    )


def resident(process) -> int:
    """RSS in bytes after handing freed heap back to the OS (glibc keeps freed small blocks otherwise, so a
    bf16 weight replaced by its int8 copy would still count)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return process.memory_info().rss


def flux1_dev_estimate() -> dict:
    """Accelerator peak (GiB) of each mode for FLUX.1-dev at 1024x1024, from parameter counts: an estimate."""
    import torch
    from torch import nn

    from fluxir.models.flux import build_transformer

    flux = build_transformer("flux1_dev_transformer", device="meta")
    total = sum(p.numel() for p in flux.parameters())
    linear = sum(m.weight.numel() for m in flux.modules() if isinstance(m, nn.Linear))
    rows = sum(m.weight.shape[0] for m in flux.modules() if isinstance(m, nn.Linear))
    other = total - linear  # biases, norms, embeddings stay bf16
    bf16 = 2 * total
    weights = {
        "none": bf16,
        "model": bf16,
        "int8": linear + 2 * rows + 2 * other,  # 1 byte + one bf16 scale per output row
        "fp8": linear + 4 * rows + 2 * other,  # 1 byte + one float32 scale per row
        "nf4": linear // 2 + linear // 64 * 4 + 2 * other,  # 4 bits + one float32 absmax per 64 weights
        "model+int8": linear + 2 * rows + 2 * other,
        # one leaf module at a time: the largest linear (single block proj_out, 15360 x 3072) in bf16
        "sequential": 2 * max(m.weight.numel() for m in flux.modules() if isinstance(m, nn.Linear)),
    }
    adapter = 2 * 405e6  # r = 32 adapter in bf16 (benchmarks/adapter_size.py), always resident
    activations = 2.0 * GIB  # 4608 tokens x 3072 x bf16 per tensor; attention and MLP temporaries of one block
    vae_and_embeds = 0.5 * GIB
    del torch
    return {
        "note": "ESTIMATE (no GPU measurement yet): weights from parameter counts + 0.8 GB adapter + ~2 GiB "
        "activations + 0.5 GiB VAE/embeddings; time ratios assume PCIe Gen4 (~25 GB/s) and a "
        "~0.6 s bf16 step on an H100-class card",
        "flux_params": total,
        "peak_gib": {mode: round((w + adapter) / GIB + 2.0 + 0.5, 1) for mode, w in weights.items()},
        "step_ratio_vs_none": {
            "model": round(1 + (bf16 / 25e9) / (20 * 0.6), 2),  # one transformer upload per 20-step image
            "sequential": round(1 + (bf16 / 25e9) / 0.6, 2),  # every weight crosses the bus at every step
            "int8": "unknown until measured (torchao weight-only int8; fast with torch.compile)",
            "fp8": "unknown until measured (needs compute capability >= 8.9)",
            "nf4": "unknown until measured (bitsandbytes dequantises per matmul)",
        },
        "targets": {"int8_or_fp8_peak_gib": 16, "model_peak_gib": 24, "step_ratio": 1.5},
        "activations_gib_assumed": activations / GIB,
        "vae_and_embeds_gib_assumed": vae_and_embeds / GIB,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--width", type=int, default=256, help="transformer width (multiple of 32)")
    parser.add_argument("--side", type=int, default=128, help="output side in pixels (input = side / 4)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = parser.parse_args(argv)
    if args.mode:
        child(args)
        return
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if "none" not in modes:
        modes.insert(0, "none")  # the reference of every ratio
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO / "src")}
    rows = {}
    for mode in modes:
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--device",
            args.device,
            "--width",
            str(args.width),
            "--side",
            str(args.side),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            rows[mode] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            continue
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = rows["none"]
    for row in rows.values():
        if "step_s" in row and "step_s" in ref:
            row["step_ratio"] = round(row["step_s"] / ref["step_s"], 3)
            row["weights_rss_ratio"] = round(row["weights_rss_mib"] / ref["weights_rss_mib"], 3)
            row["linear_weight_ratio"] = round(row["linear_weight_mib"] / ref["linear_weight_mib"], 3)
    result = {
        "device": args.device,
        "flux": f"19 + 38 blocks, width {args.width}, bf16",
        "output": args.side,
        "steps": args.steps,
        "modes": rows,
        "flux1_dev_1024_estimate": flux1_dev_estimate(),
    }
    if args.json:
        print(json.dumps(result))
        return
    for mode, row in rows.items():
        print(mode, json.dumps(row))
    print(json.dumps(result["flux1_dev_1024_estimate"], indent=1))


if __name__ == "__main__":
    main()
