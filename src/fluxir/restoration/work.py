"""What restoring one image costs, stated before it runs: the output size, the restorer's own units of work
and an estimate of the time.

- FluxIR: diffusion tiles of ``restore.tile_size`` x Euler steps (each step runs Flux once per tile);
- the Flux ControlNet upscaler: the whole image (it does not tile) x ``baselines.flux_controlnet.steps``;
- Real-ESRGAN: one network pass per tile of ``baselines.realesrgan.tile_size`` LQ pixels, no steps.

``check_output_size`` refuses an output above ``restore.max_output_megapixels`` before any model loads. For
the ControlNet the smaller ``baselines.flux_controlnet.max_output_megapixels`` binds as well: without tiles
its memory and time grow with the output, so the tiled restorers' bound does not hold for it.

Each method plans its own work (``fluxir.restoration.methods``: FluxIR's here, the public ones in their
modules). The time is (seconds per unit) x (units), an estimate. Before the first image no rate is known, so
the method's warm-up times the loaded restorer on one unit shaped like the image's (one tile for two steps, the
second timed: the first carries start-up costs; Real-ESRGAN: one tile, run twice); it leaves out the VAE.
Later images use the rate measured on the images before them, VAE included.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fluxir.restoration.restore_config import MULTIPLE, RestoreConfig, output_size, round_up
from fluxir.restoration.sampler import tile_spans


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
        """Model passes: tiles x steps (Real-ESRGAN: tiles)."""
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


def fluxir_work(height: int, width: int, cfg: RestoreConfig) -> RestoreWork:
    """FluxIR's ``RestoreWork`` of an (height, width) input: diffusion tiles x steps."""
    out_h, out_w = output_size(height, width, cfg)
    token_tile = cfg.tile_size and cfg.tile_size // MULTIPLE
    overlap = cfg.tile_overlap // MULTIPLE
    rows = tile_spans(round_up(out_h) // MULTIPLE, token_tile, overlap)
    cols = tile_spans(round_up(out_w) // MULTIPLE, token_tile, overlap)
    unit = ((rows[0][1] - rows[0][0]) * MULTIPLE, (cols[0][1] - cols[0][0]) * MULTIPLE)
    tiles = len(rows) * len(cols)
    return RestoreWork(
        (width, height), (out_w, out_h), tiles, cfg.steps, unit, "tile-step", f"{tiles} tile(s) x {cfg.steps} steps"
    )


def check_output_size(work: RestoreWork, cfg: RestoreConfig, name: str, bound: tuple[float, str, str]) -> RestoreWork:
    """``work`` when its output is within ``bound`` (megapixels, parameter, why: ``Method.bound``), else
    ValueError naming sizes, scale, the work and the parameters to change (checked before any model loads)."""
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
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def time_two_steps(restorer: Any, target_size: list[int]) -> float:
    """Seconds of the second of two sampler steps of ``restorer`` at ``target_size`` (the first carries start-up
    costs); the caller sets two steps and puts the settings back."""
    stamps: list[float] = []
    restorer.config = replace(restorer.config, target_size=target_size)
    restorer.restore(np.full((8, 8, 3), 128, np.uint8), on_step=lambda done, total: stamps.append(now()))
    return stamps[1] - stamps[0]


def fluxir_warm_up(restorer: Any, work: RestoreWork) -> float:
    """Seconds per tile-step of FluxIR, timed on one tile of ``work``'s shape (see the module docstring)."""
    unit_h, unit_w = work.unit_size
    saved = restorer.config
    restorer.config = replace(saved, steps=2, start_t=1.0)
    try:
        return time_two_steps(restorer, [unit_w, unit_h])
    finally:
        restorer.config = saved
