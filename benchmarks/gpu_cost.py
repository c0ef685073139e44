"""GPU-hours and wall-clock of every stage of the paper's run, computed from meta-device FLOP counts (not measured).

    .venv/bin/python benchmarks/gpu_cost.py --json --gpus 8 --gpu h100 [--mfu 0.4] [--steps N] [--cpu-cores 96]
    .venv/bin/python benchmarks/gpu_cost.py --write      # count again, store the FLOPs in FLOPS_FILE
    .venv/bin/python benchmarks/gpu_cost.py --markdown   # the docs' cost tables from the stored FLOPs

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (nothing is
allocated) on random-weight FLUX.1-dev (``fluxir/configs/flux1_dev_transformer.json``), the FluxIR
adapter at rank 32 and the Flux VAE:

- generate: ``fluxgen.steps`` Flux forwards at 1024x768 (512 prompt tokens) + one VAE decode per image;
- score: the three IQA metrics, ~4 TFLOP per image (an *estimate* from the networks' sizes: CLIP ViT-L/14 at
  512 px, MANIQA ViT-B/8 on 20 crops of 224 px, MUSIQ; not counted), at the peak of ``iqa.precision``;
- degrade: CPU only, seconds per pair measured on one core (``benchmarks/fluxgen_scale.py``) over ``--cpu-cores``;
- latents: two VAE encodes per pair (HQ and the x4-upsampled LQ), the three buckets in equal shares;
- train: one training micro-step of ``fluxir.training.loss.flow_matching_loss`` forward and backward (gradient
  checkpointing's recomputation and L_P's decoder passes included) per sample, the three buckets in equal
  shares, ``train.global_batch`` samples per step;
- evaluate: ``restore`` at 1024x1024, 20 steps, on the four benchmarks' 1,043 images.

GPU time = FLOPs / (GPUs x peak x MFU). The paper's budget (Sec. 4.1): 4 x H800 for ~3.5 days = 14 GPU-days;
``paper_budget_steps`` is the step count that fits it at the stated MFU (H800: H100's 989 TFLOP/s bf16).

Counting takes about a minute on 2 cores, so ``--write`` stores the counts in
``src/fluxir/configs/gpu_cost_flops.json``; the cost tables of docs/training.md and docs/full_scale.md are
``--markdown`` of that file (with conf/run_paper.yml's steps, conf/base's batch), and tests hold the docs,
conf/run_paper.yml's ``train.max_steps`` and the file to the counting code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
FLOPS_FILE = ROOT / "src" / "fluxir" / "configs" / "gpu_cost_flops.json"
PEAK_TFLOPS = {  # dense, per GPU: (bf16 tensor cores, tf32 tensor cores, fp32 CUDA cores); SXM parts
    "h100": (989.0, 494.0, 67.0),
    "h200": (989.0, 494.0, 67.0),
    "h800": (989.0, 494.0, 67.0),
    "a100": (312.0, 156.0, 19.5),
}
PAPER = {"gpus": 4, "gpu": "h800", "days": 3.5}  # Sec. 4.1: 4 x H800, about 3.5 days
BUCKETS = ((1024, 768), (768, 768), (512, 768))  # (width, height); equal shares of the pairs
NUM_IMAGES = 350_000  # the paper's FluxGen set
PAPER_RUN_FILE = "conf/run_paper.yml"  # kedro run -c conf/run_paper.yml: the paper's scale
EVAL_IMAGES = {"DIV2K-Val": 600, "RealSR": 100, "DrealSR": 93, "RealLQ250": 250}  # restored at 1024x1024
IQA_TFLOP_PER_IMAGE = 4.0  # estimate, see the module docstring
DEGRADE_S_PER_PAIR = (0.24, 0.56)  # one core, measured (docs/full_scale.md "Time")
TEXT_TOKENS = 512


def _meta_models() -> tuple[Any, Any, Any]:
    """(flux, vae, adapter) on the meta device: FLUX.1-dev, the Flux VAE, the adapter of conf/base's train.adapter."""
    from diffusers import AutoencoderKL

    from fluxir.models.adapter import FluxIRAdapter
    from fluxir.models.controlled_flux import freeze_flux
    from fluxir.models.flux import build_transformer, load_config
    from fluxir.parameters.config import load_params

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        flux = build_transformer("flux1_dev_transformer", device="meta")
        with torch.device("meta"):
            vae = AutoencoderKL(**load_config("flux1_dev_vae"))
    finally:
        torch.set_default_dtype(previous)
    freeze_flux(flux)
    vae.requires_grad_(False).eval()
    # bf16 like Flux: meta tensors get no autocast, and an op's FLOPs do not depend on its dtype
    settings = {**load_params("base", [], ROOT)["train"]["adapter"], "text_seq_len": TEXT_TOKENS}
    adapter = FluxIRAdapter.from_flux(flux, **settings).to(torch.bfloat16)
    return flux, vae, adapter


