"""The empty prompt on disk: T5 and CLIP run once per (model, sequence length, dtype), never again.

FluxGen generates from the empty prompt (paper Sec. 3.1) and FluxIR trains and restores with it
(Sec. 3.3), so the only use of Flux's text encoders is one constant pair of tensors. Loading T5-XXL
(4.7B parameters, ~9.5 GB in bf16) for it on every rank of every run costs ~33 GB of host traffic per
rank at start-up. The first load encodes the prompt and keeps the embeddings in the catalog's
``prompt_embeddings`` folder (``<key>.safetensors``); every later load builds the pipeline without text
encoders or tokenizers and takes the embeddings from that file.

The key hashes the model (a hub id as given; a local folder by its resolved path and the size and
mtime of every text-encoder and tokenizer file, read by ``stat`` only, so replaced encoders are never
mistaken for the old ones), ``max_sequence_length`` and the dtype the embeddings were computed in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusers import FluxPipeline
from safetensors.torch import load_file, save_file
from torch import Tensor

from fluxir.io.atomic import atomic_file
from fluxir.io.provenance import hash_json
from fluxir.models.loading import TEXT_COMPONENTS, load_pipeline, resolve_source
from fluxir.models.prompts import PromptEncoder


def empty_prompt_key(source: str, max_sequence_length: int, dtype: str) -> str:
    """Name of the cached empty-prompt embeddings of a model (see the module docstring)."""
    path = Path(resolve_source(source))
    files = []
    if path.is_dir():
        for part in sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith(TEXT_COMPONENTS)):
            for file in sorted(f for f in part.rglob("*") if f.is_file()):
                stat = file.stat()
                files.append([str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns])
        source = str(path.resolve())
    return hash_json([source, files, max_sequence_length, dtype], length=16)


def empty_prompt_file(folder: str | os.PathLike, source: str, max_sequence_length: int, dtype: str) -> Path:
    """Where the empty prompt of (model, max_sequence_length, dtype) is kept in ``folder``."""
    return Path(folder) / f"{empty_prompt_key(source, max_sequence_length, dtype)}.safetensors"


def cached_empty_prompt(
    folder: str | os.PathLike | None, source: str, max_sequence_length: int, dtype: str, device: str = "cpu"
) -> dict[str, Tensor] | None:
    """{prompt_embeds (1, S, joint), pooled_prompt_embeds (1, pooled)} from ``folder``, or None if not there."""
    if folder is None:
        return None
    path = empty_prompt_file(folder, source, max_sequence_length, dtype)
    if not path.is_file():
        return None
    return {name: tensor.to(device) for name, tensor in load_file(path).items()}


def save_empty_prompt(
    folder: str | os.PathLike | None,
    source: str,
    max_sequence_length: int,
    dtype: str,
    pipe: Any,
    embeds: dict[str, Tensor],
) -> None:
    """Keep the embeddings ``PromptEncoder`` computed for the empty prompt (Flux pipelines only; atomic)."""
    if folder is None or not isinstance(pipe, FluxPipeline):
        return
    with atomic_file(empty_prompt_file(folder, source, max_sequence_length, dtype)) as tmp:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in embeds.items()}, str(tmp))


def load_with_empty_prompt(
    source: str,
    dtype: str,
    device: str,
    max_sequence_length: int,
    folder: str | os.PathLike | None,
    guidance: float | None = None,
) -> tuple[Any, PromptEncoder]:
    """(pipeline, a ``PromptEncoder`` holding the empty prompt) for generation and training.

    Cached in ``folder``: the pipeline comes without text encoders and tokenizers (never instantiated).
    Not cached: the full pipeline is loaded, the prompt encoded (and saved, for Flux), the encoders
    dropped. ``folder=None`` never caches. ``guidance``: for pipelines with classifier-free guidance.
    """
    embeds = cached_empty_prompt(folder, source, max_sequence_length, dtype, device)
    if embeds is not None:
        pipe = load_pipeline(source, dtype=dtype, device=device, text_encoders=False)
        return pipe, PromptEncoder.from_embeddings({"": embeds})
    pipe = load_pipeline(source, dtype=dtype, device=device)
    encoder = PromptEncoder(pipe, [""], max_sequence_length, device, guidance=guidance)
    save_empty_prompt(folder, source, max_sequence_length, dtype, pipe, encoder.cache[""])
    return pipe, encoder
