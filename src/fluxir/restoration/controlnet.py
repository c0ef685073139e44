"""A public Flux ControlNet upscaler beside FluxIR: jasperai/Flux.1-dev-Controlnet-Upscaler on the same Flux base,
through diffusers' ``FluxControlNetPipeline`` as its model card shows: control image = the LQ upsampled (PIL bicubic)
to the output size, empty prompt, ``controlnet_conditioning_scale`` 0.6, ``guidance_scale`` 3.5; 20 steps (the
card: 28), the paper's sampling budget. Padded to multiples of 16 and colour-fixed as FluxIR's restorer. It does
not tile: its own ``max_output_megapixels`` bounds the output.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fluxir.io.images import check_rgb_uint8
from fluxir.io.provenance import sha256_file
from fluxir.models.loading import load_pipeline, resolve_device
from fluxir.parameters.config import Config, Rule
from fluxir.restoration.restore_config import DTYPES, MULTIPLE, RestoreWork, output_size, round_up, time_two_steps

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
    max_output_megapixels: float  # larger outputs are refused before loading (Method.bound)

    PREFIX, RULES = "baselines.flux_controlnet.", CONTROLNET_RULES

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "max_output_megapixels")}


def load_controlnet(source: str, dtype: str) -> Any:
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
            "Download it first (`python -m fluxir.fetch --only baselines`) or point the parameter at a local folder."
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


def fingerprint(cfg: FluxControlNetConfig) -> str:
    """12 hex of the ControlNet (the base is named by ``cfg.model``, as FluxIR's): a local folder's file hashes,
    a cached hub snapshot's commit, else the id."""
    path = Path(cfg.controlnet).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")):
            digest.update(f"{file.relative_to(path)}:{sha256_file(file)}".encode())
        return digest.hexdigest()[:12]
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(cfg.controlnet, "config.json")
    commit = Path(cached).parent.name if isinstance(cached, str) else "not-cached"
    return hashlib.sha256(f"{cfg.controlnet}@{commit}".encode()).hexdigest()[:12]


class ControlNetRestorer:
    """(h, w, 3) uint8 -> (H, W, 3) uint8, the size and colour fix from ``geometry`` (an ``OutputGeometry``)."""

    def __init__(self, cfg: FluxControlNetConfig, geometry: Any) -> None:
        from diffusers import FluxControlNetPipeline

        from fluxir.models.prompts import PromptEncoder

        self.cfg, self.config = cfg, geometry
        device, dtype = resolve_device(cfg.device), getattr(torch, cfg.dtype)
        flux = load_pipeline(cfg.model, dtype=cfg.dtype, device=device)
        controlnet = load_controlnet(cfg.controlnet, cfg.dtype).to(device)
        if wrong := config_mismatch(controlnet.config, flux.transformer.config):
            raise ValueError(
                f"the ControlNet {cfg.controlnet!r} does not fit the Flux transformer of {cfg.model!r}: "
                f"{', '.join(wrong)}; set baselines.flux_controlnet.model and .controlnet to a matching pair"
            )
        embeds = PromptEncoder(flux, [""], cfg.max_sequence_length, device).cache[""]  # drops T5 / CLIP
        self.prompt_embeds = embeds["prompt_embeds"].to(device, dtype)  # (1, S, joint_attention_dim)
        self.pooled_prompt_embeds = embeds["pooled_prompt_embeds"].to(device, dtype)  # (1, pooled_projection_dim)
        self.pipe = FluxControlNetPipeline(**flux.components, controlnet=controlnet)  # text encoders: None now

    @torch.no_grad()
    def restore(self, lq: np.ndarray, progress: bool = False, on_step: Any = None) -> np.ndarray:
        from fluxir.restoration.sampler import color_fix, upsample

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


def plan_work(height: int, width: int, restore: Any, cfg: FluxControlNetConfig) -> RestoreWork:
    out_h, out_w = output_size(height, width, restore)
    text = f"the whole image (the Flux ControlNet does not tile) x {cfg.steps} steps"
    return RestoreWork((width, height), (out_w, out_h), 1, cfg.steps, (round_up(out_h), round_up(out_w)), "step", text)


def warm_up_rate(restorer: ControlNetRestorer, work: RestoreWork) -> float:
    return time_two_steps(restorer, work, "cfg", steps=2)


def describe(cfg: FluxControlNetConfig) -> str:
    return (
        f"diffusers FluxControlNetPipeline: {cfg.controlnet} on {cfg.model}; control image = bicubic-upsampled "
        f"LQ, empty prompt, {cfg.steps} steps, controlnet_conditioning_scale {cfg.conditioning_scale}, "
        f"guidance {cfg.guidance_scale}, seed {cfg.seed}, {cfg.dtype}"
    )
