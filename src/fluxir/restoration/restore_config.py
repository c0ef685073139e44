"""The ``restore.*`` settings (``RestoreConfig``), the output size they imply, and what one image will cost
(``RestoreWork``), all known before any model loads. Sides are padded to multiples of 16 (VAE /8, 2x2 packing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fluxir.parameters.config import Config, Rule, field_problems, is_int

COLOR_FIX_METHODS = ("wavelet", "adain", "none")
OFFLOAD_MODES = ("none", "model", "sequential")  # fluxir.restoration.lowmem
QUANTIZE_MODES = ("none", "int8", "fp8", "nf4")
SCHEDULES = ("flux_shift", "linear")
DTYPES = ("float32", "bfloat16", "float16")
MULTIPLE = 16  # VAE downsampling 8 x 2x2 packing


def _is_size(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(is_int(s, 1) for s in value)
    return is_int(value, 1)


def _tile_rule(name: str, multiple: int) -> Rule:
    return Rule(
        name,
        lambda v: is_int(v, 2 * multiple) and v % multiple == 0,
        nullable=True,
        must=f"a multiple of {multiple} >= {2 * multiple} (or null: no tiling)",
    )


GEOMETRY_RULES = (
    Rule(
        "target_size", _is_size, nullable=True, must="an int (longer side) or [width, height] of positive ints or null"
    ),
    Rule("color_fix", "choice", COLOR_FIX_METHODS),
)
RESTORE_RULES = (
    *GEOMETRY_RULES,
    Rule("steps", "positive_int", note=" (paper: 20)"),
    Rule("schedule", "choice", SCHEDULES),
    _tile_rule("tile_size", 16),
    _tile_rule("vae_tile_size", 8),
    Rule("seed", "nonneg_int"),
    Rule("dtype", "choice", DTYPES),
    Rule("batch_size", "positive_int"),
    Rule("max_sequence_length", "positive_int", nullable=True),
    Rule("control_scale", "number_at_least", 0, must="a number >= 0 (0: plain Flux, 1: as trained)"),
    Rule("plain_flux_guidance", "number_at_least", 0),
    Rule("start_t", "interval", "(0, 1]", must="a number in (0, 1] (1: from pure noise)"),
    Rule("max_output_megapixels", "positive_number"),
    Rule("offload", "choice", OFFLOAD_MODES),
    Rule("quantize", "choice", QUANTIZE_MODES),
)


class _Geometry(Config):
    """A tile size 0 reads as null (no tiling); ``scale`` is checked only without a ``target_size``."""

    PREFIX = "restore."

    def joint_problems(self, failed: set[str]) -> list[str]:
        if "target_size" in failed or self.target_size is not None:
            return []
        return field_problems(self, [Rule("scale", "positive_number")], self.PREFIX)

    def __post_init__(self) -> None:
        for name in ("tile_size", "vae_tile_size"):
            if getattr(self, name, None) == 0:
                setattr(self, name, None)
        super().__post_init__()
        if isinstance(self.target_size, (list, tuple)):
            self.target_size = [int(s) for s in self.target_size]


@dataclass
class RestoreConfig(_Geometry):
    """How to restore: ``restore.*`` less the file parameters (conf/base/parameters_restore.yml documents each)."""

    steps: int  # paper Sec. 4.1: 20 sampling steps
    schedule: str  # "flux_shift" | "linear"
    scale: float  # output = input x scale (ignored when target_size is set)
    target_size: int | list[int] | None  # int: longer output side (aspect kept); [width, height]: exact
    tile_size: int | None  # diffusion tile in output pixels (multiple of 16); None/0: never tile
    tile_overlap: int  # pixels (multiple of 16), at most tile_size / 2
    vae_tile_size: int | None  # VAE tile in output pixels (multiple of 8); None/0: never tile
    vae_tile_overlap: int  # pixels (multiple of 8), at most vae_tile_size / 2
    color_fix: str  # "wavelet" | "adain" | "none"
    seed: int  # noise seed; the same seed gives the same output
    dtype: str  # transformer/adapter/VAE dtype (float16 VAEs run in float32 when force_upcast)
    device: str  # auto: cuda if available, else cpu
    batch_size: int  # tiles per transformer call
    max_sequence_length: int | None  # T5 tokens of the empty prompt; None: the adapter's text_seq_len (else 512)
    control_scale: float  # multiplies the adapter's controls: 0 = plain Flux, > 1 = closer to the LQ
    plain_flux_guidance: float  # Flux-dev's guidance input with no adapter (an adapter brings its trained one)
    start_t: float  # start the Euler integration at t = start_t from (1 - t) z_lq + t z_1; < 1: fewer steps
    max_output_megapixels: float  # larger outputs are refused before any model is loaded
    offload: str  # none | model | sequential (fluxir.restoration.lowmem)
    quantize: str  # none | int8 | fp8 | nf4: the frozen Flux transformer's linear weights
    compile: bool  # torch.compile Flux's blocks and the adapter block (fluxir.models.flux.compile_blocks)

    RULES = RESTORE_RULES

    def joint_problems(self, failed: set[str]) -> list[str]:
        found = super().joint_problems(failed)
        for tile_name, overlap_name, multiple in (
            ("tile_size", "tile_overlap", 16),
            ("vae_tile_size", "vae_tile_overlap", 8),
        ):
            tile, overlap = getattr(self, tile_name), getattr(self, overlap_name)
            if tile_name in failed or tile is None:
                continue
            if not (is_int(overlap, 0) and overlap % multiple == 0 and overlap <= tile // 2):
                found.append(
                    f"restore.{overlap_name} must be a multiple of {multiple} in [0, {tile_name}/2 = {tile // 2}], "
                    f"got {overlap!r}"
                )
        if self.offload == "sequential" and self.quantize in QUANTIZE_MODES[1:]:
            # accelerate's per-layer weight swapping rebuilds plain tensors from the CPU state dict; quantised
            # tensor subclasses (torchao, bitsandbytes) do not survive it.
            found.append(
                f"restore.offload=sequential cannot be combined with restore.quantize={self.quantize!r}: "
                "use offload=model with quantize, or sequential with quantize=none"
            )
        return found


@dataclass
class OutputGeometry(_Geometry):
    """What a public restorer takes from the restore settings: the output size and the colour fix."""

    scale: float
    target_size: int | list[int] | None
    color_fix: str

    RULES = GEOMETRY_RULES


def output_size(height: int, width: int, cfg: RestoreConfig | OutputGeometry) -> tuple[int, int]:
    """(H, W) of the restored image for an input of (height, width)."""
    if cfg.target_size is None:
        return max(1, round(height * cfg.scale)), max(1, round(width * cfg.scale))
    if isinstance(cfg.target_size, (list, tuple)):
        return int(cfg.target_size[1]), int(cfg.target_size[0])
    side = int(cfg.target_size)
    if width >= height:
        return max(1, round(height * side / width)), side
    return side, max(1, round(width * side / height))


def round_up(n: int, multiple: int = MULTIPLE) -> int:
    return -(-n // multiple) * multiple


# ----------------------------------------------------------------------------------------------------
# What one image costs: (seconds per unit) x (units planned from the sizes alone, ``Method.plan``). The first image's
# rate is timed on the loaded restorer (one unit shaped like the image's, the second of two passes: the first carries
# start-up costs; no VAE); later images use the rate measured on the images before them, VAE included.


@dataclass(frozen=True)
class RestoreWork:
    """One image's output size and the units of work of its restorer (``tiles`` x ``steps`` of ``unit``)."""

    in_size: tuple[int, int]  # (width, height)
    out_size: tuple[int, int]  # (width, height)
    tiles: int  # FluxIR: diffusion tiles; Real-ESRGAN: LQ tiles; the ControlNet: 1, the whole image
    steps: int | None  # sampler steps; None: Real-ESRGAN, one pass per tile
    unit_size: tuple[int, int]  # (height, width) in pixels of one tile as the model sees it
    unit: str  # what one pass is called: tile-step, step, tile
    work_text: str  # the work in words, e.g. "20 tile(s) x 20 steps"

    @property
    def megapixels(self) -> float:
        return self.out_size[0] * self.out_size[1] / 1e6

    @property
    def passes(self) -> int:
        return self.tiles * (self.steps or 1)

    def describe(self, seconds_per_pass: float | None = None, basis: str = "rate of the images before") -> str:
        """``1024x768 -> 4096x3072 (12.6 MP), 20 tile(s) x 20 steps, estimated 6.0 min (400 tile-steps x 0.9 s,
        <basis>)``; without a rate the line says there is no estimate yet."""
        (w, h), (ow, oh) = self.in_size, self.out_size
        line = f"{w}x{h} -> {ow}x{oh} ({self.megapixels:.1f} MP), {self.work_text}"
        if seconds_per_pass is None:
            return f"{line}, no time estimate yet"
        seconds = self.passes * seconds_per_pass
        total = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
        return f"{line}, estimated {total} ({self.passes} {self.unit}s x {seconds_per_pass:.3g} s, {basis})"


