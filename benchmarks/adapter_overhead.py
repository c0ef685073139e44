"""What FluxIR adds to Flux's compute: counted FLOPs at full size and measured CPU time at small width.

    .venv/bin/python benchmarks/adapter_overhead.py [--json] [--repeats 5] [--threads 1]

1. FLOPs (``torch.utils.flop_counter.FlopCounterMode`` on the meta device, nothing allocated) of one
   forward pass of FLUX.1-dev at 1024x1024 (4096 image + 512 text tokens, batch 1), of Flux + FluxIR
   (r = 32), of a diffusers ``FluxControlNetModel`` with 5 double + 10 single blocks, and of a full
   19 + 38 ControlNet copy. Ratios are the control model's own FLOPs over Flux's:
   ``flops_ratio = (FLOPs(Flux + FluxIR) - FLOPs(Flux)) / FLOPs(Flux)`` (target <= 0.022),
   ``controlnet_*_flops_ratio = FLOPs(ControlNet) / FLOPs(Flux)``.
2. Time of one training step's forward + backward on CPU for a scaled-down Flux with the same 19 + 38
   blocks (small width, short sequences, SE rank scaled to keep the paper's r / c), with and without
   the adapter, interleaved in one run;
   ``time_ratio`` = median over interleaved repeats of (with adapter / without), in this process's CPU
   time (target <= 1.15); ``time_ratio_wall`` (wall clock) and ``time_ratio_inference`` (forward
   only, no grad) are reported too.
   Like for like: the adapter's controls enter before every Flux block, so its training step must
   backpropagate through all 57 frozen blocks, computing activation gradients but no Flux weight
   gradients. The baseline does exactly that work for Flux alone: frozen Flux, gradient taken with
   respect to its input latent. The difference is then the adapter itself (block D, 114 SE layers,
   their weight gradients) plus the 114 additions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fluxir.models.adapter import FluxIRAdapter
from fluxir.models.controlled_flux import controlled_flux_forward, freeze_flux
from fluxir.models.flux import build_transformer, load_config
from fluxir.parameters.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def flux_inputs(cfg: dict, batch: int, image_tokens: int, text_tokens: int, device: str = "cpu", seed: int = 0) -> dict:
    """Packed inputs in FluxPipeline's conventions (ids all zero: rope cost does not depend on them)."""
    g = torch.Generator().manual_seed(seed) if device != "meta" else None

    def rnd(*shape):
        return torch.randn(*shape, device=device) if g is None else torch.randn(*shape, generator=g)

    return {
        "hidden_states": rnd(batch, image_tokens, cfg["in_channels"]),
        "lq_latents": rnd(batch, image_tokens, cfg["in_channels"]),
        "encoder_hidden_states": rnd(batch, text_tokens, cfg["joint_attention_dim"]),
        "pooled_projections": rnd(batch, cfg["pooled_projection_dim"]),
        "timestep": torch.full((batch,), 0.5, device=device),
        "img_ids": torch.zeros(image_tokens, 3, device=device),
        "txt_ids": torch.zeros(text_tokens, 3, device=device),
        "guidance": torch.full((batch,), 3.5, device=device) if cfg["guidance_embeds"] else None,
    }


def count_flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_flops(adapter_settings: dict) -> dict:
    from diffusers import FluxControlNetModel

    cfg = load_config("flux1_dev_transformer")
    flux = build_transformer("flux1_dev_transformer", device="meta")
    freeze_flux(flux)
    adapter = FluxIRAdapter.from_flux(flux, **adapter_settings)
    x = flux_inputs(cfg, batch=1, image_tokens=4096, text_tokens=512, device="meta")
    plain = {k: v for k, v in x.items() if k != "lq_latents"}
    flux_flops = count_flops(lambda: flux(**plain))
    controlled = count_flops(lambda: controlled_flux_forward(flux, adapter, **x))
    result = {
        "flux_tflops": flux_flops / 1e12,
        "fluxir_tflops": (controlled - flux_flops) / 1e12,
        "flops_ratio": (controlled - flux_flops) / flux_flops,
    }
    cn_cfg = {k: v for k, v in cfg.items() if k != "patch_size"}

    def controlnet_flops(double: int, single: int) -> int:
        with torch.device("meta"):
            controlnet = FluxControlNetModel(**{**cn_cfg, "num_layers": double, "num_single_layers": single})
        return count_flops(lambda: controlnet(controlnet_cond=x["lq_latents"], **plain))

    for name, (double, single) in {"controlnet_5_10": (5, 10), "controlnet_full": (19, 38)}.items():
        cn_flops = controlnet_flops(double, single)
        result[f"{name}_tflops"] = cn_flops / 1e12
        result[f"{name}_flops_ratio"] = cn_flops / flux_flops
    return result


