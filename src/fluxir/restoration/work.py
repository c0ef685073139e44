"""What restoring one image costs, stated before it runs: the output size, the restorer's own units of work
and an estimate of the time.

- FluxIR: diffusion tiles of ``restore.tile_size`` x Euler steps (each step runs Flux once per tile);
- the Flux ControlNet upscaler: the whole image (it does not tile) x ``baselines.flux_controlnet.steps``;
- Real-ESRGAN: one network pass per tile of ``baselines.realesrgan.tile_size`` LQ pixels, no steps.

``check_output_size`` refuses an output above ``restore.max_output_megapixels`` before any model loads. For
the ControlNet the smaller ``baselines.flux_controlnet.max_output_megapixels`` binds as well: without tiles
its memory and time grow with the output, so the tiled restorers' bound does not hold for it.

The time is (seconds per unit) x (units), an estimate. Before the first image no rate is known, so
``warm_up_rate`` times the loaded restorer on one unit shaped like the image's (one tile for two steps, the
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
    """One image's output size and the units of work of its restorer (``units`` of ``unit`` each)."""

    method: str  # fluxir | flux_controlnet | realesrgan
    in_size: tuple[int, int]  # (width, height)
    out_size: tuple[int, int]  # (width, height)
    tiles: int  # FluxIR: diffusion tiles; Real-ESRGAN: LQ tiles; the ControlNet: 1, the whole image
    steps: int | None  # sampler steps; None: Real-ESRGAN, one pass per tile
    unit_size: tuple[int, int]  # (height, width) in pixels of one tile as the model sees it

    @property
    def megapixels(self) -> float:
        return self.out_size[0] * self.out_size[1] / 1e6

    @property
    def passes(self) -> int:
        """Model passes: tiles x steps (Real-ESRGAN: tiles)."""
        return self.tiles * (self.steps or 1)

    @property
    def unit(self) -> str:
        return {"realesrgan": "tile", "flux_controlnet": "step"}.get(self.method, "tile-step")

    def work_text(self) -> str:
        if self.method == "realesrgan":
            return f"{self.tiles} Real-ESRGAN tile(s), one pass each (no steps)"
        if self.method == "flux_controlnet":
            return f"the whole image (the Flux ControlNet does not tile) x {self.steps} steps"
        return f"{self.tiles} tile(s) x {self.steps} steps"

    def describe(self, seconds_per_pass: float | None = None, basis: str = "rate of the images before") -> str:
        """``1024x768 -> 4096x3072 (12.6 MP), 20 tile(s) x 20 steps, estimated 6.0 min (400 tile-steps x 0.9 s,
        <basis>)``; without a rate the line says there is no estimate yet."""
        (w, h), (ow, oh) = self.in_size, self.out_size
        line = f"{w}x{h} -> {ow}x{oh} ({self.megapixels:.1f} MP), {self.work_text()}"
        if seconds_per_pass is None:
            return f"{line}, no time estimate yet"
        seconds = self.passes * seconds_per_pass
        total = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
        return f"{line}, estimated {total} ({self.passes} {self.unit}s x {seconds_per_pass:.3g} s, {basis})"


