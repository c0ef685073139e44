"""FluxIR restoration: a low-quality photo in, a restored photo ``scale`` times larger out (paper Sec. 3.2, 4.1).

1. Geometry. The LQ is upsampled (bicubic, as in training) to the output size H x W, padded (edge replicate) to
   multiples of 16 and cropped back at the end. Large images are cut into overlapping tiles (``tile_spans``)
   whose cosine-ramped weights sum to exactly 1 at every position (``tile_weights``).
2. VAE in tiles (``encode_tiled`` / ``decode_tiled``), blended with those weights, so accelerator memory depends on
   the tile size, not the image. Latents: z = (E(x) - shift) * scale, E(x) the posterior mean (deterministic).
3. The sampler (``Restorer.restore``): z_1 ~ N(0, I) (seeded, on the CPU: every device and tiling sees the same
   noise), then Euler steps of the rectified flow from t = 1 to t = 0. With z_t = (1 - t) z_0 + t z_1 the
   velocity is v = dz_t/dt = z_1 - z_0 (Eq. 7), so one step is

       z_{t_next} = z_t + (t_next - t) * v_p(z_t, z_lq, t)          (t_next < t)

   where v_p is the controlled Flux velocity (``controlled_flux_forward``, Eq. 1-4) with the adapter seeing the
   LQ latent z_lq. Tiled: each tile's velocity is computed on that tile alone (its own img_ids from 0: what Flux
   and the adapter were trained on) and blended with the tile weights before the step (MultiDiffusion,
   Bar-Tal et al. 2023; SUPIR's tiled sampler); noise, schedule and step are global: one image, not a mosaic.
   Fidelity: ``control_scale`` multiplies every adapter control (0 = plain Flux); ``start_t`` < 1 starts at
   z_t = (1 - t) z_lq + t z_1 and runs only the steps below it (SDEdit's idea on a rectified flow).
4. Decode, crop, colour fix (``color_fix``: wavelet / AdaIN against the upsampled LQ).

Shapes (FLUX.1-dev, 1024x1024 output): image (H, W, 3) uint8; latent (1, 16, H/8, W/8); token grid
(1, H/16, W/16, 64) (the packed latent kept 2-D so tiles are slices); a tile (B, h*w, 64) for the model.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import cpu_offload_with_hook
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image
from torch import Tensor

from fluxir.io.images import check_rgb_uint8
from fluxir.models.adapter import check_compatible
from fluxir.models.controlled_flux import controlled_flux_forward, freeze_flux, lq_condition
from fluxir.models.flux import compile_blocks, denormalise_latents, image_ids, normalise_latents, pack_grid, unpack_grid
from fluxir.models.loading import autocast_off, load_pipeline, resolve_device
from fluxir.models.prompts import PromptEncoder, cached_empty_prompt, save_empty_prompt
from fluxir.restoration.lowmem import attach_offload, quantize_transformer
from fluxir.restoration.restore_config import COLOR_FIX_METHODS, MULTIPLE, RestoreConfig, output_size, round_up
from fluxir.runtime.progress import progress as progress_bar

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# Geometry: packing, tiles and their blending weights


def tile_spans(length: int, tile: int | None, overlap: int) -> list[tuple[int, int]]:
    """[(start, end)] covering [0, length): n = ceil((length - overlap) / (tile - overlap)) tiles of exactly
    ``tile``, overlapping by at least ``overlap``, with evenly spread starts (one span when the length fits)."""
    if tile is None or length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)]
    return [(s, s + tile) for s in starts]


def span_weights(spans: list[tuple[int, int]], factor: int = 1) -> list[np.ndarray]:
    """1-D blending weights of each span at ``factor`` samples per unit; they sum to 1 at every position.

    A span ramps over its overlaps with w = sin^2(pi/2 * (p + 1/2) / R), whose mirror is cos^2 (two neighbours
    sum to exactly 1); dividing by the sum keeps the partition of unity where more than two spans overlap.
    """
    raw = []
    for k, (start, end) in enumerate(spans):
        w = np.ones((end - start) * factor, dtype=np.float64)
        if k > 0 and spans[k - 1][1] > start:
            r = (spans[k - 1][1] - start) * factor
            w[:r] *= np.sin(0.5 * np.pi * (np.arange(r) + 0.5) / r) ** 2
        if k + 1 < len(spans) and spans[k + 1][0] < end:
            r = (end - spans[k + 1][0]) * factor
            w[len(w) - r :] *= np.sin(0.5 * np.pi * (np.arange(r)[::-1] + 0.5) / r) ** 2
        raw.append(w)
    total = np.zeros(spans[-1][1] * factor)
    for (start, _), w in zip(spans, raw):
        total[start * factor : start * factor + len(w)] += w
    return [w / total[start * factor : start * factor + len(w)] for (start, _), w in zip(spans, raw)]


def tile_weights(
    height: int, width: int, tile: int | None, overlap: int, factor: int = 1
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Tiles of a (height, width) grid, row by row: ((y0, y1, x0, x1), weight (factor*(y1-y0), factor*(x1-x0))),
    products of per-axis partitions of unity; a generator, so only one weight map exists at a time."""
    ys, xs = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    wys, wxs = span_weights(ys, factor), span_weights(xs, factor)
    for (y0, y1), wy in zip(ys, wys):
        for (x0, x1), wx in zip(xs, wxs):
            yield (y0, y1, x0, x1), np.outer(wy, wx).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# VAE in tiles


