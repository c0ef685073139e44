"""Per-GPU memory of one FluxIR training step on FLUX.1-dev, computed on fake CUDA tensors (nothing allocated).

    .venv/bin/python benchmarks/train_memory.py [--json] [--write]

The step is training's own code: ``fluxir.training.loss.build_adapter``, ``ControlledFlux`` and
``flow_matching_loss`` (forward, L_MSE + L_P, backward) on random-weight FLUX.1-dev
(``fluxir/configs/flux1_dev_transformer.json``) and the Flux VAE (``flux1_dev_vae.json``). Every tensor is a fake
CUDA tensor (shapes, dtypes and devices, no data), and CUDA autocast's real kernels decide each op's dtype: the ones
that run ``group_norm``, ``layer_norm``, ``rms_norm``, ``softmax``, ... in float32, which CPU autocast
does not have. Per micro-batch size 1-8 and bucket (1024x768, 768x768, 512x768) it counts

- bytes saved for backward (autograd's saved-tensor hooks), split into Flux + adapter and the L_P decoder;
- what one checkpointed block saves when backward recomputes it, and from these the backward's peak
  (``count_step`` says how);

and adds the static items from parameter counts: frozen Flux and VAE in bf16, the adapter's float32
weights, gradients and AdamW m and v, DDP's gradient buckets (no extra copy with
``gradient_as_bucket_view``, which fluxir sets), and a fixed reserve for the CUDA context, cuBLAS/NCCL
workspaces and allocator slack. ``fits`` lists the largest micro-batch whose total is within a card.

``--write`` stores the result in ``src/fluxir/configs/train_memory.json``: the preflight check's budgets
(``fluxir.preflight``) and the memory table of docs/training.md are read from / tested against that file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fluxir.compat import storage_id

GIB = 2**30
SIZES = ((1024, 768), (768, 768), (512, 768))  # the paper's buckets, (width, height)
BATCH_SIZES = tuple(range(1, 9))
PIXEL_LOSS = {"whole": None, "crop_512": 512, "none": 0}  # L_P variant -> train.pixel_loss_crop (0: alpha = 0)
# GiB torch reports for the cards (torch.cuda.get_device_properties().total_memory / 2**30)
CARDS_GIB = {"80GB": 79.3, "141GB": 139.8}  # A100/H100 80 GB; H200 141 GB
# CUDA context (~0.5 GiB), cuBLAS and NCCL workspaces, allocator rounding and fragmentation
RESERVE_GIB = 3.0
OUTPUT = Path(__file__).resolve().parents[1] / "src/fluxir/configs/train_memory.json"


# ----------------------------------------------------------------------------------------------------
# Counting


class SavedBytes:
    """Bytes saved for backward by autograd, by component (views of one storage count once; weights never)."""

    def __init__(self, weights: list[nn.Module]) -> None:
        self.weights = {storage_id(p) for m in weights for p in m.parameters()}
        self.saved: dict[str, dict[int, int]] = {}
        self.component = "flux_adapter"

    def pack(self, t: Tensor) -> Tensor:
        key = storage_id(t)
        if key not in self.weights:
            self.saved.setdefault(self.component, {})[key] = t.untyped_storage().nbytes()
        return t

    def attribute(self, module: nn.Module, name: str) -> list[Any]:
        """Count what ``module``'s forward saves under ``name``."""

        def enter(*_):
            self.component = name

        def leave(*_):
            self.component = "flux_adapter"

        return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def gib(self) -> dict[str, float]:
        return {name: sum(v.values()) / GIB for name, v in self.saved.items()}

    def largest(self) -> dict[str, float]:
        return {name: max(v.values()) / GIB for name, v in self.saved.items()}


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """CUDA autocast switched on as ``torch.autocast("cuda")`` does, also where no GPU is present (that
    constructor refuses then): on fake CUDA tensors CUDA autocast's own kernels decide every op's dtype."""
    previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", previous[0])
        torch.set_autocast_dtype("cuda", previous[1])


