"""Flux helpers shared by generation, training and restoration: loading, prompts, device, latent packing.

A Flux pipeline (or any diffusers text-to-image pipeline) loads from a hub id or a local folder.

The tiny environment uses the same code: ``make_tiny_flux`` writes a diffusers-format folder with a
2+2-block random-weight ``FluxTransformer2DModel`` and a 16-channel ``AutoencoderKL`` built from the
JSON configs in ``fluxir/configs``. Such a folder has no text encoders; ``fixed_prompt_embeddings``
stands in for T5/CLIP there. Tiny models prove the machinery, never image quality.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, FluxPipeline, FluxTransformer2DModel
from torch import Tensor

CONFIGS = resources.files("fluxir") / "configs"


def load_config(name: str) -> dict[str, Any]:
    """A model config shipped with fluxir (``tiny_flux_transformer``, ``flux1_dev_transformer``, ``tiny_vae``)."""
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    config.pop("_class_name", None)
    return config


def build_transformer(config_name: str, seed: int = 0, device: str = "cpu"):
    """A random-weight ``FluxTransformer2DModel`` from a shipped config (``device="meta"`` allocates nothing)."""
    torch.manual_seed(seed)
    with torch.device(device):
        return FluxTransformer2DModel(**load_config(config_name))


def build_tiny_vae(seed: int = 0):
    """A random-weight 16-latent-channel ``AutoencoderKL`` (4 levels of 8 channels)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**load_config("tiny_vae"))


def make_tiny_flux(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random-weight Flux pipeline folder loadable by ``FluxPipeline.from_pretrained``.

    Idempotent: an existing complete folder is left as it is.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler, vae=build_tiny_vae(seed), transformer=build_transformer("tiny_flux_transformer", seed),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    pipe.save_pretrained(tmp)
    # save_pretrained drops None components; list them as null so from_pretrained loads them as None.
    index = json.loads((tmp / "model_index.json").read_text())
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        index[name] = [None, None]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    tmp.rename(folder)
    return folder


def resolve_device(device: str, process_device: Any = None) -> str:
    """``auto``: this process's accelerate device when it is not the CPU, else cuda when available, else cpu."""
    if device != "auto":
        return device
    if process_device is not None and str(process_device) != "cpu":
        return str(process_device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def accelerate_cpu(device: str = "auto") -> bool:
    """The ``cpu=`` argument of accelerate's ``PartialState`` / ``Accelerator`` for a ``device`` setting.

    True when ``device`` is "cpu" or there is no CUDA: without ``cpu=True`` accelerate ignores
    ``WORLD_SIZE`` on a CPU-only machine, so every process of a multi-process (gloo) launch thinks it
    is alone and does all the work.
    """
    return device == "cpu" or not torch.cuda.is_available()


def resolve_source(source: str) -> str:
    """Check a model source: an existing local folder with ``model_index.json``, or a hub id.

    Raises ValueError naming the source when it is neither.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists():
            raise ValueError(
                f"model folder {str(path)!r} has no model_index.json: point fluxgen.model at a diffusers "
                "pipeline folder (the output of save_pretrained or a hub snapshot) or give a hub id "
                "such as 'black-forest-labs/FLUX.1-dev'"
            )
        return str(path)
    if source.count("/") != 1 or source.startswith((".", "/")) or " " in source:
        raise ValueError(
            f"model source {source!r} is neither an existing local folder nor a hub id of the form "
            "'owner/name' (e.g. 'black-forest-labs/FLUX.1-dev')"
        )
    return source


def load_pipeline(source: str, dtype: str = "bfloat16", device: str = "cpu"):
    """Load a diffusers text-to-image pipeline from a hub id or a local folder.

    With ``HF_HUB_OFFLINE=1`` a hub id that is not in the local cache fails with a message naming it.
    """
    source = resolve_source(source)
    # Components listed as [null, null] (tiny folders have no text encoders) must be passed as None.
    index_file = Path(source) / "model_index.json"
    absent = {}
    if index_file.exists():
        index = json.loads(index_file.read_text())
        absent = {k: None for k, v in index.items() if v == [None, None]}
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=getattr(torch, dtype), **absent)
    except (OSError, EnvironmentError) as err:
        raise ValueError(
            f"could not load model {source!r}: {err}. Download it first (huggingface-cli download "
            f"{source}) or point fluxgen.model at a local diffusers folder."
        ) from err
    return pipe.to(device)


def fixed_prompt_embeddings(transformer, seq_len: int = 8, seed: int = 0):
    """Deterministic stand-in prompt embeddings for pipelines without text encoders (tiny models).

    Returns ``(prompt_embeds (1, seq_len, joint_attention_dim), pooled (1, pooled_projection_dim))``.
    """
    cfg = transformer.config
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randn(1, seq_len, cfg.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
    return prompt.to(transformer.dtype), pooled.to(transformer.dtype)


# ----------------------------------------------------------------------------------------------------
# Latent packing and rope positions (the transformer sees 2x2 latent patches as tokens)


# Adapted from diffusers.pipelines.flux.pipeline_flux.FluxPipeline._pack_latents (diffusers 0.42.1): the same
# 2x2 patches, kept as a (h/2, w/2) grid so restoration can cut tiles from it; ``pack`` flattens it.
def pack_grid(latents: Tensor) -> Tensor:
    """(B, C, h, w) latent -> (B, h/2, w/2, 4C) token grid."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2, w // 2, c * 4)


# Adapted from diffusers.pipelines.flux.pipeline_flux.FluxPipeline._unpack_latents (diffusers 0.42.1), on the grid.
def unpack_grid(grid: Tensor) -> Tensor:
    """(B, h/2, w/2, 4C) token grid -> (B, C, h, w) latent; inverse of ``pack_grid``."""
    b, h2, w2, d = grid.shape
    return grid.view(b, h2, w2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h2 * 2, w2 * 2)


def pack(z: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): the transformer's token sequence (``FluxPipeline._pack_latents``)."""
    return pack_grid(z).flatten(1, 2)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of ``pack`` (h, w: latent size)."""
    return unpack_grid(x.view(x.shape[0], h // 2, w // 2, -1))


def image_ids(grid_h: int, grid_w: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Flux's rope positions (grid_h * grid_w, 3) of a (grid_h, grid_w) token grid (an (2 grid_h, 2 grid_w) latent)."""
    # A private static method of FluxPipeline: diffusers 0.42.1 has no public equivalent; it needs no instance.
    return FluxPipeline._prepare_latent_image_ids(None, grid_h, grid_w, device, dtype)
