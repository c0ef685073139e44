"""The price of the pixel loss L_P (Eq. 9): seconds and peak memory per FluxIR training step.

    .venv/bin/python benchmarks/train_step.py [--json] [--config tiny scaled] [--steps 5] [--activations]

For each model config, one optimizer step (``fluxir.training.loss.flow_matching_loss`` + backward + AdamW)
is timed in five variants, each in a fresh process so that peak memory is its own:

    no_pixel_loss        alpha = 0 (Table 3 "w/o L_P"): no decoder pass at all
    pixel_loss           Eq. 9 on the whole image (the paper)
    pixel_loss_crop      Eq. 9 on a random window of --crop pixels (half the short side by default)
    pixel_loss_ckpt      whole image, VAE decoder gradient checkpointing
    pixel_loss_crop_ckpt window + decoder gradient checkpointing

Peak memory is CUDA max-allocated on GPU and the process's peak RSS on CPU; ``step_memory_mb`` is that
peak minus what was allocated (GPU) or resident (CPU) just before the first step: the step's own price.
Every variant reports its ratio to ``no_pixel_loss``.

Configs: ``tiny`` = the tiny random-weight Flux folder at 64x48; ``scaled`` = a random 2+4-block Flux
(inner 256) with the Flux VAE architecture at quarter width (32-64-128-128 channels) at 256x192, so the
decoder is a visible share of the step on a CPU; ``flux-dev`` = random-weight FLUX.1-dev + the full Flux
VAE at 1024x768 (a GPU with >= 80 GB; not run on CPU machines).

``--activations`` adds, without allocating anything (meta device), the bytes saved for backward at
the real size (FLUX.1-dev + adapter r=32, 1024x768, batch 1) with and without gradient checkpointing,
and of the VAE decoder for the pixel loss: the activation lines of docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "no_pixel_loss": {"pixel_loss_weight": 0.0},
    "pixel_loss": {"pixel_loss_weight": 1.0},
    "pixel_loss_crop": {"pixel_loss_weight": 1.0, "crop": True},
    "pixel_loss_ckpt": {"pixel_loss_weight": 1.0, "decoder_gradient_checkpointing": True},
    "pixel_loss_crop_ckpt": {"pixel_loss_weight": 1.0, "crop": True, "decoder_gradient_checkpointing": True},
}
# (width, height) of the HQ image per config
SIZES = {"tiny": (64, 48), "scaled": (256, 192), "flux-dev": (1024, 768)}
SCALED_FLUX = {  # a small Flux: 2 double + 4 single blocks, 4 heads x 64
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 4,
    "attention_head_dim": 64,
    "num_attention_heads": 4,
    "joint_attention_dim": 256,
    "pooled_projection_dim": 128,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 24, 24],
}


def build(config: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """(flux, vae) of a config, random weights, frozen."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from fluxir.models.flux import load_config
    from fluxir.models.loading import load_pipeline

    if config == "tiny":
        pipe = load_pipeline("data/01_raw/tiny/flux", dtype="float32", device=device)
        flux, vae = pipe.transformer, pipe.vae
    else:
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build 12B parameters directly in bf16 (no float32 copy)
        try:
            with torch.device(device):
                flux_cfg = load_config("flux1_dev_transformer") if config == "flux-dev" else SCALED_FLUX
                flux = FluxTransformer2DModel(**flux_cfg)
                vae_cfg = load_config("flux1_dev_vae")
                if config == "scaled":
                    vae_cfg["block_out_channels"] = [32, 64, 128, 128]
                    vae_cfg["norm_num_groups"] = 16
                vae = AutoencoderKL(**vae_cfg)
        finally:
            torch.set_default_dtype(previous)
    return flux.requires_grad_(False).eval(), vae.requires_grad_(False).eval()


