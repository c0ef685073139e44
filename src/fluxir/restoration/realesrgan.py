"""Real-ESRGAN x4plus (Wang et al. 2021), a public restorer beside FluxIR: basicsr's ``RRDBNet`` from the published
``.pth`` (``params_ema``, else ``params``), run as ``RealESRGANer.enhance``: optional reflect pre-padding, tiles of
``tile_size`` with ``tile_pad`` context pixels cut from the output (no blending), clamped and rounded; another
output size than 4x is a Lanczos resize of the 4x output, like its ``--outscale``. Shapes: image (h, w, 3) uint8
-> x (1, 3, h, w) float in [0, 1] -> y (1, 3, 4h, 4w) -> (H, W, 3) uint8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fluxir.compat import import_basicsr
from fluxir.io.images import check_rgb_uint8
from fluxir.io.provenance import sha256_file
from fluxir.models.loading import resolve_device
from fluxir.parameters.config import Config, Rule
from fluxir.restoration.restore_config import DTYPES, RestoreWork, now, output_size
from fluxir.runtime.progress import progress as progress_bar

REALESRGAN_RULES = (
    Rule("weights", "text", note=" (the RealESRGAN_x4plus.pth file)"),
    Rule("num_feat", "positive_int"),
    Rule("num_block", "positive_int"),
    Rule("num_grow_ch", "positive_int"),
    Rule("net_scale", "choice", (4,), must="4 (RealESRGAN_x4plus; x2 models need Real-ESRGAN's pixel-unshuffle input)"),
    Rule("tile_size", "positive_int", nullable=True, note=" (LQ pixels per tile; null: the whole image at once)"),
    Rule("tile_pad", "nonneg_int"),
    Rule("pre_pad", "nonneg_int"),
    Rule("dtype", "choice", DTYPES),
    Rule("device", "text", note=" (auto, cpu, cuda, cuda:1, ...)"),
)


@dataclass
class RealESRGANConfig(Config):
    """``baselines.realesrgan`` (parameters_baselines.yml documents each key)."""

    weights: str
    num_feat: int
    num_block: int
    num_grow_ch: int
    net_scale: int
    tile_size: int | None
    tile_pad: int
    pre_pad: int
    dtype: str
    device: str

    PREFIX, RULES = "baselines.realesrgan.", REALESRGAN_RULES

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output but the weight file's location (its content is hashed)."""
        return {k: v for k, v in asdict(self).items() if k not in ("weights", "device")}


def weights_file(cfg: RealESRGANConfig) -> Path:
    path = Path(cfg.weights)
    if not path.is_file():
        raise ValueError(
            f"baselines.realesrgan.weights: {path} not found; download RealESRGAN_x4plus.pth "
            "(`python -m fluxir.fetch --only baselines`) or point the parameter at it"
        )
    return path


def load_rrdbnet(cfg: RealESRGANConfig) -> torch.nn.Module:
    path = weights_file(cfg)
    import_basicsr()
    from basicsr.archs.rrdbnet_arch import RRDBNet

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, not a torch file, pickled code
        raise ValueError(
            f"baselines.realesrgan.weights: {path} is not a readable PyTorch checkpoint ({err}); download it again"
        ) from err
    key = next((k for k in ("params_ema", "params") if isinstance(checkpoint, dict) and k in checkpoint), None)
    if key is None:
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path}: no 'params_ema' or 'params' state dict (found {found}); is it a Real-ESRGAN RRDBNet checkpoint?"
        )
    net = RRDBNet(
        3, 3, scale=cfg.net_scale, num_feat=cfg.num_feat, num_block=cfg.num_block, num_grow_ch=cfg.num_grow_ch
    )
    try:
        net.load_state_dict(checkpoint[key], strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path} does not fit RRDBNet(num_feat={cfg.num_feat}, num_block={cfg.num_block}, "
            f"num_grow_ch={cfg.num_grow_ch}): set baselines.realesrgan.* to the file's architecture "
            f"({str(err).splitlines()[0]})"
        ) from err
    return net.eval().requires_grad_(False)


