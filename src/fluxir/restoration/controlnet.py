"""A public Flux ControlNet upscaler, computed beside FluxIR: the same 12 B Flux base with a ControlNet.

jasperai/Flux.1-dev-Controlnet-Upscaler (a diffusers ``FluxControlNetModel``, 3.6 GB) runs through
diffusers' ``FluxControlNetPipeline`` as its model card shows: the control image is the LQ upsampled to
the output size (PIL bicubic, the card's ``control_image.resize((w * 4, h * 4))``), the prompt is empty,
``controlnet_conditioning_scale`` 0.6 and ``guidance_scale`` 3.5 as on the card. Steps default to 20
(the card uses 28) so both Flux-based methods get the paper's sampling budget. The output side is padded
(edge replicate) to a multiple of 16 and cropped back, as FluxIR's restorer does; the same colour fix as
FluxIR's follows (``restore.color_fix`` / ``evaluate.color_fix``).

The empty prompt is encoded once with Flux's own T5 + CLIP (``PromptEncoder``; folders without text
encoders get its deterministic stand-ins), then the text encoders are dropped. No tiling: memory grows
with the output size (1024^2 output: 4096 image tokens, as FluxIR's default tile), so its own
``max_output_megapixels`` bounds the output (``fluxir.restoration.work``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fluxir.io.hashing import sha256_file
from fluxir.io.images import check_rgb_uint8
from fluxir.models.loading import load_pipeline, resolve_device
from fluxir.parameters.rules import Config, Rule
from fluxir.restoration.restore_config import MULTIPLE, output_size, round_up
from fluxir.restoration.work import RestoreWork, time_two_steps

DTYPES = ("float32", "bfloat16", "float16")
CONTROLNET_RULES = (
    Rule("model", "text", note=" (hub id or local diffusers folder of the Flux base)"),
    Rule("controlnet", "text", note=" (hub id or local FluxControlNetModel folder)"),
    Rule("steps", "positive_int", note=" (the paper's budget: 20; the model card: 28)"),
    Rule("conditioning_scale", "number_at_least", 0, must="a number >= 0 (model card: 0.6)"),
    Rule("guidance_scale", "number_at_least", 0, must="a number >= 0 (Flux-dev's distilled guidance; card: 3.5)"),
    Rule("seed", "nonneg_int"),
    Rule("dtype", "choice", DTYPES),
    Rule("max_sequence_length", "positive_int"),
    Rule("device", "text", note=" (auto, cpu, cuda, cuda:1, ...)"),
    Rule("max_output_megapixels", "positive_number", note=" (untiled: memory grows with the output)"),
)
# Fields a ControlNet must share with the Flux transformer it steers.
SHARED_FIELDS = (
    "in_channels",
    "num_attention_heads",
    "attention_head_dim",
    "joint_attention_dim",
    "pooled_projection_dim",
    "axes_dims_rope",
)


@dataclass
class FluxControlNetConfig(Config):
    """``baselines.flux_controlnet`` (parameters_baselines.yml documents each key)."""

    model: str
    controlnet: str
    steps: int
    conditioning_scale: float
    guidance_scale: float
    seed: int
    dtype: str
    device: str
    max_sequence_length: int
    max_output_megapixels: float  # larger outputs are refused before loading (fluxir.restoration.work)

    PREFIX, RULES = "baselines.flux_controlnet.", CONTROLNET_RULES

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output (not the device, not the size limit)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "max_output_megapixels")}


def load_controlnet(source: str, dtype: str) -> Any:
    """A ``FluxControlNetModel`` from a local folder (config.json + weights) or a hub id in the local cache."""
    from diffusers import FluxControlNetModel

    path = Path(source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ValueError(
            f"baselines.flux_controlnet.controlnet: {path} has no config.json; point it at a diffusers "
            "FluxControlNetModel folder (e.g. a snapshot of jasperai/Flux.1-dev-Controlnet-Upscaler)"
        )
    try:
        return FluxControlNetModel.from_pretrained(str(path) if path.exists() else source, dtype=getattr(torch, dtype))
    except OSError as err:
        raise ValueError(
            f"could not load the ControlNet {source!r} (baselines.flux_controlnet.controlnet): {err}. "
            f"Download it first (`python -m fluxir.fetch --only baselines`) or point the parameter at "
            "a local folder."
        ) from err


def config_mismatch(controlnet_config: Any, transformer_config: Any) -> list[str]:
    """``"<field> <controlnet's> vs <transformer's>"`` for each shared field that differs (empty: they fit)."""

    def as_list(value: Any) -> list[Any]:
        return list(value) if isinstance(value, (list, tuple)) else [value]

    return [
        f"{f} {controlnet_config.get(f)} vs {transformer_config.get(f)}"
        for f in SHARED_FIELDS
        if as_list(controlnet_config.get(f)) != as_list(transformer_config.get(f))
    ]


def check_fits(controlnet: Any, transformer: Any, cfg: FluxControlNetConfig) -> None:
    """Raise ValueError naming both sources when the ControlNet was not made for this Flux."""
    wrong = config_mismatch(controlnet.config, transformer.config)
    if wrong:
        raise ValueError(
            f"the ControlNet {cfg.controlnet!r} does not fit the Flux transformer of {cfg.model!r}: "
            f"{', '.join(wrong)}; set baselines.flux_controlnet.model and .controlnet to a matching pair"
        )


def source_fingerprint(source: str) -> str:
    """12 hex of what a ControlNet source holds: a local folder's file hashes, a cached hub snapshot's commit,
    else the id itself."""
    path = Path(source).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")):
            digest.update(f"{file.relative_to(path)}:{sha256_file(file)}".encode())
        return digest.hexdigest()[:12]
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    commit = Path(cached).parent.name if isinstance(cached, str) else "not-cached"
    return hashlib.sha256(f"{source}@{commit}".encode()).hexdigest()[:12]


class ControlNetRestorer:
    """``ControlNetRestorer.from_config(cfg, geometry).restore(lq)``: (h, w, 3) uint8 -> (H, W, 3) uint8.

    ``geometry`` is an ``OutputGeometry`` whose ``scale`` / ``target_size`` give the output size and whose
    ``color_fix`` is applied against the upsampled LQ.
    """

    method = "flux_controlnet"

    def __init__(
        self,
        pipe: Any,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor,
        cfg: FluxControlNetConfig,
        geometry: Any,
    ) -> None:
        self.pipe, self.cfg, self.config = pipe, cfg, geometry
        self.prompt_embeds = prompt_embeds  # (1, S, joint_attention_dim)
        self.pooled_prompt_embeds = pooled_prompt_embeds  # (1, pooled_projection_dim)

    @classmethod
    def from_config(cls, cfg: FluxControlNetConfig, geometry: Any) -> ControlNetRestorer:
        """Load Flux (``cfg.model``) and the ControlNet, encode the empty prompt, build the pipeline."""
        from diffusers import FluxControlNetPipeline

        from fluxir.models.prompts import PromptEncoder

        device = resolve_device(cfg.device)
        flux = load_pipeline(cfg.model, dtype=cfg.dtype, device=device)
        controlnet = load_controlnet(cfg.controlnet, cfg.dtype).to(device)
        check_fits(controlnet, flux.transformer, cfg)
        embeds = PromptEncoder(flux, [""], cfg.max_sequence_length, device).cache[""]  # drops T5 / CLIP
        pipe = FluxControlNetPipeline(
            scheduler=flux.scheduler,
            vae=flux.vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=flux.transformer,
            controlnet=controlnet,
        )
        dtype = getattr(torch, cfg.dtype)
        return cls(
            pipe,
            embeds["prompt_embeds"].to(device, dtype),
            embeds["pooled_prompt_embeds"].to(device, dtype),
            cfg,
            geometry,
        )

    @torch.no_grad()
    def restore(self, lq: np.ndarray, progress: bool = False, on_step: Any = None) -> np.ndarray:
        from fluxir.restoration.colorfix import color_fix
        from fluxir.restoration.sampler import upsample

        cfg = self.cfg
        lq = check_rgb_uint8(lq, "use read_photo() for files")
        height, width = output_size(lq.shape[0], lq.shape[1], self.config)
        reference = upsample(lq, height, width)  # (H, W, 3): the control image and the colour reference
        ph, pw = round_up(height, MULTIPLE), round_up(width, MULTIPLE)
        control = np.pad(reference, ((0, ph - height), (0, pw - width), (0, 0)), mode="edge")  # (ph, pw, 3)

        def step_done(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(i + 1, cfg.steps)
            return {}

        self.pipe.set_progress_bar_config(disable=not progress, leave=False)
        images = self.pipe(
            prompt_embeds=self.prompt_embeds,
            pooled_prompt_embeds=self.pooled_prompt_embeds,
            control_image=Image.fromarray(control),
            controlnet_conditioning_scale=float(cfg.conditioning_scale),
            num_inference_steps=cfg.steps,
            guidance_scale=float(cfg.guidance_scale),
            height=ph,
            width=pw,
            generator=torch.Generator("cpu").manual_seed(cfg.seed),
            output_type="np",
            callback_on_step_end=step_done,
        ).images  # (1, ph, pw, 3) float in [0, 1]
        out = (np.asarray(images[0], dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8)[:height, :width]
        return color_fix(out, reference, self.config.color_fix)


def load(cfg: FluxControlNetConfig, geometry: Any) -> ControlNetRestorer:
    return ControlNetRestorer.from_config(cfg, geometry)


def plan_work(height: int, width: int, restore: Any, cfg: FluxControlNetConfig) -> RestoreWork:
    """The ``RestoreWork`` of an (height, width) input: the whole padded output (no tiles) x ``cfg.steps``."""
    out_h, out_w = output_size(height, width, restore)
    text = f"the whole image (the Flux ControlNet does not tile) x {cfg.steps} steps"
    return RestoreWork((width, height), (out_w, out_h), 1, cfg.steps, (round_up(out_h), round_up(out_w)), "step", text)


def warm_up_rate(restorer: ControlNetRestorer, work: RestoreWork) -> float:
    """Seconds per step at ``work``'s size, the second of two steps timed (the first carries start-up costs)."""
    geometry, cfg = restorer.config, restorer.cfg
    restorer.cfg = replace(cfg, steps=2)
    try:
        return time_two_steps(restorer, [work.unit_size[1], work.unit_size[0]])
    finally:
        restorer.config, restorer.cfg = geometry, cfg


def fingerprint(cfg: FluxControlNetConfig) -> str:
    """What identifies the outputs: the ControlNet's content (the base is named by ``cfg.model``, as FluxIR's)."""
    return source_fingerprint(cfg.controlnet)


def describe(cfg: FluxControlNetConfig) -> str:
    """One line for the report."""
    return (
        f"diffusers FluxControlNetPipeline: {cfg.controlnet} on {cfg.model}; control image = bicubic-upsampled "
        f"LQ, empty prompt, {cfg.steps} steps, controlnet_conditioning_scale {cfg.conditioning_scale}, "
        f"guidance {cfg.guidance_scale}, seed {cfg.seed}, {cfg.dtype}"
    )