def measure_time(
    heads: int, head_dim: int, image_tokens: int, text_tokens: int, adapter_settings: dict, repeats: int
) -> dict:
    """Median seconds of forward + backward, Flux alone vs Flux + FluxIR (same 19 + 38 blocks, small width)."""
    axes = (head_dim // 4, 3 * head_dim // 8, head_dim - head_dim // 4 - 3 * head_dim // 8)
    cfg = {
        **load_config("flux1_dev_transformer"),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "axes_dims_rope": list(axes),
        "joint_attention_dim": heads * head_dim,
        "pooled_projection_dim": heads * head_dim,
    }
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**cfg)
    freeze_flux(flux)
    adapter = FluxIRAdapter.from_flux(flux, **adapter_settings, text_seq_len=text_tokens)
    x = flux_inputs(cfg, batch=1, image_tokens=image_tokens, text_tokens=text_tokens)

    def baseline() -> None:  # frozen Flux, activation gradients through all blocks (to the input latent)
        z = x["hidden_states"].clone().requires_grad_(True)
        out = controlled_flux_forward(flux, None, **{**x, "hidden_states": z})
        out.square().mean().backward()

    def with_adapter() -> None:  # frozen Flux + trainable adapter
        out = controlled_flux_forward(flux, adapter, **x)
        out.square().mean().backward()
        adapter.zero_grad(set_to_none=True)

    @torch.no_grad()
    def inference_baseline() -> None:
        controlled_flux_forward(flux, None, **x)

    @torch.no_grad()
    def inference_with_adapter() -> None:
        controlled_flux_forward(flux, adapter, **x)

    runs = {
        "train_flux": baseline,
        "train_fluxir": with_adapter,
        "infer_flux": inference_baseline,
        "infer_fluxir": inference_with_adapter,
    }
    for fn in runs.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so load from other processes hits all alike
        for name, fn in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)

    # Ratios: median over repeats of (with adapter / without) from back-to-back runs, in this process's
    # CPU time. On a shared machine other processes inflate wall time at random; adjacent runs see
    # about the same load. Wall-clock ratios are reported too.
    def ratio(clock: dict[str, list[float]], a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(clock[a], clock[b]))

    return {
        "time_config": {
            "num_layers": 19,
            "num_single_layers": 38,
            "heads": heads,
            "head_dim": head_dim,
            "image_tokens": image_tokens,
            "text_tokens": text_tokens,
            "rank": adapter_settings["rank"],
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "clock": "process_time",
        },
        "time_flux_s": statistics.median(cpu["train_flux"]),
        "time_flux_fluxir_s": statistics.median(cpu["train_fluxir"]),
        "time_ratio": ratio(cpu, "train_fluxir", "train_flux"),
        "time_ratio_wall": ratio(wall, "train_fluxir", "train_flux"),
        "time_ratio_inference": ratio(cpu, "infer_fluxir", "infer_flux"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--image-tokens", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument(
        "--rank", type=int, default=None, help="SE rank of the timed model; default keeps the paper's r/c = 32/3072"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.head_dim % 8:
        parser.error("--repeats must be >= 1 and --head-dim a multiple of 8")
    torch.set_num_threads(args.threads)
    adapter = load_params("base", [], ROOT)["train"]["adapter"]  # rank and guidance
    # The SE layers' share of the compute scales with r / c; at small width keep train.adapter.rank / 3072
    # (the paper's 32 / 3072) so the timed model is FLUX.1-dev in miniature (r = 32 at c = 256: 8x heavier).
    rank = args.rank or max(1, round(adapter["rank"] * args.heads * args.head_dim / 3072))
    small = {**adapter, "rank": rank}
    result = {
        **measure_flops(adapter),
        **measure_time(args.heads, args.head_dim, args.image_tokens, args.text_tokens, small, args.repeats),
    }
    result["targets"] = {"flops_ratio": 0.022, "time_ratio": 1.15}
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"forward FLOPs at 1024x1024: Flux {result['flux_tflops']:.1f} TFLOP; FluxIR adds "
        f"{100 * result['flops_ratio']:.2f}%; ControlNet 5+10 {100 * result['controlnet_5_10_flops_ratio']:.1f}%; "
        f"full ControlNet {100 * result['controlnet_full_flops_ratio']:.1f}%"
    )
    print(
        f"CPU forward+backward, 19+38 blocks at width {args.heads * args.head_dim}: Flux "
        f"{result['time_flux_s']:.3f}s, Flux+FluxIR {result['time_flux_fluxir_s']:.3f}s, "
        f"ratio {result['time_ratio']:.3f} (inference {result['time_ratio_inference']:.3f})"
    )


if __name__ == "__main__":
    main()