# Adapted from realesrgan/utils.py RealESRGANer.tile_process (Real-ESRGAN 0.3.0, BSD-3-Clause).
def tiled_forward(
    net: torch.nn.Module, x: torch.Tensor, scale: int, tile: int | None, pad: int, progress: bool = False
) -> torch.Tensor:
    """(1, 3, h, w) -> (1, 3, scale*h, scale*w); each ``tile`` x ``tile`` block is run with ``pad`` context pixels."""
    _, _, height, width = x.shape
    if tile is None or (height <= tile and width <= tile):
        return net(x)
    out = x.new_zeros(1, 3, height * scale, width * scale)
    tiles = [(y0, x0) for y0 in range(0, height, tile) for x0 in range(0, width, tile)]
    for y0, x0 in progress_bar(tiles, desc="tiles", unit="tile", leave=False, disable=not progress):
        y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
        py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)  # the tile with its context, inside the image
        py1, px1 = min(y1 + pad, height), min(x1 + pad, width)
        y = net(x[:, :, py0:py1, px0:px1])  # (1, 3, scale*(py1-py0), scale*(px1-px0))
        top, left = (y0 - py0) * scale, (x0 - px0) * scale
        out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = y[
            :, :, top : top + (y1 - y0) * scale, left : left + (x1 - x0) * scale
        ]
    return out


class RealESRGANRestorer:
    """(h, w, 3) uint8 -> (H, W, 3) uint8 at ``geometry``'s size, no colour fix (as the published inference)."""

    def __init__(self, cfg: RealESRGANConfig, geometry: Any) -> None:
        self.cfg = cfg
        self.config = geometry
        self.device = resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.net = load_rrdbnet(cfg).to(self.device, self.dtype)

    @torch.no_grad()
    def restore(self, lq: np.ndarray, progress: bool = False, on_step: Any = None) -> np.ndarray:
        lq = check_rgb_uint8(lq, "use read_photo() for files")
        height, width = output_size(lq.shape[0], lq.shape[1], self.config)
        cfg, s = self.cfg, self.cfg.net_scale
        x = torch.from_numpy(np.array(lq)).permute(2, 0, 1)[None].to(self.device, torch.float32) / 255.0
        if cfg.pre_pad:  # reflect needs pad < side: Real-ESRGAN's pre_pad 10 on a tiny LQ would fail
            x = F.pad(x, (0, min(cfg.pre_pad, x.shape[3] - 1), 0, min(cfg.pre_pad, x.shape[2] - 1)), mode="reflect")
        y = tiled_forward(self.net, x.to(self.dtype), s, cfg.tile_size, cfg.tile_pad, progress)
        y = y[:, :, : lq.shape[0] * s, : lq.shape[1] * s].float().clamp(0, 1)  # pre-padding cut off
        out = (y[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)  # (4h, 4w, 3)
        if on_step is not None:
            on_step(1, 1)
        if out.shape[:2] != (height, width):  # --outscale: Lanczos from the network's x4
            out = np.asarray(Image.fromarray(out).resize((width, height), Image.Resampling.LANCZOS))
        return out


def plan_work(height: int, width: int, restore: Any, cfg: RealESRGANConfig) -> RestoreWork:
    out_h, out_w = output_size(height, width, restore)
    h, w = height + min(cfg.pre_pad, height - 1), width + min(cfg.pre_pad, width - 1)  # reflect pre-pad
    tile = cfg.tile_size
    tiles, unit = (
        (1, (h, w)) if tile is None or (h <= tile and w <= tile) else (ceil(h / tile) * ceil(w / tile), (tile, tile))
    )
    text = f"{tiles} Real-ESRGAN tile(s), one pass each (no steps)"
    return RestoreWork((width, height), (out_w, out_h), tiles, None, unit, "tile", text)


def warm_up_rate(restorer: RealESRGANRestorer, work: RestoreWork) -> float:
    """Seconds per tile, the second of two runs on one tile (the first carries start-up costs)."""
    unit_h, unit_w = work.unit_size
    geometry, scale, pad = restorer.config, restorer.cfg.net_scale, restorer.cfg.pre_pad
    lq = np.full((max(1, unit_h - pad), max(1, unit_w - pad), 3), 128, np.uint8)
    restorer.config = replace(geometry, target_size=[lq.shape[1] * scale, lq.shape[0] * scale])
    try:
        restorer.restore(lq)
        start = now()
        restorer.restore(lq)
        return now() - start
    finally:
        restorer.config = geometry


def fingerprint(cfg: RealESRGANConfig) -> str:
    return sha256_file(weights_file(cfg))[:12]


def describe(cfg: RealESRGANConfig) -> str:
    tiles = f"tiles of {cfg.tile_size} px with {cfg.tile_pad} px context" if cfg.tile_size else "untiled"
    return (
        f"RRDBNet x{cfg.net_scale} (num_feat {cfg.num_feat}, num_block {cfg.num_block}, num_grow_ch "
        f"{cfg.num_grow_ch}) from {cfg.weights}; {tiles}, pre_pad {cfg.pre_pad}, {cfg.dtype}"
    )
