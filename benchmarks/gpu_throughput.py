"""FluxIR throughput on one GPU: full-size FLUX.1-dev (random bf16 weights) + the r = 32 adapter.

    python benchmarks/gpu_throughput.py --json                # on a CUDA machine (~3-5 min on an H100)
    python benchmarks/gpu_throughput.py --dry-run --json      # tiny models on CPU: proves the code path

For 1024x768 and 1024x1024 (W x H; 3072 / 4096 image tokens, 512 text tokens, batch 1) it reports

- seconds per denoising step, Flux alone (the reference, same run) and Flux + FluxIR, and seconds per
  20-step image (VAE encode of the LQ image + 20 controlled steps + VAE decode);
- seconds per training step (forward, backward, AdamW on the adapter; Flux frozen; bf16 autocast with
  fp32 adapter weights), without and with a pixel loss through the VAE decoder (Sec. 3.3's L_P; here
  an MSE on the decoded x0 estimate, which costs what any pixel loss through the decoder costs);
- peak GPU memory of each measurement;
- the low-memory restore modes (``--restore-modes``: ``restore.offload`` / ``restore.quantize``, see
  docs/restoration.md): for each, a ``Restorer`` on a fresh copy of the same Flux restores one
  256 -> 1024x1024 image (untiled, 2 steps); seconds per step relative to ``none`` and the accelerator
  peak (``torch.cuda.max_memory_allocated``, weights included) over the restore;
- MFU = model FLOPs / time / --peak-flops (default 989e12: H100 SXM dense bf16). FLOPs are counted with
  FlopCounterMode on the meta device for the same call (recomputation by gradient checkpointing is
  not counted, as usual for MFU).

No weights are downloaded: Flux, the adapter and the VAE (FLUX.1-dev's VAE config) are random. Training
first runs without gradient checkpointing and falls back to it on out-of-memory (``--gradient-checkpointing
auto``). A wall-clock budget (``--budget-s``) skips what would not fit.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fluxir.models.adapter import FluxIRAdapter, controlled_flux_forward, count_parameters, freeze_flux
from fluxir.models.flux import load_config

# black-forest-labs/FLUX.1-dev vae/config.json
FLUX_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu",
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "force_upcast": True,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}
FULL = {"flux": "flux1_dev_transformer", "vae": FLUX_VAE_CONFIG, "resolutions": [(1024, 768), (1024, 1024)],
            "text_len": 512, "vae_scale": 8}
DRY = {"flux": "tiny_flux_transformer", "vae": None, "resolutions": [(64, 48), (64, 64)], "text_len": 8, "vae_scale": 8}
DENOISE_STEPS = 20


def build_models(spec: dict, device: str, rank: int, seed: int = 0):
    """Frozen bf16 Flux + VAE, trainable fp32 adapter, bf16 copy of the adapter for inference."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build Flux directly in bf16 (never 48 GB of fp32)
    try:
        with torch.device(device):
            flux = FluxTransformer2DModel(**load_config(spec["flux"]))
            vae = AutoencoderKL(**(spec["vae"] or load_config("tiny_vae")))
    finally:
        torch.set_default_dtype(default)
    freeze_flux(flux)
    vae.requires_grad_(False).eval()
    adapter = FluxIRAdapter.from_flux(flux, rank=rank, text_seq_len=spec["text_len"]).float()
    adapter_infer = FluxIRAdapter.from_flux(flux, config=adapter.config).requires_grad_(False)
    if device != "meta":
        adapter_infer.load_state_dict(adapter.state_dict())
    return flux, vae, adapter, adapter_infer