def plan_work(height: int, width: int, cfg: RestoreConfig, public: Any = None) -> RestoreWork:
    """The ``RestoreWork`` of an (height, width) input from the sizes alone (no model needed). ``public``: the
    settings of a public restorer (``RealESRGANConfig`` / ``FluxControlNetConfig``), None for FluxIR."""
    from fluxir.restoration.controlnet import FluxControlNetConfig
    from fluxir.restoration.realesrgan import RealESRGANConfig

    out_h, out_w = output_size(height, width, cfg)
    sizes = ((width, height), (out_w, out_h))
    if isinstance(public, RealESRGANConfig):
        h, w = height + min(public.pre_pad, height - 1), width + min(public.pre_pad, width - 1)  # reflect pre-pad
        tile = public.tile_size
        if tile is None or (h <= tile and w <= tile):
            return RestoreWork("realesrgan", *sizes, 1, None, (h, w))
        return RestoreWork("realesrgan", *sizes, math.ceil(h / tile) * math.ceil(w / tile), None, (tile, tile))
    if isinstance(public, FluxControlNetConfig):
        return RestoreWork("flux_controlnet", *sizes, 1, public.steps, (round_up(out_h), round_up(out_w)))
    token_tile = cfg.tile_size and cfg.tile_size // MULTIPLE
    overlap = cfg.tile_overlap // MULTIPLE
    rows = tile_spans(round_up(out_h) // MULTIPLE, token_tile, overlap)
    cols = tile_spans(round_up(out_w) // MULTIPLE, token_tile, overlap)
    unit = ((rows[0][1] - rows[0][0]) * MULTIPLE, (cols[0][1] - cols[0][0]) * MULTIPLE)
    return RestoreWork("fluxir", *sizes, len(rows) * len(cols), cfg.steps, unit)


def check_output_size(height: int, width: int, cfg: RestoreConfig, name: str, public: Any = None) -> RestoreWork:
    """The image's ``RestoreWork``; ValueError naming sizes, scale, the work and the parameters to change when
    its output exceeds the limit (checked before any model is loaded; see the module docstring)."""
    work = plan_work(height, width, cfg, public)
    limit, parameter, why = cfg.max_output_megapixels, "restore.max_output_megapixels", ""
    if work.method == "flux_controlnet" and public.max_output_megapixels < limit:
        limit, parameter = public.max_output_megapixels, "baselines.flux_controlnet.max_output_megapixels"
        why = " (the Flux ControlNet restores the whole image at once, without tiles: memory and time grow with it)"
    if work.megapixels <= limit:
        return work
    (w, h), (ow, oh) = work.in_size, work.out_size
    fits = math.sqrt(limit * 1e6 / (w * h))  # the scale that gives exactly the limit
    how = f"restore.scale {cfg.scale:g}" if cfg.target_size is None else f"restore.target_size {cfg.target_size}"
    raise ValueError(
        f"{name}: {w}x{h} with {how} gives a {ow}x{oh} output ({work.megapixels:.1f} MP, {work.work_text()}), "
        f"above {parameter} = {limit:g}{why}. Lower restore.scale (at most {math.floor(fits * 10) / 10:g} fits), "
        f"set restore.target_size (e.g. {math.floor(fits * max(w, h))}), or raise {parameter} if this machine "
        "can take it (docs/restoration.md)"
    )


def _now() -> float:
    if torch.cuda.is_available():  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize()
    return time.perf_counter()


def warm_up_rate(restorer: Any, work: RestoreWork) -> float:
    """Seconds per unit of ``work`` (tile-step, step or tile) on this machine, timed on one unit of the same
    shape with the loaded ``restorer`` (see the module docstring); its settings are put back afterwards."""
    unit_h, unit_w = work.unit_size
    if work.method == "realesrgan":
        geometry, scale, pad = restorer.config, restorer.cfg.net_scale, restorer.cfg.pre_pad
        lq = np.full((max(1, unit_h - pad), max(1, unit_w - pad), 3), 128, np.uint8)
        restorer.config = replace(geometry, target_size=[lq.shape[1] * scale, lq.shape[0] * scale])
        try:
            restorer.restore(lq)  # start-up: kernels, allocator
            start = _now()
            restorer.restore(lq)
            return _now() - start
        finally:
            restorer.config = geometry
    stamps: list[float] = []
    saved = (restorer.config, getattr(restorer, "cfg", None))
    if work.method == "flux_controlnet":
        restorer.cfg = replace(restorer.cfg, steps=2)
        restorer.config = replace(restorer.config, target_size=[unit_w, unit_h])
    else:
        restorer.config = replace(restorer.config, steps=2, start_t=1.0, target_size=[unit_w, unit_h])
    try:
        restorer.restore(np.full((8, 8, 3), 128, np.uint8), on_step=lambda done, total: stamps.append(_now()))
    finally:
        restorer.config = saved[0]
        if work.method == "flux_controlnet":
            restorer.cfg = saved[1]
    return stamps[1] - stamps[0]