def check_output_size(work: RestoreWork, cfg: RestoreConfig, name: str, bound: tuple[float, str, str]) -> RestoreWork:
    """``work`` when its output is within ``bound`` (``Method.bound``), else ValueError naming sizes, scale, the
    work and the parameters to change."""
    limit, parameter, why = bound
    if work.megapixels <= limit:
        return work
    (w, h), (ow, oh) = work.in_size, work.out_size
    fits = math.sqrt(limit * 1e6 / (w * h))  # the scale that gives exactly the limit
    how = f"restore.scale {cfg.scale:g}" if cfg.target_size is None else f"restore.target_size {cfg.target_size}"
    raise ValueError(
        f"{name}: {w}x{h} with {how} gives a {ow}x{oh} output ({work.megapixels:.1f} MP, {work.work_text}), "
        f"above {parameter} = {limit:g}{why}. Lower restore.scale (at most {math.floor(fits * 10) / 10:g} fits), "
        f"set restore.target_size (e.g. {math.floor(fits * max(w, h))}), or raise {parameter} if this machine "
        "can take it (docs/restoration.md)"
    )


def now() -> float:
    """The clock after the accelerator's queued kernels have run (they run asynchronously)."""
    import torch  # here: building the pipelines (the evaluation's config imports this module) must not load torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def time_two_steps(restorer: Any, work: RestoreWork, field: str = "config", **two_steps: Any) -> float:
    """Seconds of the second of two sampler steps on one unit of ``work``: ``restorer.<field>`` gets ``two_steps``
    and ``restorer.config`` the unit's size for the run, both put back after."""
    saved = restorer.config, getattr(restorer, field)
    stamps: list[float] = []
    try:
        setattr(restorer, field, replace(saved[1], **two_steps))
        restorer.config = replace(restorer.config, target_size=[work.unit_size[1], work.unit_size[0]])
        restorer.restore(np.full((8, 8, 3), 128, np.uint8), on_step=lambda done, total: stamps.append(now()))
    finally:
        restorer.config = saved[0]
        setattr(restorer, field, saved[1])
    return stamps[1] - stamps[0]
