"""One script for a lent GPU: FLUX.1-dev generation, training and restoration speed, inside a hard time budget.

    python benchmarks/gpu_throughput.py --budget-s 480 --json --out gpu_throughput.json   # a CUDA GPU, one call
    python benchmarks/gpu_throughput.py --tiny --budget-s 60 --json                        # tiny models, CPU

Random-weight FLUX.1-dev (``fluxir/configs/flux1_dev_transformer.json``), its VAE and the rank-32 adapter
are built directly on the GPU (bf16; no download, no CPU copy). Measured in this order, each stopped by
the deadline (checked inside every loop, and by a timer signal that interrupts whatever runs):

1. generation at 1024x768 (512 text tokens, batch 1, bf16, no autocast): seconds per denoising step of
   Flux, seconds per 20-step image (+ one VAE decode) and MFU, with ``torch.compile`` of the blocks off, then on
   (``--no-compile`` skips the second; ``--tiny`` skips it unless ``--compile``: a CPU build takes minutes);
2. one training step at batch 1 as training runs it (``fluxir.training``: ``models.build_adapter``,
   ``models.ControlledFlux``, ``loss.flow_matching_loss`` with whole-image L_P, gradient checkpointing, bf16
   autocast, fused AdamW): seconds and peak allocated memory next to the memory model's prediction
   (``fluxir/configs/train_memory.json`` minus its reserve);
3. restoration (``fluxir.restoration.Restorer``, 256 -> 1024x1024, untiled) seconds per Euler step with
   ``restore.quantize`` ``none``, then ``int8`` (the transformer quantised in place on the GPU; never copied).

MFU = FLOPs counted with FlopCounterMode on the meta device for the same call / time / ``--peak-flops``.
The JSON is printed (and written to ``--out`` after every measurement) whatever happens: the deadline,
SIGTERM, an error; ``stopped`` says why a run ended early. Nothing here is estimated: every number is
measured on the machine that runs it, except the ``predicted_*`` ones.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the budget counts from here, imports included

import argparse
import json
import os
import signal
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "full": {
        "flux": "flux1_dev_transformer",
        "vae": "flux1_dev_vae",
        "generate": (1024, 768),
        "restore": 1024,
        "text_len": 512,
    },
    "tiny": {"flux": "tiny_flux_transformer", "vae": "tiny_vae", "generate": (64, 48), "restore": 64, "text_len": 8},
}
DENOISE_STEPS = 20


class OutOfTime(Exception):
    """The budget is spent (or the process was asked to stop)."""


class Run:
    """The JSON being built, the deadline, and where the JSON goes."""

    def __init__(self, budget_s: float, out: Path | None) -> None:
        self.deadline, self.out = START + budget_s, out
        self.result: dict[str, Any] = {"budget_s": budget_s, "stopped": None, "stages": {}}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise OutOfTime(f"deadline reached during {what}")

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - START, 2)
        if self.out is not None:  # a killed run leaves the last complete JSON
            tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.result))
            os.replace(tmp, self.out)


def _stop(signum: int, _frame: Any) -> None:
    raise OutOfTime(f"signal {signal.Signals(signum).name}")


def out_of_time(err: BaseException) -> OutOfTime | None:
    """The OutOfTime in ``err``'s chain: libraries (diffusers' lazy imports) re-raise it as their own error."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OutOfTime):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def timed(fn: Callable[[], Any], run: Run, what: str, iters: int, warmup: int = 1) -> dict[str, Any]:
    """Median seconds of ``iters`` calls after ``warmup``; the deadline is checked before every call."""
    import torch

    times = []
    for i in range(warmup + iters):
        run.check(what)
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times), "calls": len(times)}


# ----------------------------------------------------------------------------------------------------


def reset_peak(device: str) -> None:
    """Start a stage's or mode's peak memory from what is allocated now, not from an earlier stage's peak."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def build(spec: dict[str, Any], device: str, dtype: Any) -> tuple[Any, Any]:
    """Random-weight Flux and VAE made on ``device`` in ``dtype`` (``meta``: nothing allocated), frozen."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from fluxir.models.controlled_flux import freeze_flux
    from fluxir.models.flux import load_config

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are born in bf16 on the GPU: no float32 or CPU copy
    try:
        with torch.device(device):
            flux = FluxTransformer2DModel(**load_config(spec["flux"]))
            vae = AutoencoderKL(**load_config(spec["vae"]))
    finally:
        torch.set_default_dtype(previous)
    freeze_flux(flux)
    return flux, vae.requires_grad_(False).eval()


