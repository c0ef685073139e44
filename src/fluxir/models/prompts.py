"""Prompt encoding: each distinct prompt encoded once, encoders freed; the empty prompt's embeddings kept on disk.

FluxGen generates from the empty prompt (paper Sec. 3.1) and FluxIR trains and restores with it (Sec. 3.3), so
Flux's text encoders only ever make one constant pair of tensors. Loading T5-XXL (4.7B parameters, ~9.5 GB in
bf16) for it on every rank of every run costs ~33 GB of host traffic per rank: the first load keeps them in the
catalog's ``prompt_embeddings`` folder and later loads build the pipeline without text encoders.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file, save_file
from torch import Tensor

from fluxir.io.atomic import atomic_file
from fluxir.io.provenance import hash_json
from fluxir.models.flux import fixed_prompt_embeddings
from fluxir.models.loading import TEXT_COMPONENTS, load_pipeline, resolve_source

# Pipelines whose __call__ takes encode_prompt's outputs back as keyword arguments (in encode_prompt's order).
_SDXL = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
_MASKED = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
EMBEDDING_KWARGS = {"StableDiffusionXLPipeline": _SDXL, "PixArtSigmaPipeline": _MASKED, "SanaPipeline": _MASKED}


class PromptEncoder:
    """Encodes each distinct prompt once, then frees the text encoders and tokenizers.

    Flux: T5 + CLIP (``fixed_prompt_embeddings`` when the folder has none). SDXL / PixArt-Sigma / Sana: the
    embeddings their ``__call__`` would compute for ``guidance``. Other pipelines keep their encoders.
    """

    def __init__(
        self, pipe: Any, prompts: list[str], max_sequence_length: int, device: str, guidance: float | None = None
    ) -> None:
        self.cache: dict[str, dict[str, Any]] = {}
        distinct = sorted(set(prompts))
        if isinstance(pipe, FluxPipeline):
            for text in distinct:
                if pipe.text_encoder_2 is None:  # tiny folders: no T5/CLIP, deterministic stand-ins
                    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
                    prompt_embeds, pooled = fixed_prompt_embeddings(pipe.transformer, seed=seed)
                else:
                    # diffusers' encode_prompt runs with grad: its graph would reach training's first backward,
                    # and the second step die with "backward through the graph a second time".
                    with torch.no_grad():
                        prompt_embeds, pooled, _ = pipe.encode_prompt(
                            prompt=text, prompt_2=None, device=device, max_sequence_length=max_sequence_length
                        )
                self.cache[text] = {
                    "prompt_embeds": prompt_embeds.detach().to(device),
                    "pooled_prompt_embeds": pooled.detach().to(device),
                }
        elif type(pipe).__name__ in EMBEDDING_KWARGS:
            if guidance is None:
                raise ValueError(
                    f"{type(pipe).__name__}: pass guidance (classifier-free guidance needs negative embeddings)"
                )
            names = EMBEDDING_KWARGS[type(pipe).__name__]
            kwargs = _encode_kwargs(pipe, guidance)
            with torch.no_grad():
                for text in distinct:
                    outputs = pipe.encode_prompt(prompt=text, device=device, num_images_per_prompt=1, **kwargs)
                    self.cache[text] = {n: t.detach() for n, t in zip(names, outputs) if t is not None}
        else:
            self.cache = {text: {"prompt": text} for text in distinct}
            return
        # Free the text encoders (T5-XXL is 4.7B, Gemma2 2.6B): generation only needs the cached embeddings.
        for name in [n for n in pipe.components if n.startswith(TEXT_COMPONENTS)]:
            setattr(pipe, name, None)

    @classmethod
    def from_embeddings(cls, cache: dict[str, dict[str, Any]]) -> PromptEncoder:
        encoder = cls.__new__(cls)
        encoder.cache = cache
        return encoder

    def batch_kwargs(self, texts: list[str]) -> dict[str, Any]:
        first = self.cache[texts[0]]
        if "prompt" in first:
            return {"prompt": texts}
        kwargs: dict[str, Any] = {name: torch.cat([self.cache[t][name] for t in texts]) for name in first}
        if "negative_prompt_embeds" in kwargs:
            kwargs["negative_prompt"] = None  # PixArt/Sana default to "", refused next to negative_prompt_embeds
        return kwargs


def _encode_kwargs(pipe: Any, guidance: float) -> dict[str, Any]:
    """The arguments ``pipe.__call__`` passes to ``encode_prompt`` by default (so the cached embeddings are
    the ones a call with the prompt text computes), with caption cleaning off (see ``generate_into_store``)."""
    call = inspect.signature(pipe.__call__).parameters
    encode = inspect.signature(pipe.encode_prompt).parameters
    kwargs: dict[str, Any] = {"do_classifier_free_guidance": guidance > 1}
    unet = getattr(pipe, "unet", None)
    if unet is not None and unet.config.get("time_cond_proj_dim") is not None:
        kwargs["do_classifier_free_guidance"] = False  # SDXL's rule: guidance-distilled UNets take no CFG
    for name in ("negative_prompt", "max_sequence_length", "complex_human_instruction"):
        if name in encode and name in call:
            kwargs[name] = call[name].default
    if "clean_caption" in encode:
        kwargs["clean_caption"] = False
    return kwargs


# ----------------------------------------------------------------------------------------------------
# The empty prompt on disk


def empty_prompt_key(source: str, max_sequence_length: int, dtype: str) -> str:
    """Hash of the model (a local folder: its resolved path and the size and mtime of every text-encoder and
    tokenizer file, so replaced encoders are never mistaken for the old ones), the sequence length and dtype."""
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
    """Keep the empty prompt's embeddings (Flux pipelines only)."""
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
    """(pipeline, a ``PromptEncoder`` holding the empty prompt); ``folder=None`` never caches."""
    embeds = cached_empty_prompt(folder, source, max_sequence_length, dtype, device)
    if embeds is not None:
        pipe = load_pipeline(source, dtype=dtype, device=device, text_encoders=False)
        return pipe, PromptEncoder.from_embeddings({"": embeds})
    pipe = load_pipeline(source, dtype=dtype, device=device)
    encoder = PromptEncoder(pipe, [""], max_sequence_length, device, guidance=guidance)
    save_empty_prompt(folder, source, max_sequence_length, dtype, pipe, encoder.cache[""])
    return pipe, encoder
