"""Flux helpers shared by generation, training and restoration: loading, prompts, device, latent packing.

A Flux pipeline (or any diffusers text-to-image pipeline) loads from a hub id or a local folder.

The tiny environment uses the same code. The committed ``data/01_raw/tiny/flux`` holds a 2+2-block
random-weight ``FluxTransformer2DModel`` and a 16-channel ``AutoencoderKL`` (the JSON configs in
``fluxir/configs``) and no text encoders: ``fixed_prompt_embeddings`` stands in for T5/CLIP there.
``fluxir.models.tiny`` writes full-format folders (tokenizers and text encoders too) of the same models.
Tiny models prove the machinery, never image quality.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FluxTransformer2DModel
from torch import Tensor

from fluxir.compat.diffusers import latent_image_ids

CONFIGS = resources.files("fluxir") / "configs"


def load_config(name: str) -> dict[str, Any]:
    """A model config shipped with fluxir (``tiny_flux_transformer``, ``flux1_dev_transformer``, ``tiny_vae``)."""
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    config.pop("_class_name", None)
    return config


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Autocast off on every device type where it is on: the frozen VAE runs in its own dtype, as diffusers runs it.

    Under CUDA autocast ``group_norm`` runs in float32 (CPU autocast has no such rule), so a bf16 VAE decode with
    gradient would save float32 norm outputs for backward: ~1.6x the activations of the same decode in bf16.
    """
    with contextlib.ExitStack() as stack:
        for kind in ("cpu", "cuda"):
            if torch.is_autocast_enabled(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def build_transformer(config_name: str, seed: int = 0, device: str = "cpu", **overrides: Any):
    """A random-weight ``FluxTransformer2DModel`` from a shipped config (``device="meta"`` allocates nothing).

    ``overrides`` replace config fields, e.g. a narrow Flux with FLUX.1-dev's 19 + 38 blocks.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        return FluxTransformer2DModel(**{**load_config(config_name), **overrides})


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A random-weight 16-latent-channel ``AutoencoderKL`` (4 levels of 8 channels) from ``configs/tiny_vae.json``."""
    torch.manual_seed(seed)
    return AutoencoderKL(**load_config("tiny_vae"))


def resolve_device(device: str, process_device: Any = None) -> str:
    """``auto``: this process's accelerate device when it is not the CPU, else cuda when available, else cpu."""
    if device != "auto":
        return device
    if process_device is not None and str(process_device) != "cpu":
        return str(process_device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def accelerate_cpu(device: str) -> bool:
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


def folder_problems(folder: str | Path) -> list[str]:
    """Every problem a loader would hit in the local pipeline ``folder``, each naming its path (empty: none).

    Checked without loading weights: each component listed in model_index.json has its sub-folder; a
    tokenizer's tokenizer_config.json names the class model_index.json lists (a T5 tokenizer saved where a
    CLIP one is expected would otherwise load silently and tokenize wrongly); every ``.safetensors`` file
    has a readable header (a truncated download otherwise fails with a message naming no file).
    """
    import transformers

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    problems = []
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry == [None, None]:
            continue
        library, class_name = entry
        sub = folder / name
        if not sub.is_dir():
            problems.append(
                f"{sub}: missing, but {folder / 'model_index.json'} lists component {name!r} ({library}.{class_name}); "
                "copy the complete snapshot (huggingface-cli download <repo> --local-dir <folder>) or set the "
                f"entry to [null, null] if the pipeline should load without it"
            )
            continue
        tokenizer_config = sub / "tokenizer_config.json"
        if library == "transformers" and "Tokenizer" in class_name and tokenizer_config.is_file():
            saved = json.loads(tokenizer_config.read_text()).get("tokenizer_class")
            expected, found = getattr(transformers, class_name, None), getattr(transformers, saved or "", None)
            if saved and expected is not found:
                problems.append(
                    f"{tokenizer_config}: tokenizer_class {saved!r}, but model_index.json lists {name!r} as "
                    f"{class_name!r}; put the {class_name} files in {sub} (or fix the entry in model_index.json)"
                )
        for weights in sorted(sub.glob("*.safetensors")):
            problem = _safetensors_problem(weights)
            if problem:
                problems.append(f"{weights}: {problem}; download this file again")
    return problems


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable safetensors file (None when its header parses and fits the file)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"not a safetensors file ({size} bytes)"
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8:
            return f"truncated or not a safetensors file (header of {header_len} bytes in a {size}-byte file)"
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return "corrupt safetensors header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"truncated: the header needs {8 + header_len + end} bytes, the file has {size}"
    return None


TEXT_COMPONENTS = ("text_encoder", "tokenizer")  # prefixes of the prompt-side components of a pipeline


def load_pipeline(source: str, dtype: str, device: str = "cpu", text_encoders: bool = True):
    """Load a diffusers text-to-image pipeline from a hub id or a local folder.

    A local folder is checked first (``folder_problems``): every problem is reported at once, each naming
    its path. With ``HF_HUB_OFFLINE=1`` a hub id that is not in the local cache fails with a message naming it.
    ``text_encoders=False`` leaves out every text encoder and tokenizer (never instantiated): for callers
    that pass prompt embeddings they already have.
    """
    source = resolve_source(source)
    # Components listed as [null, null] (tiny folders have no text encoders) must be passed as None.
    index_file = Path(source) / "model_index.json"
    absent = {}
    if index_file.exists():
        problems = folder_problems(source)
        if problems:
            raise ValueError(f"model folder {source!r} cannot be loaded:\n- " + "\n- ".join(problems))
        index = json.loads(index_file.read_text())
        absent = {k: None for k, v in index.items() if v == [None, None]}
    if not text_encoders:
        index = DiffusionPipeline.load_config(source)
        absent.update({k: None for k in index if k.startswith(TEXT_COMPONENTS)})
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=getattr(torch, dtype), **absent)
    except OSError as err:
        raise ValueError(
            f"could not load model {source!r}: {err}. Download it first (huggingface-cli download "
            f"{source}) or point fluxgen.model at a local diffusers folder."
        ) from err
    return pipe.to(device)


def load_vae(source: str, dtype: str, device: str = "cpu") -> AutoencoderKL:
    """Only the VAE of a pipeline (hub id or local folder), as ``load_pipeline`` would load it: the same
    weights and dtype, so ``vae_identity`` and every latent equal those of the full pipeline's VAE."""
    source = resolve_source(source)
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=getattr(torch, dtype))
    except OSError as err:
        raise ValueError(f"could not load the VAE of {source!r} (sub-folder vae): {err}") from err
    return vae.to(device)


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
    return latent_image_ids(grid_h, grid_w, device, dtype)


# ----------------------------------------------------------------------------------------------------
# torch.compile


def compile_blocks(flux: Any, adapter: Any = None) -> None:
    """``torch.compile`` every Flux transformer block and the adapter's block, in place.

    ``nn.Module.compile`` keeps module names and state dicts unchanged (checkpoints and saved adapters
    stay loadable without it), and all blocks of one kind share one compiled graph: on FLUX.1-dev the
    first step compiles two block graphs (plus the adapter's), not 57. On the CPU inductor needs a C++
    compiler; the embedders and the sampler's loop stay eager (small, and shapes change per tile).
    """
    blocks = [*flux.transformer_blocks, *flux.single_transformer_blocks]
    if adapter is not None:
        blocks.append(adapter.block)
    for block in blocks:
        block.compile()