def _count(fn) -> float:
    """TFLOP of everything ``fn`` runs (forward and, if it calls it, backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e12


def flop_counts() -> dict[str, Any]:
    """TFLOP per unit of work of every GPU stage, counted on the meta device."""
    from fluxir.models.controlled_flux import controlled_flux_forward
    from fluxir.models.flux import image_ids
    from fluxir.parameters.config import load_params
    from fluxir.training.config import TrainConfig
    from fluxir.training.loss import ControlledFlux, MicroBatch, flow_matching_loss

    flux, vae, adapter = _meta_models()
    bf16 = {"device": "meta", "dtype": torch.bfloat16}
    prompt, pooled = torch.zeros(1, TEXT_TOKENS, 4096, **bf16), torch.zeros(1, 768, **bf16)

    def flux_forward(width: int, height: int) -> float:
        n = (height // 16) * (width // 16)
        return _count(
            lambda: flux(
                hidden_states=torch.zeros(1, n, 64, **bf16),
                encoder_hidden_states=prompt,
                pooled_projections=pooled,
                timestep=torch.ones(1, device="meta"),
                img_ids=image_ids(height // 16, width // 16, "meta"),
                txt_ids=torch.zeros(TEXT_TOKENS, 3, device="meta"),
                guidance=torch.ones(1, device="meta"),
                return_dict=False,
            )
        )

    def decode(width: int, height: int) -> float:
        return _count(lambda: vae.decode(torch.zeros(1, 16, height // 8, width // 8, **bf16)))

    def encode(width: int, height: int) -> float:
        return _count(lambda: vae.encode(torch.zeros(1, 3, height, width, **bf16)))

    cfg = TrainConfig.from_params(load_params("base", [], ROOT)["train"])  # the paper's recipe: whole-image L_P
    flux.enable_gradient_checkpointing()
    adapter.enable_gradient_checkpointing()
    model = ControlledFlux(flux, adapter)

    def train_sample(width: int, height: int) -> float:
        h, w = height // 8, width // 8
        z = [torch.zeros(1, h * w // 4, 64, device="meta") for _ in range(3)]
        batch = MicroBatch(*z, t=torch.full((1,), 0.5, device="meta"), crops=None, h=h, w=w)

        def step() -> None:
            loss, _, _ = flow_matching_loss(model, flux, vae, batch, prompt, pooled, cfg)
            loss.backward()

        return _count(step)

    def restore_step() -> None:  # Flux controlled by the adapter, as restoration's sampler calls it
        with torch.no_grad():
            z = torch.zeros(1, 4096, 64, **bf16)
            controlled_flux_forward(
                flux,
                adapter,
                z,
                z,
                prompt,
                pooled,
                torch.ones(1, device="meta"),
                image_ids(64, 64, "meta"),
                torch.zeros(TEXT_TOKENS, 3, device="meta"),
                guidance=torch.ones(1, device="meta"),
            )

    restore = _count(restore_step)
    return {
        "flux_forward_1024x768": flux_forward(1024, 768),
        "vae_decode_1024x768": decode(1024, 768),
        "vae_encode_per_pair_mean": sum(2 * encode(w, h) for w, h in BUCKETS) / len(BUCKETS),
        "train_sample": {f"{w}x{h}": train_sample(w, h) for w, h in BUCKETS},
        "restore_step_1024x1024": restore,
        "vae_encode_decode_1024x1024": encode(1024, 1024) + decode(1024, 1024),
    }


def train_defaults() -> dict[str, Any]:
    import yaml

    train = yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["train"]
    fluxgen = yaml.safe_load((ROOT / "conf/base/parameters_fluxgen.yml").read_text())
    paper_run = yaml.safe_load((ROOT / PAPER_RUN_FILE).read_text())["run"]["params"]["train"]
    return {
        "max_steps": paper_run["max_steps"],  # the paper's run: conf/base runs a small real run
        "global_batch": train["global_batch"],
        "generation_steps": fluxgen["fluxgen"]["steps"],
        "iqa_precision": fluxgen["iqa"]["precision"],
    }


def paper_budget_steps(train_step_tflop: float, mfu: float) -> int:
    """Optimizer steps that fit the paper's 14 GPU-days on H800 at ``mfu``, rounded down to a thousand."""
    seconds = PAPER["gpus"] * PAPER["days"] * 86400
    steps = seconds * PEAK_TFLOPS[PAPER["gpu"]][0] * mfu / train_step_tflop
    return int(steps // 1000 * 1000)


def stored_flops() -> dict[str, Any]:
    """The TFLOP counts ``--write`` stored (``flop_counts()`` of the committed code)."""
    return json.loads(FLOPS_FILE.read_text())["tflop"]


def cost_plan(
    gpus: int,
    gpu: str,
    mfu: float,
    steps: int | None,
    cpu_cores: int,
    flops: dict[str, Any] | None = None,
    images: int = NUM_IMAGES,
) -> dict[str, Any]:
    """GPU-hours per stage from ``flops`` (default: counted now, about a minute) for ``images`` generated images
    (generate, score, degrade, latents scale with it; training with ``steps``)."""
    flops, defaults = flops or flop_counts(), train_defaults()
    bf16, tf32, fp32 = PEAK_TFLOPS[gpu]
    iqa_peak = {"fp32": fp32, "tf32": tf32, "bf16": bf16}[defaults["iqa_precision"]]
    train_step = defaults["global_batch"] * sum(flops["train_sample"].values()) / len(BUCKETS)  # TFLOP
    budget_steps = paper_budget_steps(train_step, mfu)
    steps = steps or defaults["max_steps"]

    def gpu_stage(tflop: float, peak: float) -> dict[str, float]:
        gpu_hours = tflop / (peak * mfu) / 3600
        return {
            "pflop": round(tflop / 1e3, 1),
            "gpu_hours": round(gpu_hours, 1),
            "wall_hours": round(gpu_hours / gpus, 2),
        }

    generate = images * (defaults["generation_steps"] * flops["flux_forward_1024x768"] + flops["vae_decode_1024x768"])
    evaluate = sum(EVAL_IMAGES.values()) * (20 * flops["restore_step_1024x1024"] + flops["vae_encode_decode_1024x1024"])
    degrade_hours = [images * s / (cpu_cores * 0.9) / 3600 for s in DEGRADE_S_PER_PAIR]
    stages = {
        "generate": gpu_stage(generate, bf16),
        "score": {
            **gpu_stage(images * IQA_TFLOP_PER_IMAGE, iqa_peak),
            "precision": defaults["iqa_precision"],
            "gpu_hours_tf32": round(images * IQA_TFLOP_PER_IMAGE / (tf32 * mfu) / 3600, 1),
        },
        "degrade": {
            "cpu_cores": cpu_cores,
            "wall_hours": [round(h, 2) for h in degrade_hours],
            "gpu_hours": 0.0,
            "note": "CPU only: 0.24-0.56 s per pair on one core (measured), 90% parallel efficiency",
        },
        "latents": gpu_stage(images * flops["vae_encode_per_pair_mean"], bf16),
        "train": {**gpu_stage(steps * train_step, bf16), "steps": steps},
        "evaluate": {**gpu_stage(evaluate, bf16), "images": EVAL_IMAGES},
    }
    paper_gpu_hours = PAPER["gpus"] * PAPER["days"] * 24
    total = sum(s["gpu_hours"] for s in stages.values())
    return {
        "what": "computed from meta-device FLOP counts at the stated MFU (benchmarks/gpu_cost.py), not measured",
        "gpu": gpu,
        "gpus": gpus,
        "images": images,
        "mfu": mfu,
        "peak_tflops_bf16_tf32_fp32": PEAK_TFLOPS[gpu],
        "tflop": {
            k: (round(v, 2) if isinstance(v, float) else {b: round(x, 2) for b, x in v.items()})
            for k, v in flops.items()
        },
        "train_step_tflop": round(train_step, 1),
        "paper_budget_steps_unrounded": round(
            PAPER["gpus"] * PAPER["days"] * 86400 * PEAK_TFLOPS[PAPER["gpu"]][0] * mfu / train_step
        ),
        "stages": stages,
        "total_gpu_hours": round(total, 1),
        "total_wall_hours": round(total / gpus + max(degrade_hours), 1),
        "paper": {
            **PAPER,
            "gpu_hours": paper_gpu_hours,
            "train_steps_in_budget_at_mfu": budget_steps,
            "note": "Sec. 4.1: training only; the paper does not give generation or scoring time",
        },
        "train_gpu_hours_vs_paper": round(
            stages["train"]["gpu_hours"] * PEAK_TFLOPS[gpu][0] / PEAK_TFLOPS["h800"][0] / paper_gpu_hours, 3
        ),
    }


def _gpu_h(stage: dict[str, Any]) -> str:
    return f"{stage['gpu_hours']} GPU-h, {stage['wall_hours']} h"


def training_md(flops: dict[str, Any], mfu: float = 0.4, cpu_cores: int = 96) -> str:
    """The cost table and the ``train.max_steps`` paragraph of docs/training.md ("The cost of a run")."""
    plans = {gpu: cost_plan(8, gpu, mfu, None, cpu_cores, flops) for gpu in ("h100", "a100")}
    h100, a100 = plans["h100"], plans["a100"]
    tf, steps, batch = h100["tflop"], h100["stages"]["train"]["steps"], train_defaults()["global_batch"]
    degrade = h100["stages"]["degrade"]["wall_hours"]
    degrade_cell = f"0 GPU-h; {degrade[0]}-{degrade[1]} h on {cpu_cores} CPU cores"
    per_sample = ", ".join(
        f"{size}: {value}" + (" per sample" if i == 0 else "")
        for i, (size, value) in enumerate(tf["train_sample"].items())
    )
    precision = h100["stages"]["score"]["precision"]

    def row(label: str, stage: str, flops_cell: str) -> str:
        return f"| {label} | {_gpu_h(h100['stages'][stage])} | {_gpu_h(a100['stages'][stage])} | {flops_cell} |"

    lines = [
        "| stage | 8 x H100 (or H200) | 8 x A100 | FLOPs |",
        "|---|---|---|---|",
        row(
            f"generate {NUM_IMAGES:,} images at 1024x768, {train_defaults()['generation_steps']} steps",
            "generate",
            f"{tf['flux_forward_1024x768']} TFLOP per Flux forward x {train_defaults()['generation_steps']} + "
            f"{tf['vae_decode_1024x768']} decode",
        ),
        row(
            f"score (3 IQA metrics, `iqa.precision: {precision}`)",
            "score",
            f"~{IQA_TFLOP_PER_IMAGE:g} TFLOP per image (*estimate*, not counted) at the {precision} peak; with `tf32`: "
            f"{h100['stages']['score']['gpu_hours_tf32']} GPU-h on H100",
        ),
        f"| degrade (CPU) | {degrade_cell} | {degrade_cell} | "
        f"{DEGRADE_S_PER_PAIR[0]}-{DEGRADE_S_PER_PAIR[1]} s per pair on one core (measured) |",
        row("latent pre-compute (HQ + LQ encodes)", "latents", f"{tf['vae_encode_per_pair_mean']} TFLOP per pair"),
        row(
            f"train {steps:,} steps (`train.max_steps`)",
            "train",
            f"{h100['train_step_tflop']:,} TFLOP per step of {batch} ({per_sample})",
        ),
        row(
            f"evaluate the 4 benchmarks ({sum(EVAL_IMAGES.values()):,} images, 20 steps at 1024x1024)",
            "evaluate",
            f"{tf['restore_step_1024x1024']} TFLOP per step",
        ),
        f"| **total** | **{h100['total_gpu_hours']} GPU-h, ~{h100['total_wall_hours']} h** | "
        f"**{a100['total_gpu_hours']} GPU-h, ~{a100['total_wall_hours']} h** | |",
        f"| the paper's training (Sec. 4.1) | {PAPER['gpus']} x H800 x {PAPER['days']} days = "
        f"{h100['paper']['gpu_hours']:g} GPU-h | | |",
        "",
        f"**`train.max_steps: {steps}`** is the step count that fits the paper's budget (Sec. 4.1: 4 x H800, about",
        f"3.5 days = 14 GPU-days, batch 64, on {NUM_IMAGES:,} images): a global batch of {batch} with the three "
        "buckets in equal",
        f"shares is {h100['train_step_tflop']:,} TFLOP, and {PAPER['gpus']} x {PAPER['days']} x 86,400 s x "
        f"{PEAK_TFLOPS[PAPER['gpu']][0]:g} TFLOP/s x {mfu} / {h100['train_step_tflop']:,} TFLOP =",
        f"{h100['paper_budget_steps_unrounded']:,} steps, rounded down to "
        f"{h100['paper']['train_steps_in_budget_at_mfu']:,}"
        f" (about {steps * batch / NUM_IMAGES:.1f} epochs of {NUM_IMAGES:,} pairs; training at {steps:,} steps is",
        f"{h100['train_gpu_hours_vs_paper']:.0%} of the paper's {h100['paper']['gpu_hours']:g} GPU-hours). "
        "Recomputation and L_P are a large share of a step: per 1024x768",
        f"sample, {tf['train_sample']['1024x768']} TFLOP against {tf['flux_forward_1024x768']} for one Flux forward.",
    ]
    return "\n".join(lines)


def full_scale_md(flops: dict[str, Any], mfu: float = 0.4, cpu_cores: int = 96) -> str:
    """The "Time" table of docs/full_scale.md: one H100 at ``mfu``, per image and for the whole run."""
    plan = cost_plan(8, "h100", mfu, None, cpu_cores, flops)
    tf, stages, defaults = plan["tflop"], plan["stages"], train_defaults()
    rate = PEAK_TFLOPS["h100"][0] * mfu  # TFLOP/s
    n_steps = defaults["generation_steps"]
    generate_s = (n_steps * flops["flux_forward_1024x768"] + flops["vae_decode_1024x768"]) / rate
    restore_s = (20 * flops["restore_step_1024x1024"] + flops["vae_encode_decode_1024x1024"]) / rate
    share = IQA_TFLOP_PER_IMAGE / (n_steps * flops["flux_forward_1024x768"] + flops["vae_decode_1024x768"])
    lo, hi = stages["degrade"]["wall_hours"]
    s_lo, s_hi = DEGRADE_S_PER_PAIR
    lines = [
        f"**Time** (*computed* by `python benchmarks/gpu_cost.py` from meta-device FLOP counts, for an H100 at "
        f"{mfu:.0%} MFU, unless a source is given):",
        "",
        "| job | cost | time |",
        "|---|---|---|",
        f"| generating one 1024x768 image, {n_steps} steps | Flux forward {tf['flux_forward_1024x768']} TFLOP x "
        f"{n_steps} + VAE decode {tf['vae_decode_1024x768']} TFLOP | ~{generate_s:.1f} s; {NUM_IMAGES:,} images "
        f"{stages['generate']['gpu_hours']} GPU-hours (~{stages['generate']['gpu_hours'] / 24:.1f} GPU-days) |",
        f"| scoring one image (3 metrics) | ~{IQA_TFLOP_PER_IMAGE:g} TFLOP (*estimate*), {share:.1%} of generating it "
        f"| {NUM_IMAGES:,} images {stages['score']['gpu_hours']} GPU-hours at `iqa.precision: "
        f"{stages['score']['precision']}`, {stages['score']['gpu_hours_tf32']} with `tf32` |",
        f"| degrading one pair (CPU) | SeeSR/Real-ESRGAN degradation of a 1024x768 image | {s_lo}-{s_hi} s on one "
        "core (measured on the shared machine, `benchmarks/fluxgen_scale.py`); "
        f"{NUM_IMAGES:,} pairs on {cpu_cores} cores: {lo}-{hi} hours (*computed*: {NUM_IMAGES:,} x {s_lo}-{s_hi} s / "
        f"({cpu_cores} cores x 0.9 efficiency)) |",
        f"| training | the paper: batch 64, AdamW lr 1e-5; fluxir's `train.max_steps` {stages['train']['steps']:,}: "
        f"{plan['train_step_tflop']:,} TFLOP per step of {defaults['global_batch']} | the paper: 3.5 days on 4 H800 "
        f"(14 GPU-days), Sec. 4.1; the default steps: {stages['train']['gpu_hours']} GPU-hours |",
        f"| restoring one 1024x1024 image, 20 steps | Flux + adapter {tf['restore_step_1024x1024']} TFLOP x 20 + "
        f"VAE encode and decode {tf['vae_encode_decode_1024x1024']} TFLOP | ~{restore_s:.1f} s; the evaluation's "
        f"{sum(EVAL_IMAGES.values()):,} benchmark images {stages['evaluate']['gpu_hours']} GPU-hours |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--write", action="store_true", help=f"count and store the FLOPs in {FLOPS_FILE.name}")
    parser.add_argument("--markdown", action="store_true", help="print the docs' cost tables of the stored FLOPs")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu", choices=sorted(PEAK_TFLOPS), default="h100")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed (0.4: 40%%)")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: train.max_steps of conf/run_paper.yml)"
    )
    parser.add_argument(
        "--images", type=int, default=NUM_IMAGES, help=f"generated images (default: the paper's {NUM_IMAGES:,})"
    )
    parser.add_argument("--cpu-cores", type=int, default=96, help="CPU cores of the node for the degradation")
    args = parser.parse_args(argv)
    if not 0 < args.mfu <= 1 or args.gpus < 1:
        raise SystemExit(f"--mfu must be in (0, 1] and --gpus >= 1, got {args.mfu} and {args.gpus}")
    if args.markdown:
        flops = stored_flops()
        print(f"docs/training.md, The cost of a run:\n\n{training_md(flops)}\n")
        print(f"docs/full_scale.md, Time:\n\n{full_scale_md(flops)}")
        return
    flops = flop_counts()
    if args.write:
        stored = {"what": "TFLOP counted on the meta device by benchmarks/gpu_cost.py", "torch": torch.__version__}
        FLOPS_FILE.write_text(json.dumps({**stored, "tflop": flops}, indent=1) + "\n")
    plan = cost_plan(args.gpus, args.gpu, args.mfu, args.steps, args.cpu_cores, flops, args.images)
    if args.json:
        print(json.dumps(plan))
        return
    print(f"{args.gpus} x {args.gpu} at {args.mfu:.0%} MFU ({plan['what']})")
    for name, stage in plan["stages"].items():
        print(f"  {name:9s} {stage['gpu_hours']:8.1f} GPU-h   wall {stage['wall_hours']} h")
    print(
        f"  total {plan['total_gpu_hours']} GPU-h, ~{plan['total_wall_hours']} h wall; the paper's training: "
        f"{plan['paper']['gpu_hours']} GPU-h = {plan['paper']['train_steps_in_budget_at_mfu']} steps at this MFU"
    )


if __name__ == "__main__":
    main()