def make_batch(flux, vae, width: int, height: int, text_len: int, vae_scale: int, device: str,
               seed: int = 0) -> dict[str, Any]:
    """One training / sampling example in FluxPipeline's conventions (packed latents, ids, t, guidance)."""
    from diffusers import FluxPipeline

    cfg = flux.config
    h, w = 2 * (height // (vae_scale * 2)), 2 * (width // (vae_scale * 2))  # latent size
    c = vae.config.latent_channels
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, dtype=torch.bfloat16):
        if device == "meta":
            return torch.empty(*shape, device="meta", dtype=dtype)
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    def pack(x):
        return FluxPipeline._pack_latents(x, x.shape[0], c, h, w)

    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    if device != "meta":
        ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
        ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
    return {
        "z0": pack(rnd(1, c, h, w)), "z1": pack(rnd(1, c, h, w)), "lq": pack(rnd(1, c, h, w)),
        "hq_image": rnd(1, 3, height, width).clamp(-1, 1), "lq_image": rnd(1, 3, height, width).clamp(-1, 1),
        "prompt": rnd(1, text_len, cfg.joint_attention_dim), "pooled": rnd(1, cfg.pooled_projection_dim),
        "t": torch.full((1,), 0.5, device=device), "guidance": torch.full((1,), 3.5, device=device),
        "img_ids": ids.reshape(-1, 3), "txt_ids": torch.zeros(text_len, 3, device=device),
        "width": width, "height": height, "vae_scale": vae_scale,
    }


def denoise_step(flux, adapter, b: dict) -> torch.Tensor:
    """One sampling step's transformer call (adapter=None: plain diffusers Flux, the reference)."""
    t = b["t"][:, None, None]
    z_t = ((1 - t) * b["z0"] + t * b["z1"]).to(b["z0"].dtype)
    if adapter is None:
        return flux(hidden_states=z_t, encoder_hidden_states=b["prompt"], pooled_projections=b["pooled"],
                    timestep=b["t"], img_ids=b["img_ids"], txt_ids=b["txt_ids"], guidance=b["guidance"]).sample
    return controlled_flux_forward(flux, adapter, z_t, b["lq"], b["prompt"], b["pooled"], b["t"], b["img_ids"],
                                   b["txt_ids"], b["guidance"])


def vae_decode(vae, packed: torch.Tensor, b: dict) -> torch.Tensor:
    from diffusers import FluxPipeline

    latents = FluxPipeline._unpack_latents(packed, b["height"], b["width"], b["vae_scale"])
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(latents.to(vae.dtype)).sample


def vae_encode(vae, image: torch.Tensor) -> torch.Tensor:
    return vae.encode(image.to(vae.dtype)).latent_dist.mode()