def autocast_for(device: str) -> contextlib.AbstractContextManager:
    """accelerate's bf16 autocast for a device type (CUDA's also without a GPU, see cuda_autocast)."""
    return cuda_autocast() if device == "cuda" else torch.autocast(device, dtype=torch.bfloat16)


def fake_mode() -> Any:
    from fluxir.compat import fake_tensor_mode

    return fake_tensor_mode()


# ----------------------------------------------------------------------------------------------------
# The models and one training micro-step (training's own functions)


def build_models(
    flux_config: dict[str, Any],
    vae_config: dict[str, Any],
    dtype: torch.dtype,
    device: str,
    text_len: int,
    cfg: Any,
    mode: Any,
) -> tuple[Any, nn.Module]:
    """(fluxir.training.Models, ControlledFlux) as ``load_models`` / ``build_adapter`` set them up, built on
    the meta device, then given fake ``device`` tensors of ``mode`` (``fake_mode()``; nothing allocated)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from fluxir.models.controlled_flux import freeze_flux
    from fluxir.training.loss import ControlledFlux, Models, build_adapter

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # frozen weights built in their dtype (no float32 copy)
    try:
        with torch.device("meta"):
            flux = FluxTransformer2DModel(**flux_config)
            vae = AutoencoderKL(**vae_config)
    finally:
        torch.set_default_dtype(previous)
    freeze_flux(flux)
    vae.requires_grad_(False).eval()
    if cfg.gradient_checkpointing:
        flux.enable_gradient_checkpointing()
    with torch.device("meta"):
        models = Models(
            flux,
            vae,
            torch.zeros(1, text_len, flux.config.joint_attention_dim, dtype=dtype),
            torch.zeros(1, flux.config.pooled_projection_dim, dtype=dtype),
            {},
        )
        adapter = build_adapter(cfg, models)
    with mode:
        for module in (flux, vae, adapter):
            move_to(module, device)
        models.prompt_embeds = torch.empty_like(models.prompt_embeds, device=device)
        models.pooled_embeds = torch.empty_like(models.pooled_embeds, device=device)
    return models, ControlledFlux(flux, adapter)


def move_to(module: nn.Module, device: str) -> None:
    """Give every parameter and buffer of a meta module an (uninitialised) tensor on ``device``, in place
    (``Module.to`` cannot: see ``fluxir.compat``)."""
    from fluxir.compat import replace_tensors

    replace_tensors(module, lambda t: torch.empty_like(t, device=device))


def micro_batch(batch_size: int, width: int, height: int, cfg: Any, device: str) -> Any:
    from fluxir.training.loss import MicroBatch

    h, w = height // 8, width // 8
    z = [torch.randn(batch_size, h * w // 4, 64, device=device) for _ in range(3)]  # (B, N, 64) float32
    crop = cfg.pixel_loss_crop and cfg.pixel_loss_crop // 8
    crops = None if crop is None else [(0, 0)] * batch_size
    return MicroBatch(
        z0=z[0], z1=z[1], z_lq=z[2], t=torch.full((batch_size,), 0.5, device=device), crops=crops, h=h, w=w
    )


def count_step(models: Any, model: nn.Module, batch: Any, cfg: Any, device: str) -> dict[str, float]:
    """GiB of one micro-step's activations (forward of ``flow_matching_loss``, autograd's saved tensors).

    Fake CUDA tensors cannot run backward (autograd's engine asks the CUDA driver), so the backward peak is
    modelled: the backward first walks the decoder (everything saved is alive), then Flux's blocks from the
    last, each checkpointed block recomputed (its activations alive while its backward runs). On top of
    either comes a working set of gradients, twice the largest tensor saved in that phase:

        peak = max(saved_flux + saved_decoder + 2 x largest_decoder,  saved_flux + recomputed_block + 2 x largest_flux)
    """
    from fluxir.training.loss import flow_matching_loss

    saved = SavedBytes([models.flux, models.vae, model.adapter])
    hooks = saved.attribute(models.vae.decoder, "decoder")
    units = [models.flux.transformer_blocks[0], models.flux.single_transformer_blocks[0], model.adapter.block]
    calls: list[tuple[nn.Module, tuple, dict]] = []
    if cfg.gradient_checkpointing:  # capture one call of each block kind (its inputs) to recompute it alone
        hooks += [u.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)), with_kwargs=True) for u in units]
    try:
        with autocast_for(device), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            flow_matching_loss(model, models.flux, models.vae, batch, models.prompt_embeds, models.pooled_embeds, cfg)
    finally:
        for hook in hooks:
            hook.remove()
    recomputed = max((block_saved(m, a, k, models, model, device) for m, a, k in calls), default=0.0)
    gib = saved.gib()
    flux, decoder = gib.get("flux_adapter", 0.0), gib.get("decoder", 0.0)
    largest = saved.largest()
    peak = max(
        flux + decoder + 2 * largest.get("decoder", 0.0), flux + recomputed + 2 * largest.get("flux_adapter", 0.0)
    )
    return {"saved_flux_adapter": flux, "saved_decoder": decoder, "recomputed_block": recomputed, "step_peak": peak}


def block_saved(block: nn.Module, args: tuple, kwargs: dict, models: Any, model: nn.Module, device: str) -> float:
    """GiB one checkpointed block saves when it is recomputed in backward (run alone, with gradient)."""

    def grad(x: Any) -> Any:
        return x.detach().requires_grad_() if isinstance(x, Tensor) and x.is_floating_point() else x

    saved = SavedBytes([models.flux, models.vae, model.adapter])
    with autocast_for(device), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        block(*[grad(x) for x in args], **{k: grad(v) for k, v in kwargs.items()})
    return sum(saved.gib().values())


def static_gib(models: Any, model: nn.Module) -> dict[str, float]:
    """Memory held for the whole run, from parameter counts and dtypes."""

    def size(params) -> float:
        return sum(p.numel() * p.element_size() for p in params) / GIB

    grads = sum(p.numel() * 4 for p in model.adapter.parameters() if p.requires_grad) / GIB  # float32 masters
    return {
        "flux_weights": size(models.flux.parameters()),
        "vae_weights": size(models.vae.parameters()),
        "adapter_weights": size(model.adapter.parameters()),
        "adapter_grads_in_ddp_buckets": grads,  # gradient_as_bucket_view: the gradients are views of the buckets
        "adamw_states": 2 * grads,
    }  # m and v, float32


def decoder_saved_under_autocast(models: Any, width: int, height: int) -> float:
    """GiB the L_P decoder would save if it ran under CUDA autocast (its norms in float32), batch 1."""
    z = torch.randn(1, 16, height // 8, width // 8, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    saved = SavedBytes([models.vae])
    with cuda_autocast(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        models.vae.decode(z)
    return sum(saved.gib().values())


# ----------------------------------------------------------------------------------------------------
# The table


def train_config(pixel_loss: str, checkpointing: bool = True) -> Any:
    from fluxir.parameters.config import load_params
    from fluxir.training.config import TrainConfig

    crop = PIXEL_LOSS[pixel_loss]
    return TrainConfig.from_params(
        {
            **load_params("base", [], Path(__file__).resolve().parents[1])["train"],  # every field
            "pixel_loss_weight": 0.0 if crop == 0 else 1.0,
            "pixel_loss_crop": crop or None,
            "gradient_checkpointing": checkpointing,
        }
    )


def memory_table(
    progress: Callable[[str], None] = lambda _: None,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> dict[str, Any]:
    from fluxir.models.flux import load_config

    flux_config, vae_config = load_config("flux1_dev_transformer"), load_config("flux1_dev_vae")
    rows, static, t0, mode = [], None, time.perf_counter(), fake_mode()
    for checkpointing in (True, False):
        cfg = train_config("whole", checkpointing)
        models, model = build_models(
            flux_config, vae_config, torch.bfloat16, "cuda", cfg.max_sequence_length, cfg, mode
        )
        static = static or static_gib(models, model)
        with mode:
            for width, height in sizes:
                for pixel_loss in PIXEL_LOSS:
                    for b in batch_sizes if checkpointing else (1,):
                        cfg = train_config(pixel_loss, checkpointing)
                        step = count_step(models, model, micro_batch(b, width, height, cfg, "cuda"), cfg, "cuda")
                        rows.append(
                            {
                                "size": f"{width}x{height}",
                                "batch_size": b,
                                "pixel_loss": pixel_loss,
                                "gradient_checkpointing": checkpointing,
                                **{k: round(v, 3) for k, v in step.items()},
                            }
                        )
                        progress(f"{rows[-1]} ({time.perf_counter() - t0:.0f} s)")
    with mode:
        under_autocast = {
            name: round(decoder_saved_under_autocast(models, w, h), 3)
            for name, (w, h) in {"1024x768": (1024, 768), "crop_512": (512, 512)}.items()
        }
    static_total = sum(static.values())
    for row in rows:
        row["total"] = round(static_total + row["step_peak"] + RESERVE_GIB, 2)
    fits = {
        card: {
            size: {
                lp: max(
                    [
                        r["batch_size"]
                        for r in rows
                        if r["size"] == size
                        and r["pixel_loss"] == lp
                        and r["gradient_checkpointing"]
                        and r["total"] <= cap
                    ]
                    or [0]
                )
                for lp in PIXEL_LOSS
            }
            for size in (f"{w}x{h}" for w, h in sizes)
        }
        for card, cap in CARDS_GIB.items()
    }
    return {
        "what": "GiB per GPU of one FluxIR training micro-step on FLUX.1-dev, computed on fake CUDA tensors "
        "with CUDA autocast's dtype rules (benchmarks/train_memory.py), not measured",
        "dtype": "bf16 frozen Flux + VAE, float32 adapter, bf16 autocast",
        "torch": torch.__version__,
        "reserve_gib": RESERVE_GIB,
        "cards_gib": CARDS_GIB,
        "static_gib": {k: round(v, 3) for k, v in static.items()},
        "static_total_gib": round(static_total, 2),
        "ddp_extra_gib_without_bucket_view": round(static["adapter_grads_in_ddp_buckets"], 3),
        "decoder_saved_gib_if_under_cuda_autocast": under_autocast,
        "rows": rows,
        "largest_batch_that_fits": fits,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The memory tables of docs/training.md (a test holds the docs to the committed JSON)."""
    static, rows = result["static_gib"], result["rows"]
    sizes = [f"{w}x{h}" for w, h in SIZES]

    def row(size: str, lp: str, b: int, checkpointing: bool = True) -> dict[str, Any]:
        return next(
            r
            for r in rows
            if (r["size"], r["pixel_loss"], r["batch_size"], r["gradient_checkpointing"])
            == (size, lp, b, checkpointing)
        )

    one = {lp: row("1024x768", lp, 1) for lp in PIXEL_LOSS}
    lines = [
        "| item (1024x768, batch 1) | GiB |",
        "|---|---|",
        f"| Flux weights, bf16, frozen | {static['flux_weights']:.2f} |",
        f"| VAE weights, bf16, frozen | {static['vae_weights']:.2f} |",
        f"| adapter weights, fp32 | {static['adapter_weights']:.2f} |",
        (
            f"| adapter gradients, fp32 (inside DDP's buckets: `gradient_as_bucket_view`) | "
            f"{static['adapter_grads_in_ddp_buckets']:.2f} |"
        ),
        f"| AdamW m and v, fp32 | {static['adamw_states']:.2f} |",
        f"| **static total** | **{result['static_total_gib']:.2f}** |",
        f"| (DDP without bucket views would add) | {result['ddp_extra_gib_without_bucket_view']:.2f} |",
        f"| saved for backward: Flux + adapter, gradient checkpointing | {one['whole']['saved_flux_adapter']:.2f} |",
        f"| one checkpointed block recomputed in backward | {one['whole']['recomputed_block']:.2f} |",
        (
            f"| saved for backward: L_P decoder, whole image / 512 crop | {one['whole']['saved_decoder']:.2f} / "
            f"{one['crop_512']['saved_decoder']:.2f} |"
        ),
        (
            "| (the same decoder under CUDA autocast, whole image / 512 crop) | "
            f"{result['decoder_saved_gib_if_under_cuda_autocast']['1024x768']:.2f} / "
            f"{result['decoder_saved_gib_if_under_cuda_autocast']['crop_512']:.2f} |"
        ),
        (
            "| saved for backward: Flux + adapter, no checkpointing | "
            f"{row('1024x768', 'whole', 1, False)['saved_flux_adapter']:.2f} |"
        ),
        f"| step peak (activations + backward working set), whole image L_P | {one['whole']['step_peak']:.2f} |",
        f"| reserve: CUDA context, workspaces, allocator slack | {result['reserve_gib']:.2f} |",
        f"| **batch 1, whole-image L_P (the defaults)** | **{one['whole']['total']:.2f}** |",
        f"| batch 1, no gradient checkpointing | {row('1024x768', 'whole', 1, False)['total']:.2f} |",
        "",
        (
            "Total GiB per GPU by micro-batch (`train.batch_size`), with checkpointing; L_P whole image / "
            "`pixel_loss_crop: 512` / off:"
        ),
        "",
        "| batch | " + " | ".join(f"{size} {lp}" for size in sizes for lp in ("whole", "crop", "off")) + " |",
        "|---" * (1 + 3 * len(sizes)) + "|",
    ]
    for b in BATCH_SIZES:
        lines.append(
            f"| {b} | " + " | ".join(f"{row(size, lp, b)['total']:.1f}" for size in sizes for lp in PIXEL_LOSS) + " |"
        )
    for card, cap in result["cards_gib"].items():
        fits = result["largest_batch_that_fits"][card]
        lines.append(
            f"| fits {card} ({cap} GiB) | "
            + " | ".join(
                str(fits[size][lp]) + ("+" if fits[size][lp] == BATCH_SIZES[-1] else "")
                for size in sizes
                for lp in PIXEL_LOSS
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--write", action="store_true", help=f"also write {OUTPUT.relative_to(OUTPUT.parents[3])}")
    parser.add_argument("--markdown", action="store_true", help="print the docs tables of the committed JSON only")
    parser.add_argument(
        "--sizes", nargs="+", default=[f"{w}x{h}" for w, h in SIZES], help="buckets WIDTHxHEIGHT (default: the paper's)"
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES), help="micro-batch sizes")
    args = parser.parse_args(argv)
    sizes = tuple(tuple(int(v) for v in size.split("x")) for size in args.sizes)
    if args.write and (sizes != SIZES or tuple(args.batch_sizes) != BATCH_SIZES):
        parser.error("--write stores the whole table: drop --sizes and --batch-sizes")
    if args.markdown:
        print(markdown_table(json.loads(OUTPUT.read_text())))
        return
    result = memory_table(lambda line: print(line, file=sys.stderr), sizes, tuple(args.batch_sizes))
    if args.write:
        OUTPUT.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"static {result['static_total_gib']} GiB: {result['static_gib']}")
    for row in result["rows"]:
        print(row)
    print("largest micro-batch that fits:", result["largest_batch_that_fits"])


if __name__ == "__main__":
    main()