def vae_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_tiled(
    vae: Any, image: np.ndarray, tile: int | None, overlap: int, device: str, dtype: torch.dtype
) -> Tensor:
    """(H, W, 3) uint8 -> normalised latent (1, C, H/f, W/f) float32; ``tile``/``overlap`` in pixels."""
    f = vae_factor(vae)
    height, width = image.shape[0] // f, image.shape[1] // f
    latent = torch.zeros(1, vae.config.latent_channels, height, width, device=device)
    for (y0, y1, x0, x1), w in tile_weights(height, width, tile and tile // f, overlap // f):
        x = torch.from_numpy(np.array(image[y0 * f : y1 * f, x0 * f : x1 * f])).to(device)
        x = (x.permute(2, 0, 1)[None].float() / 127.5 - 1).to(dtype)  # (1, 3, th*f, tw*f) in [-1, 1]
        with autocast_off():  # the VAE's own dtype, also inside training's validation
            mean = vae.encode(x).latent_dist.mode()  # (1, C, th, tw)
        latent[..., y0:y1, x0:x1] += torch.from_numpy(w).to(device) * mean.float()
    return normalise_latents(vae, latent)


def decode_tiled(vae: Any, latent: Tensor, tile: int | None, overlap: int, dtype: torch.dtype) -> np.ndarray:
    """Normalised latent (1, C, h, w) -> (h*f, w*f, 3) uint8, blended into a CPU float32 canvas."""
    f = vae_factor(vae)
    z = denormalise_latents(vae, latent)
    _, _, height, width = z.shape
    canvas = np.zeros((height * f, width * f, 3), dtype=np.float32)
    for (y0, y1, x0, x1), w in tile_weights(height, width, tile and tile // f, overlap // f, factor=f):
        with autocast_off():
            x = vae.decode(z[..., y0:y1, x0:x1].to(dtype)).sample  # (1, 3, th*f, tw*f) in ~[-1, 1]
        x = ((x[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()  # (th*f, tw*f, 3) in [0, 1]
        canvas[y0 * f : y1 * f, x0 * f : x1 * f] += w[..., None] * x
    return (canvas * 255).round().clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Sampler


# Adapted from the timestep set-up of diffusers.pipelines.flux.pipeline_flux.FluxPipeline.__call__ (diffusers 0.42.1):
# the same sigmas and shift, through the real scheduler, with the token count clamped.
def sigmas_for(steps: int, schedule: str, scheduler_config: dict[str, Any] | None, image_seq_len: int) -> Tensor:
    """(steps + 1,) float32 times t_0 = 1 > ... > t_steps = 0 of the Euler integration.

    ``flux_shift``: FluxPipeline's schedule (linspace(1, 1/steps) shifted by FlowMatchEulerDiscreteScheduler
    with mu = calculate_shift(min(image_seq_len, max_image_seq_len))); ``linear``: linspace(1, 0). The token count
    is clamped (4096 = 1024^2 px for FLUX.1-dev): mu extrapolates linearly and would push every sigma to ~1 for
    very large images; tiling never changes the schedule.
    """
    if schedule == "linear":
        return torch.linspace(1.0, 0.0, steps + 1)

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config or {}))
    cfg = scheduler.config
    base = np.linspace(1.0, 1.0 / steps, steps)
    mu = None  # read by the scheduler only with dynamic shifting
    if cfg.use_dynamic_shifting:
        mu = calculate_shift(
            min(image_seq_len, cfg.get("max_image_seq_len", 4096)),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
    scheduler.set_timesteps(sigmas=base, device="cpu", mu=mu)
    return scheduler.sigmas.float().cpu()  # the scheduler appends the terminal 0


def prompt_length(config: RestoreConfig, adapter: Any) -> int:
    """T5 tokens of the empty prompt: ``restore.max_sequence_length``, else the adapter's learned length, else 512."""
    if config.max_sequence_length is not None:
        return config.max_sequence_length
    learn = adapter is not None and adapter.config.learn_text_embeddings
    return adapter.config.text_seq_len if learn else 512


class Restorer:
    """A frozen Flux transformer, its VAE, the FluxIR adapter (None: plain Flux) and the empty prompt's embeddings."""

    def __init__(
        self,
        transformer: Any,
        vae: Any,
        scheduler_config: dict[str, Any],
        prompt_embeds: Tensor,
        pooled_prompt_embeds: Tensor,
        adapter: Any,
        config: RestoreConfig,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = getattr(torch, config.dtype)
        # Offload modes keep the weights on the CPU; accelerate's hooks bring them to self.device when used.
        home = self.device if config.offload == "none" else "cpu"
        # Cast and quantise where the weights are (the CPU when loaded for a low-memory mode), then move:
        # a 16 GB card never holds the bf16 transformer. The adapter is never quantised.
        self.transformer = _to(transformer, next(transformer.parameters()).device, self.dtype)
        freeze_flux(self.transformer)
        quantize_transformer(self.transformer, config.quantize)
        self.transformer = _to(self.transformer, home)
        # float16 Flux/SD VAEs overflow: run them in float32 when the config asks for it (as diffusers does).
        upcast = self.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        self.vae_dtype = torch.float32 if upcast else self.dtype
        self.vae = _to(vae, home, self.vae_dtype).eval().requires_grad_(False)
        self.offload_hooks = attach_offload(self.transformer, self.vae, config.offload, self.device)
        self.adapter = None
        # Flux-dev's guidance input: the value the adapter was trained with (no adapter: restore.plain_flux_guidance).
        self.guidance = adapter.config.guidance if adapter is not None else config.plain_flux_guidance
        if adapter is not None:
            check_compatible(adapter, transformer)
            self.adapter = adapter.to(self.device, self.dtype).eval().requires_grad_(False)
        if config.compile:
            compile_blocks(self.transformer, self.adapter)
        self.scheduler_config = dict(scheduler_config)
        self.prompt_embeds = prompt_embeds.to(self.device, self.dtype)  # (1, S, joint_attention_dim)
        self.pooled_prompt_embeds = pooled_prompt_embeds.to(self.device, self.dtype)  # (1, pooled_projection_dim)
        self.txt_ids = torch.zeros(self.prompt_embeds.shape[1], 3, device=self.device, dtype=self.dtype)  # (S, 3)

    @classmethod
    def from_pipeline(
        cls, pipe: Any, adapter: Any, config: RestoreConfig, embeds: dict[str, Tensor] | None = None
    ) -> Restorer:
        """From a loaded ``FluxPipeline``; without the empty prompt's ``embeds`` it is encoded once, then T5/CLIP
        are dropped from ``pipe``."""
        if embeds is None:
            device = resolve_device(config.device)
            # Text encoders left on the CPU (low-memory loading) visit the accelerator once, through accelerate's
            # hook, to encode the empty prompt; PromptEncoder then drops them.
            hooks = [
                cpu_offload_with_hook(encoder, device)[1]
                for encoder in (pipe.text_encoder, pipe.text_encoder_2)
                if device != "cpu" and encoder is not None and encoder.device.type == "cpu"
            ]
            embeds = PromptEncoder(pipe, [""], prompt_length(config, adapter), device).cache[""]
            for hook in hooks:
                hook.offload()
        prompt, pooled = embeds["prompt_embeds"], embeds["pooled_prompt_embeds"]
        return cls(pipe.transformer, pipe.vae, pipe.scheduler.config, prompt, pooled, adapter, config)

    @classmethod
    def from_source(
        cls, model: str, adapter: Any, config: RestoreConfig, prompt_cache: str | os.PathLike | None = None
    ) -> Restorer:
        """Load the Flux pipeline ``model`` (hub id or folder). With the empty prompt cached in ``prompt_cache`` (the
        catalog's ``prompt_embeddings``) T5 and CLIP are never loaded; otherwise it is encoded once and saved there."""
        low_memory = config.offload != "none" or config.quantize != "none"  # load on the CPU, quantise there
        device = "cpu" if low_memory else resolve_device(config.device)
        seq_len = prompt_length(config, adapter)
        embeds = cached_empty_prompt(prompt_cache, model, seq_len, config.dtype)
        if embeds is not None:
            pipe = load_pipeline(model, dtype=config.dtype, device=device, text_encoders=False)
            return cls.from_pipeline(pipe, adapter, config, embeds)
        pipe = load_pipeline(model, dtype=config.dtype, device=device)
        pipe.set_progress_bar_config(disable=True)
        restorer = cls.from_pipeline(pipe, adapter, config)
        embeds = {"prompt_embeds": restorer.prompt_embeds, "pooled_prompt_embeds": restorer.pooled_prompt_embeds}
        save_empty_prompt(prompt_cache, model, seq_len, config.dtype, pipe, embeds)
        return restorer

    # -- one image ---------------------------------------------------------------------------------

    @torch.no_grad()  # not inference_mode: model offload moves quantised (tensor-subclass) weights, which fails there
    def restore(
        self, lq: np.ndarray, progress: bool = False, on_step: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """(h, w, 3) uint8 LQ -> (H, W, 3) uint8 restored, (H, W) = ``output_size(h, w, config)``; ``on_step(done,
        total)`` after every Euler step."""
        cfg = self.config
        lq = check_rgb_uint8(lq, "use read_photo() for files")
        height, width = output_size(lq.shape[0], lq.shape[1], cfg)
        reference = lq_condition(lq, height, width)  # (H, W, 3): the LQ condition and the colour reference
        ph, pw = round_up(height), round_up(width)
        padded = np.pad(reference, ((0, ph - height), (0, pw - width), (0, 0)), mode="edge")  # (ph, pw, 3)

        z_lq = pack_grid(
            encode_tiled(self.vae, padded, cfg.vae_tile_size, cfg.vae_tile_overlap, self.device, self.vae_dtype)
        )  # (1, ph/16, pw/16, 64)
        gen = torch.Generator("cpu").manual_seed(cfg.seed)
        f = vae_factor(self.vae)
        noise = torch.randn(1, self.vae.config.latent_channels, ph // f, pw // f, generator=gen)  # z_1 (1, 16, h, w)
        z = pack_grid(noise).to(self.device)  # (1, ph/16, pw/16, 64), float32 throughout the integration
        grid_h, grid_w = z.shape[1], z.shape[2]

        token_tile = cfg.tile_size and cfg.tile_size // MULTIPLE
        tiles = [
            (box, torch.from_numpy(w).to(self.device)[..., None])  # weight (th, tw, 1)
            for box, w in tile_weights(grid_h, grid_w, token_tile, cfg.tile_overlap // MULTIPLE)
        ]
        sigmas = sigmas_for(cfg.steps, cfg.schedule, self.scheduler_config, grid_h * grid_w).tolist()
        if cfg.start_t < 1:  # z_t = (1 - t) z_lq + t z_1 (Eq. 7 with the LQ latent as z_0), then the later steps
            sigmas = [cfg.start_t] + [s for s in sigmas if s < cfg.start_t]
            z = (1 - cfg.start_t) * z_lq + cfg.start_t * z
        steps = len(sigmas) - 1
        bar = progress_bar(total=steps, desc="steps", unit="step", leave=False, disable=not progress)
        for i, (t, t_next) in enumerate(itertools.pairwise(sigmas)):
            v = self._blended_velocity(z, z_lq, t, tiles)  # (1, grid_h, grid_w, 64)
            z = z + (t_next - t) * v  # Euler step of dz/dt = v (Eq. 7)
            bar.update(1)
            if on_step is not None:
                on_step(i + 1, steps)
        bar.close()

        out = decode_tiled(self.vae, unpack_grid(z), cfg.vae_tile_size, cfg.vae_tile_overlap, self.vae_dtype)
        out = out[:height, :width]  # (H, W, 3)
        return color_fix(out, reference, cfg.color_fix)

    def _blended_velocity(
        self, z: Tensor, z_lq: Tensor, t: float, tiles: list[tuple[tuple[int, int, int, int], Tensor]]
    ) -> Tensor:
        """Sum over tiles of weight * v_p(tile): each tile's velocity from the model on that tile alone."""
        v = torch.zeros_like(z)
        (y0, y1, x0, x1), _ = tiles[0]
        th, tw = y1 - y0, x1 - x0  # every tile of an image has the same shape (tile_spans)
        img_ids = image_ids(th, tw, self.device, self.dtype)  # (th*tw, 3)
        use_guidance = self.transformer.config.guidance_embeds
        for lo in range(0, len(tiles), self.config.batch_size):
            batch = tiles[lo : lo + self.config.batch_size]
            b = len(batch)
            z_t = torch.cat([z[:, y0:y1, x0:x1] for (y0, y1, x0, x1), _ in batch]).reshape(b, th * tw, -1)
            z_c = torch.cat([z_lq[:, y0:y1, x0:x1] for (y0, y1, x0, x1), _ in batch]).reshape(b, th * tw, -1)
            guidance = torch.full((b,), self.guidance, device=self.device, dtype=self.dtype) if use_guidance else None
            v_tiles = (
                controlled_flux_forward(
                    self.transformer,
                    self.adapter,
                    hidden_states=z_t.to(self.dtype),  # (b, th*tw, 64)
                    lq_latents=z_c.to(self.dtype),  # (b, th*tw, 64)
                    encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1),  # (b, S, joint)
                    pooled_projections=self.pooled_prompt_embeds.expand(b, -1),  # (b, pooled)
                    timestep=torch.full((b,), t, device=self.device, dtype=self.dtype),  # (b,) in [0, 1]
                    img_ids=img_ids,
                    txt_ids=self.txt_ids,
                    guidance=guidance,
                    control_scale=self.config.control_scale,
                )
                .float()
                .reshape(b, th, tw, -1)
            )  # (b, th, tw, 64)
            for i, ((y0, y1, x0, x1), w) in enumerate(batch):
                v[:, y0:y1, x0:x1] += w * v_tiles[i : i + 1]
        return v


def _to(module: Any, device: str | torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move (and cast) a module only where needed: diffusers warns on every dtype cast."""
    param = next(module.parameters())
    if param.device == torch.device(device) and dtype in (None, param.dtype):
        return module
    return module.to(device=device) if dtype is None else module.to(device=device, dtype=dtype)


def upsample(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, C) uint8 -> (height, width, C) uint8, PIL bicubic (antialiased when shrinking); used for alpha."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------------------------------
# Colour fix: diffusion restorers drift in colour; SUPIR, SeeSR, StableSR and DiffBIR give the restored image
# the low-frequency colour of the upsampled LQ after decoding, as StableSR's ``scripts/wavelet_color_fix.py``:
# - ``wavelet``: content - low(content) + low(reference), low = 5 a-trous blurs with the 3x3 kernel
#   [1 2 1]^T [1 2 1] / 16 at dilations 1, 2, 4, 8, 16 (replicate padding): colour above ~32 px follows the LQ;
# - ``adain``: each channel shifted and scaled to the reference's mean and std (unbiased variance + 1e-5).
# A low-band pixel depends on pixels at most 31 rows away, so both run in strips of ~0.26 MP with a 32-row halo:
# exactly the whole-image result, one strip in float32 at a time. Values in [0, 1]; the uint8 result is rounded.

LEVELS = 5
HALO = 2**LEVELS  # > 1 + 2 + 4 + 8 + 16, the reach of the lowest band
STRIP_PIXELS = 1 << 18  # pixels per strip (rows = this / width, at least 2 * HALO)


def wavelet_low(image: Tensor) -> Tensor:
    """(B, C, H, W): the image after ``LEVELS`` blurs at dilation 1, 2, 4, ... (its lowest band)."""
    k = torch.tensor([0.25, 0.5, 0.25], dtype=image.dtype, device=image.device)
    channels = image.shape[1]
    kernel = torch.outer(k, k)[None, None].repeat(channels, 1, 1, 1)  # (C, 1, 3, 3), one filter per channel
    for radius in (2**i for i in range(LEVELS)):
        image = F.conv2d(F.pad(image, (radius,) * 4, mode="replicate"), kernel, groups=channels, dilation=radius)
    return image


def color_fix(
    image: np.ndarray, reference: np.ndarray, method: str = "wavelet", strip: int | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 restored image with the colour of ``reference`` (same shape), in strips of ``strip`` rows."""
    if method not in COLOR_FIX_METHODS:
        raise ValueError(f"colour fix must be one of {COLOR_FIX_METHODS}, got {method!r}")
    for name, arr in (("image", image), ("reference", reference)):
        check_rgb_uint8(arr, f"color_fix takes it as its {name}")
    if image.shape != reference.shape:
        raise ValueError(f"color_fix: image {image.shape} and reference {reference.shape} must have the same shape")
    if method == "none":
        return image
    strip = strip or max(2 * HALO, STRIP_PIXELS // image.shape[1])
    if method == "adain":
        return _adain_strips(image, reference, strip)
    return _wavelet_strips(image, reference, strip)


def _to_tensor(rows: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(rows)).permute(2, 0, 1)[None].float() / 255.0  # (1, C, h, W)


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _wavelet_strips(image: np.ndarray, reference: np.ndarray, strip: int) -> np.ndarray:
    height = image.shape[0]
    out = np.empty_like(image)
    for r0 in range(0, height, strip):
        r1 = min(height, r0 + strip)
        h0, h1 = max(0, r0 - HALO), min(height, r1 + HALO)  # strip plus halo: exact for rows r0..r1
        content = _to_tensor(image[h0:h1])
        fixed = content - wavelet_low(content) + wavelet_low(_to_tensor(reference[h0:h1]))
        out[r0:r1] = _to_uint8(fixed[:, :, r0 - h0 : r1 - h0])
    return out


def _channel_stats(image: np.ndarray, strip: int, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (unbiased variance + eps) over the whole image, in [0, 1] units."""
    n = image.shape[0] * image.shape[1]
    s, s2 = np.zeros(image.shape[2]), np.zeros(image.shape[2])
    for r0 in range(0, image.shape[0], strip):
        rows = image[r0 : r0 + strip].reshape(-1, image.shape[2]).astype(np.float64) / 255.0
        s += rows.sum(0)
        s2 += (rows**2).sum(0)
    mean = s / n
    var = (s2 - n * mean**2) / max(n - 1, 1)
    return mean, np.sqrt(np.maximum(var, 0) + eps)


def _adain_strips(image: np.ndarray, reference: np.ndarray, strip: int) -> np.ndarray:
    c_mean, c_std = _channel_stats(image, strip)
    s_mean, s_std = _channel_stats(reference, strip)
    gain = (s_std / c_std).astype(np.float32)
    bias = (s_mean - c_mean * s_std / c_std).astype(np.float32)
    out = np.empty_like(image)
    for r0 in range(0, image.shape[0], strip):
        x = image[r0 : r0 + strip].astype(np.float32) / 255.0
        out[r0 : r0 + strip] = np.clip(np.round((x * gain + bias) * 255.0), 0, 255).astype(np.uint8)
    return out