def train_loss(flux, vae, adapter, b: dict, pixel: bool, autocast: Callable) -> torch.Tensor:
    """Rectified-flow MSE on the velocity (+ pixel MSE of the decoded x0 estimate)."""
    t = b["t"][:, None, None]
    z_t = ((1 - t) * b["z0"] + t * b["z1"]).to(b["z0"].dtype)  # z_t = (1 - t) z_0 + t z_1
    with autocast():
        v = controlled_flux_forward(flux, adapter, z_t, b["lq"], b["prompt"], b["pooled"], b["t"], b["img_ids"],
                                    b["txt_ids"], b["guidance"])
        loss = F.mse_loss(v.float(), (b["z1"] - b["z0"]).float())
        if pixel:
            x0 = z_t - t * v  # x0 estimate from the predicted velocity
            loss = loss + F.mse_loss(vae_decode(vae, x0, b).float(), b["hq_image"].float())
    return loss


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def meta_flops(spec: dict, rank: int, width: int, height: int) -> dict[str, int]:
    """Model FLOPs of each measured call, counted on the meta device (no autocast there; same FLOPs)."""
    flux, vae, adapter, adapter_infer = build_models(spec, "meta", rank)
    b = make_batch(flux, vae, width, height, spec["text_len"], spec["vae_scale"], "meta")
    no_autocast = contextlib.nullcontext
    out = {}
    with torch.no_grad():
        out["denoise_step_flux"] = count_flops(lambda: denoise_step(flux, None, b))
        out["denoise_step"] = count_flops(lambda: denoise_step(flux, adapter_infer, b))
    out["train_step"] = count_flops(lambda: train_loss(flux, vae, adapter, b, False, no_autocast).backward())
    out["train_step_pixel"] = count_flops(lambda: train_loss(flux, vae, adapter, b, True, no_autocast).backward())
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> tuple[float, float | None]:
    """(seconds per call, peak memory in GB or None on CPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return seconds, peak


def set_checkpointing(flux, vae, adapter, on: bool) -> None:
    for module in (flux, vae):
        module.enable_gradient_checkpointing() if on else module.disable_gradient_checkpointing()
    adapter.enable_gradient_checkpointing() if on else adapter.disable_gradient_checkpointing()


def measure_training(flux, vae, adapter, opt, b: dict, pixel: bool, device: str, checkpointing: str,
                     iters: int) -> dict[str, Any]:
    """Seconds and peak memory of one training step; without checkpointing first if ``auto``."""
    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    def step() -> None:
        train_loss(flux, vae, adapter, b, pixel, autocast).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out: dict[str, Any] = {"s": None}
    for ckpt in {"auto": [False, True], "on": [True], "off": [False]}[checkpointing]:
        set_checkpointing(flux, vae, adapter, ckpt)
        oom = None
        try:
            seconds, peak = timed(step, device, 1, iters)
        except torch.OutOfMemoryError as err:
            oom = str(err).splitlines()[0]
        opt.zero_grad(set_to_none=True)
        set_checkpointing(flux, vae, adapter, False)
        if oom is None:
            out.update({"s": seconds, "peak_mem_gb": peak, "gradient_checkpointing": ckpt})
            break
        gc.collect()  # the failed step's graph is gone once the exception is
        torch.cuda.empty_cache()
        out.setdefault("out_of_memory", []).append(f"checkpointing={ckpt}: {oom}")
    return out


def measure_resolution(flux, vae, adapter, adapter_infer, opt, spec: dict, device: str, width: int, height: int,
                       args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    flops = meta_flops(spec, args.rank, width, height)
    b = make_batch(flux, vae, width, height, spec["text_len"], spec["vae_scale"], device)
    r: dict[str, Any] = {"image_tokens": b["z0"].shape[1], "text_tokens": spec["text_len"]}

    # Inference: bf16 weights, no autocast. Plain diffusers Flux is the reference.
    with torch.no_grad():
        r["denoise_step_flux_s"], _ = timed(lambda: denoise_step(flux, None, b), device, args.warmup, args.iters)
        r["denoise_step_s"], r["denoise_peak_mem_gb"] = timed(
            lambda: denoise_step(flux, adapter_infer, b), device, args.warmup, args.iters)
        r["vae_encode_s"], _ = timed(lambda: vae_encode(vae, b["lq_image"]), device, 1, 1)
        r["vae_decode_s"], _ = timed(lambda: vae_decode(vae, b["z0"], b), device, 1, 1)
    r["denoise_step_ratio"] = r["denoise_step_s"] / r["denoise_step_flux_s"]
    r["image_s"] = r["vae_encode_s"] + DENOISE_STEPS * r["denoise_step_s"] + r["vae_decode_s"]
    r["denoise_step_tflop"] = flops["denoise_step"] / 1e12
    r["denoise_mfu"] = flops["denoise_step"] / r["denoise_step_s"] / args.peak_flops

    # Training: fp32 adapter weights under bf16 autocast, AdamW on the adapter only.
    for name, pixel in (("train_step", False), ("train_step_pixel", True)):
        if time.perf_counter() > deadline:
            r[name + "_s"], r[name + "_skipped"] = None, "over --budget-s"
            continue
        m = measure_training(flux, vae, adapter, opt, b, pixel, device, args.gradient_checkpointing,
                             args.train_iters)
        r.update({f"{name}_{k}": v for k, v in m.items()})
        r[name + "_tflop"] = flops[name] / 1e12
        if m["s"] is not None:
            r[name + "_mfu"] = flops[name] / m["s"] / args.peak_flops
    return r


RESTORE_MODES = {"none": ("none", "none"), "model": ("model", "none"), "sequential": ("sequential", "none"),
                 "int8": ("none", "int8"), "fp8": ("none", "fp8"), "nf4": ("none", "nf4"),
                 "model+int8": ("model", "int8")}


def measure_restore_modes(flux, vae, adapter_infer, spec: dict, device: str, modes: list[str],
                          deadline: float) -> dict[str, Any]:
    """Per low-memory mode: seconds per Euler step and accelerator peak of one restore (Flux copied from the CPU)."""
    import copy

    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fluxir.restoration.sampler import RestoreConfig, Restorer

    width = spec["resolutions"][-1][0]  # the largest square output: 1024 (64 in the dry run)
    flux, vae = flux.to("cpu"), vae.to("cpu")  # the pristine copies stay off the accelerator
    if device == "cuda":
        torch.cuda.empty_cache()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096).config
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, spec["text_len"], flux.config.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, flux.config.pooled_projection_dim, generator=gen)
    lq = np.random.default_rng(0).integers(0, 256, (width // 4, width // 4, 3), dtype=np.uint8)
    out: dict[str, Any] = {"output": f"{width}x{width}"}
    for mode in modes:
        if time.perf_counter() > deadline:
            out[mode] = {"skipped": "over --budget-s"}
            continue
        offload, quantize = RESTORE_MODES[mode]
        cfg = RestoreConfig(steps=2, dtype="bfloat16", device=device, tile_size=None, vae_tile_size=None,
                            color_fix="none", offload=offload, quantize=quantize)
        try:
            restorer = Restorer(copy.deepcopy(flux), copy.deepcopy(vae), scheduler, prompt, pooled,
                                copy.deepcopy(adapter_infer), cfg)
            restorer.restore(lq)  # warm-up
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            stamps: list[float] = []

            def on_step(done: int, total: int) -> None:
                sync(device)
                stamps.append(time.perf_counter())
            restorer.restore(lq, on_step=on_step)
            out[mode] = {"step_s": stamps[-1] - stamps[-2],
                         "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
        except Exception as err:  # a mode this machine cannot run (fp8 before Ada, bitsandbytes without CUDA)
            out[mode] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        restorer = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    ref = out.get("none", {}).get("step_s")
    for mode in modes:
        if ref and out[mode].get("step_s"):
            out[mode]["step_ratio"] = out[mode]["step_s"] / ref
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dry-run", action="store_true", help="tiny Flux + tiny VAE on CPU (no GPU needed)")
    parser.add_argument("--peak-flops", type=float, default=989e12, help="the card's dense bf16 peak FLOP/s")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed denoising steps per measurement")
    parser.add_argument("--train-iters", type=int, default=3, help="timed training steps per measurement")
    parser.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile each Flux block (adds minutes)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip measurements past this wall time")
    parser.add_argument("--restore-modes", default=",".join(RESTORE_MODES),
                        help=f"low-memory restore modes to measure (comma-separated from {list(RESTORE_MODES)}; "
                             "'' for none)")
    args = parser.parse_args()
    modes = [m for m in args.restore_modes.split(",") if m]
    if set(modes) - set(RESTORE_MODES):
        parser.error(f"unknown --restore-modes {sorted(set(modes) - set(RESTORE_MODES))}")
    start = time.perf_counter()
    spec = DRY if args.dry_run else FULL
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run to check the code path on CPU")
    if args.dry_run:
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True

    flux, vae, adapter, adapter_infer = build_models(spec, device, args.rank)
    if args.compile:
        for block in list(flux.transformer_blocks) + list(flux.single_transformer_blocks):
            block.compile()
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-5, fused=device == "cuda")

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run, tiny models)",
        "dry_run": args.dry_run, "peak_flops": args.peak_flops, "rank": args.rank, "batch": 1,
        "flux_params": count_parameters(flux), "adapter_params": count_parameters(adapter),
        "denoise_steps_per_image": DENOISE_STEPS, "compile": args.compile, "results": {},
    }
    for width, height in spec["resolutions"]:
        key = f"{width}x{height}"
        if time.perf_counter() - start > args.budget_s:
            result["results"][key] = {"skipped": "over --budget-s"}
            continue
        result["results"][key] = measure_resolution(
            flux, vae, adapter, adapter_infer, opt, spec, device, width, height, args,
            deadline=start + args.budget_s)
    if modes:
        result["restore_modes"] = measure_restore_modes(flux, vae, adapter_infer, spec, device, modes,
                                                        deadline=start + args.budget_s)
    result["total_s"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['device']}: Flux {result['flux_params'] / 1e9:.2f}B + FluxIR {result['adapter_params'] / 1e6:.0f}M")
    for key, r in result["results"].items():
        print(f"{key}: {json.dumps(r, indent=1)}")
    print(f"total {result['total_s']:.0f}s")


if __name__ == "__main__":
    main()