def run_variant(
    config: str, variant: str, steps: int, warmup: int, batch_size: int, crop: int | None
) -> dict[str, Any]:
    """Time ``steps`` optimizer steps of one variant in this process; returns seconds and memory."""
    import torch

    from fluxir.parameters.config import load_params
    from fluxir.training.config import TrainConfig
    from fluxir.training.data import encode_gaussian
    from fluxir.training.loop import peak_memory_mb
    from fluxir.training.loss import ControlledFlux, Models, build_adapter, flow_matching_loss, make_micro_batch

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    width, height = SIZES[config]
    spec = VARIANTS[variant]
    crop_px = (crop or min(width, height) // 2) if spec.get("crop") else None
    cfg = TrainConfig.from_params(
        {
            **load_params("base", [], REPO)["train"],  # every field; the run's own settings follow
            "dtype": str(dtype).split(".")[1],
            "mixed_precision": "bf16" if cuda else "no",
            "device": device,
            "pixel_loss_weight": spec["pixel_loss_weight"],
            "pixel_loss_crop": crop_px,
            "decoder_gradient_checkpointing": spec.get("decoder_gradient_checkpointing", False),
            "gradient_checkpointing": config == "flux-dev",
        }
    )
    flux, vae = build(config, device, dtype)
    if cfg.gradient_checkpointing:
        flux.enable_gradient_checkpointing()
    if cfg.decoder_gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    seq = 512 if config == "flux-dev" else 8
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, seq, flux.config.joint_attention_dim, generator=g).to(device, dtype)
    pooled = torch.randn(1, flux.config.pooled_projection_dim, generator=g).to(device, dtype)
    models = Models(flux, vae, prompt, pooled, {})
    adapter = build_adapter(cfg, models).to(device)
    model = ControlledFlux(flux, adapter)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-5)
    images = torch.rand(batch_size, 3, height, width, generator=g) * 2 - 1
    with torch.no_grad():
        gaussians = [(p, p) for p in encode_gaussian(vae, images)]  # (2C, h, w) each; HQ stands in for LQ
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**20 if cuda else _current_rss_mb()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = make_micro_batch(cfg, vae, gaussians, [i * batch_size + j for j in range(batch_size)])
        batch.t = torch.full_like(batch.t, 0.5)  # same work every step
        with autocast:
            loss, _, _ = flow_matching_loss(model, flux, vae, batch, prompt, pooled, cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "seconds_per_step": times[len(times) // 2],
        "peak_mb": peak_memory_mb(device),
        "before_steps_mb": before,
        "device": torch.cuda.get_device_name() if cuda else "cpu (1 thread)",
        "size": f"{width}x{height}",
        "batch_size": batch_size,
        "pixel_loss_crop": crop_px,
    }


def _current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def saved_activation_gib(config: str = "flux-dev") -> dict[str, float]:
    """GiB saved for backward at 1024x768, batch 1, bf16, counted on the meta device (no memory used).

    ``*_checkpointing`` is what stays saved through the forward with gradient checkpointing;
    ``*_checkpointing_peak`` adds the largest checkpointed unit (one Flux block, one decoder up-block),
    whose activations are recomputed and held while its backward runs.
    """
    import torch
    from diffusers import AutoencoderKL

    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.controlled_flux import controlled_flux_forward, freeze_flux
    from fluxir.models.flux import build_transformer, image_ids, load_config
    from fluxir.parameters.config import load_params
    from fluxir.training.data import decode_latents

    width, height = SIZES[config]
    h, w = height // 8, width // 8
    params: set[int] = set()
    saved: dict[int, int] = {}

    def pack_hook(t):
        key = t.untyped_storage()._cdata
        if key not in params:  # weights saved by Linear/Conv are parameters, not activations
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        return t

    def count(fn) -> float:
        saved.clear()
        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            fn()
        return sum(saved.values()) / 2**30

    def largest_unit(units: list, fn) -> float:
        """Run fn without checkpointing, capture each unit's inputs, then count each unit alone."""
        calls = []
        hooks = [u.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)), with_kwargs=True) for u in units]
        count(fn)
        for hook in hooks:
            hook.remove()

        def grad(x):
            return x.detach().requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x

        def call(m, a, kw):
            return lambda: m(*[grad(x) for x in a], **{k: grad(v) for k, v in kw.items()})

        return max(count(call(m, a, kw)) for m, a, kw in calls[:8] + calls[-8:])

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        flux = build_transformer("flux1_dev_transformer", device="meta")
        with torch.device("meta"):
            vae = AutoencoderKL(**load_config("flux1_dev_vae"))
    finally:
        torch.set_default_dtype(previous)
    freeze_flux(flux)
    vae.requires_grad_(False)
    adapter = FluxIRAdapter.from_flux(
        flux, **{**load_params("base", [], REPO)["train"]["adapter"], "text_seq_len": 512}
    )
    params |= {p.untyped_storage()._cdata for m in (flux, vae, adapter) for p in m.parameters()}

    def flux_step():
        z = torch.randn(1, h * w // 4, 64, dtype=torch.bfloat16)
        controlled_flux_forward(
            flux,
            adapter,
            z,
            z,
            torch.randn(1, 512, 4096, dtype=torch.bfloat16),
            torch.randn(1, 768, dtype=torch.bfloat16),
            torch.rand(1),
            image_ids(h // 2, w // 2, "meta"),
            torch.zeros(512, 3),
            guidance=torch.full((1,), 3.5),
        )

    def decode(px_h: int, px_w: int):
        return lambda: decode_latents(vae, torch.randn(1, 16, px_h // 8, px_w // 8, requires_grad=True))

    flux_units = [*flux.transformer_blocks, *flux.single_transformer_blocks, adapter.block]
    decoder_units = [vae.decoder.mid_block, *vae.decoder.up_blocks]
    out = {"flux_adapter_no_checkpointing": count(flux_step)}
    flux_block = largest_unit(flux_units, flux_step)
    out["decoder_full"] = count(decode(height, width))
    out["decoder_crop_512"] = count(decode(512, 512))
    out["decoder_crop_256"] = count(decode(256, 256))
    decoder_block = largest_unit(decoder_units, decode(height, width))
    decoder_block_512 = largest_unit(decoder_units, decode(512, 512))
    flux.enable_gradient_checkpointing()
    adapter.enable_gradient_checkpointing()
    vae.enable_gradient_checkpointing()
    out["flux_adapter_checkpointing"] = count(flux_step)
    out["flux_adapter_checkpointing_peak"] = out["flux_adapter_checkpointing"] + flux_block
    out["decoder_full_checkpointing"] = count(decode(height, width))
    out["decoder_full_checkpointing_peak"] = out["decoder_full_checkpointing"] + decoder_block
    out["decoder_crop_512_checkpointing"] = count(decode(512, 512))
    out["decoder_crop_512_checkpointing_peak"] = out["decoder_crop_512_checkpointing"] + decoder_block_512
    return {k: round(v, 3) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--config",
        nargs="*",
        default=["tiny", "scaled"],
        choices=sorted(SIZES),
        help="model configs to time (none: only --activations)",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--crop", type=int, default=None, help="pixel_loss_crop in pixels (default: half the short side)"
    )
    parser.add_argument("--activations", action="store_true", help="add saved-activation GiB at 1024x768 (meta)")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: run one variant here
    args = parser.parse_args(argv)

    if args.variant:
        print(
            json.dumps(run_variant(args.config[0], args.variant, args.steps, args.warmup, args.batch_size, args.crop))
        )
        return
    result: dict[str, Any] = {}
    for config in args.config:
        rows = {}
        for variant in args.variants:
            cmd = [
                sys.executable,
                __file__,
                "--config",
                config,
                "--variant",
                variant,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch-size",
                str(args.batch_size),
            ]
            if args.crop:
                cmd += ["--crop", str(args.crop)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{config}/{variant} failed:\n{proc.stderr[-3000:]}")
            rows[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = rows.get("no_pixel_loss")
        for row in rows.values():
            if base:
                row["time_ratio_vs_no_pixel_loss"] = round(row["seconds_per_step"] / base["seconds_per_step"], 3)
                extra = base["peak_mb"] - base["before_steps_mb"]
                row["step_memory_mb"] = round(row["peak_mb"] - row["before_steps_mb"], 1)
                row["step_memory_ratio_vs_no_pixel_loss"] = (
                    round(row["step_memory_mb"] / extra, 3) if extra > 0 else None
                )
        result[config] = rows
    if args.activations:
        result["flux_dev_1024x768_saved_activations_gib"] = saved_activation_gib()
    if args.json:
        print(json.dumps(result))
        return
    for config, rows in result.items():
        if config.endswith("_gib"):
            print(f"\nsaved for backward at 1024x768, batch 1, bf16 (GiB): {rows}")
            continue
        print(f"\n{config} ({next(iter(rows.values()))['size']}, {next(iter(rows.values()))['device']})")
        for variant, row in rows.items():
            print(
                f"  {variant:22s} {row['seconds_per_step']:.4f} s/step (x{row.get('time_ratio_vs_no_pixel_loss')}), "
                f"step memory {row.get('step_memory_mb')} MB (x{row.get('step_memory_ratio_vs_no_pixel_loss')})"
            )


if __name__ == "__main__":
    main()