def flux_inputs(flux: Any, width: int, height: int, text_len: int, device: str, dtype: Any) -> dict[str, Any]:
    """FluxPipeline's transformer inputs for one image (packed latents, ids, t, guidance)."""
    import torch

    from fluxir.models.flux import image_ids

    n = (height // 16) * (width // 16)
    return {
        "hidden_states": torch.randn(1, n, 64, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(1, text_len, flux.config.joint_attention_dim, device=device, dtype=dtype),
        "pooled_projections": torch.randn(1, flux.config.pooled_projection_dim, device=device, dtype=dtype),
        "timestep": torch.full((1,), 0.5, device=device),
        "guidance": torch.full((1,), 4.0, device=device),
        "img_ids": image_ids(height // 16, width // 16, device),
        "txt_ids": torch.zeros(text_len, 3, device=device),
        "return_dict": False,
    }


def generation(
    run: Run, flux: Any, vae: Any, spec: dict[str, Any], device: str, dtype: Any, args: Any
) -> dict[str, Any]:
    """s/step, s/image and MFU of plain Flux at the generation size, torch.compile of its blocks off then on."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fluxir.training.data import decode_latents

    width, height = spec["generate"]
    meta_flux, _ = build(spec, "meta", dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_flux(**flux_inputs(meta_flux, width, height, spec["text_len"], "meta", dtype))
    flops = counter.get_total_flops()
    inputs = flux_inputs(flux, width, height, spec["text_len"], device, dtype)
    z = torch.randn(1, 16, height // 8, width // 8, device=device, dtype=dtype)
    out: dict[str, Any] = {"size": f"{width}x{height}", "step_tflop": round(flops / 1e12, 2)}
    run.result["stages"]["generation"] = out
    with torch.no_grad():
        decode = timed(lambda: decode_latents(vae, z), run, "generation: VAE decode", 1)["s"]
        for compiled in (False, True) if args.compile else (False,):
            name = "compile_on" if compiled else "compile_off"
            blocks = (flux.transformer_blocks, flux.single_transformer_blocks)
            originals = [list(b) for b in blocks]
            reset_peak(device)
            t0 = time.perf_counter()
            if compiled:  # each block compiled alone; the originals go back afterwards
                for modules in blocks:
                    for i, block in enumerate(modules):
                        modules[i] = torch.compile(block)
            try:
                step = timed(lambda: flux(**inputs), run, f"generation ({name})", args.iters)
            finally:
                for modules, original in zip(blocks, originals):
                    for i, block in enumerate(original):
                        modules[i] = block
            out[name] = {
                "step_s": round(step["s"], 4),
                "image_s": round(DENOISE_STEPS * step["s"] + decode, 3),
                "mfu": round(flops / step["s"] / args.peak_flops, 3),
                "warmup_and_compile_s": round(time.perf_counter() - t0 - step["s"] * step["calls"], 2),
            }
            if device == "cuda":
                out[name]["peak_allocated_gib"] = peak_gib(device)
            run.save()
    out["vae_decode_s"] = round(decode, 4)
    return out


def training(run: Run, flux: Any, vae: Any, spec: dict[str, Any], device: str, dtype: Any, args: Any) -> dict[str, Any]:
    """One optimizer step at batch 1 the way fluxir.training runs it, with its peak memory."""
    import contextlib

    import torch

    from fluxir.training.config import TrainConfig
    from fluxir.training.loop import make_optimizer
    from fluxir.training.loss import ControlledFlux, MicroBatch, Models, build_adapter, flow_matching_loss

    width, height = spec["generate"]
    cuda = device == "cuda"
    from fluxir.parameters.config import load_params

    cfg = TrainConfig.from_params(
        {
            **load_params("base", [], ROOT)["train"],  # every field; this run's settings follow
            "device": device,
            "dtype": str(dtype).removeprefix("torch."),
            "mixed_precision": "bf16" if cuda else "no",
            "gradient_checkpointing": True,
            "batch_size": 1,
        }
    )
    flux.enable_gradient_checkpointing()
    text = flux_inputs(flux, width, height, spec["text_len"], device, dtype)
    models = Models(flux, vae, text["encoder_hidden_states"], text["pooled_projections"], {})
    adapter = build_adapter(cfg, models).to(device)
    model, optimizer = ControlledFlux(flux, adapter), make_optimizer(adapter.parameters(), cfg, device)
    h, w = height // 8, width // 8
    batch = MicroBatch(
        *(torch.randn(1, h * w // 4, 64, device=device) for _ in range(3)),
        t=torch.full((1,), 0.5, device=device),
        crops=None,
        h=h,
        w=w,
    )
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def step() -> None:
        with autocast():
            loss, _, _ = flow_matching_loss(model, flux, vae, batch, models.prompt_embeds, models.pooled_embeds, cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    out: dict[str, Any] = {
        "size": f"{width}x{height}",
        "batch_size": 1,
        "gradient_checkpointing": True,
        "pixel_loss": "whole",
    }
    run.result["stages"]["training"] = out
    reset_peak(device)
    try:
        m = timed(step, run, "training", args.train_iters)
        out["step_s"] = round(m["s"], 3)
        if cuda:
            out["peak_allocated_gib"] = peak_gib(device)
            table = json.loads((ROOT / "src/fluxir/configs/train_memory.json").read_text())
            row = next(
                r
                for r in table["rows"]
                if (r["size"], r["batch_size"], r["pixel_loss"], r["gradient_checkpointing"])
                == ("1024x768", 1, "whole", True)
            )
            out["predicted_allocated_gib"] = round(row["total"] - table["reserve_gib"], 2)
            out["measured_over_predicted"] = round(out["peak_allocated_gib"] / out["predicted_allocated_gib"], 3)
    finally:
        flux.disable_gradient_checkpointing()
    return out  # the adapter and AdamW's states are freed with this frame (main empties the CUDA cache)


def restoration(
    run: Run, flux: Any, vae: Any, spec: dict[str, Any], device: str, dtype: Any, args: Any
) -> dict[str, Any]:
    """s/step of Restorer for restore.quantize none, then int8 (quantised in place: the last use of ``flux``)."""
    import numpy as np
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.parameters.config import load_params
    from fluxir.restoration.files import split_params
    from fluxir.restoration.sampler import Restorer

    size = spec["restore"]
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    ).config
    text = flux_inputs(flux, 16, 16, spec["text_len"], device, dtype)
    settings = {**load_params("base", [], ROOT)["train"]["adapter"], "text_seq_len": spec["text_len"]}
    adapter = FluxIRAdapter.from_flux(flux, **settings).requires_grad_(False)
    lq = np.random.default_rng(0).integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    out: dict[str, Any] = {"output": f"{size}x{size}", "steps": args.restore_steps}
    run.result["stages"]["restoration"] = out
    for quantize in ("none", "int8"):
        reset_peak(device)  # each mode's own peak (quantising included), not training's or the previous mode's
        t0 = time.perf_counter()
        # conf/base's restore settings (every field), this run's own after them
        cfg = split_params(
            {
                **load_params("base", [], ROOT)["restore"],
                "steps": args.restore_steps,
                "dtype": str(dtype).removeprefix("torch."),
                "device": device,
                "tile_size": None,
                "vae_tile_size": None,
                "color_fix": "none",
                "quantize": quantize,
            }
        )[1]
        restorer = Restorer(
            flux, vae, scheduler, text["encoder_hidden_states"], text["pooled_projections"], adapter, cfg
        )
        stamps: list[float] = []

        def on_step(done: int, total: int, stamps: list[float] = stamps, quantize: str = quantize) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            run.check(f"restoration ({quantize})")

        setup = time.perf_counter() - t0
        run.check(f"restoration ({quantize})")
        restorer.restore(lq, on_step=on_step)
        steps = np.diff(stamps)  # the first step (warm-up) has no predecessor
        out[quantize] = {
            "step_s": round(float(np.median(steps)), 4) if len(steps) else None,
            "setup_s": round(setup, 2),
        }
        if device == "cuda":
            out[quantize]["peak_allocated_gib"] = peak_gib(device)
        run.save()
    if out["none"].get("step_s") and out["int8"].get("step_s"):
        out["int8_over_none"] = round(out["int8"]["step_s"] / out["none"]["step_s"], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (checks the script)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="hard wall-clock limit, imports included")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here after every measurement")
    parser.add_argument(
        "--peak-flops", type=float, default=989e12, help="the card's dense bf16 peak FLOP/s (H100/H200)"
    )
    parser.add_argument("--iters", type=int, default=5, help="timed denoising steps per measurement")
    parser.add_argument("--train-iters", type=int, default=2, help="timed training steps")
    parser.add_argument("--restore-steps", type=int, default=4, help="Euler steps per restoration (>= 2)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time generation with torch.compile'd blocks (default: on a GPU, off with --tiny)",
    )
    args = parser.parse_args(argv)
    args.compile = not args.tiny if args.compile is None else args.compile
    run = Run(args.budget_s, args.out)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGALRM, _stop)
    # Interrupts a stage that overruns the checks, and again every second should a library swallow it.
    signal.setitimer(signal.ITIMER_REAL, max(run.left(), 0.01), 1.0)
    try:
        import torch

        spec = SIZES["tiny" if args.tiny else "full"]
        device = "cpu" if args.tiny else "cuda"
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny to check the script on the CPU")
        if args.tiny:
            torch.set_num_threads(1)
        dtype = torch.float32 if args.tiny else torch.bfloat16
        run.result.update(
            {
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny models)",
                "tiny": args.tiny,
                "torch": torch.__version__,
                "peak_flops": args.peak_flops,
            }
        )
        t0 = time.perf_counter()
        flux, vae = build(spec, device, dtype)
        run.result["build_s"] = round(time.perf_counter() - t0, 2)
        run.save()
        for stage in (generation, training, restoration):
            try:
                stage(run, flux, vae, spec, device, dtype, args)
            except Exception as err:  # noqa: BLE001  (recorded; the next measurement still runs)
                if out_of_time(err) is not None:
                    raise
                run.result["stages"].setdefault(stage.__name__, {})["error"] = f"{type(err).__name__}: {err}"[:500]
            if device == "cuda":
                torch.cuda.empty_cache()
            run.save()
    except Exception as err:
        stop = out_of_time(err)
        if stop is None:
            raise
        run.result["stopped"] = str(stop)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        run.save()
        print(json.dumps(run.result) if args.json else json.dumps(run.result, indent=1))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
