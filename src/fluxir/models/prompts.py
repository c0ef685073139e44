"""Prompt encoding for Flux and the other generators: each distinct prompt encoded once, encoders freed.

FluxGen generates from the empty prompt (paper Sec. 3.1), training and restoration condition on it
too (Sec. 3.3); all three take the cached embeddings from here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from diffusers import FluxPipeline

from fluxir.models.flux import fixed_prompt_embeddings

# Pipelines whose __call__ takes encode_prompt's outputs back as keyword arguments (in encode_prompt's order).
EMBEDDING_KWARGS = {
    "StableDiffusionXLPipeline": (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ),
    "PixArtSigmaPipeline": (
        "prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_embeds",
        "negative_prompt_attention_mask",
    ),
    "SanaPipeline": (
        "prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_embeds",
        "negative_prompt_attention_mask",
    ),
}


class PromptEncoder:
    """Encodes each distinct prompt once, then frees the text encoders and tokenizers.

    Flux: T5 + CLIP (``fixed_prompt_embeddings`` when the folder has none). SDXL / PixArt-Sigma / Sana:
    the embeddings their ``__call__`` would compute for ``guidance`` (with the negative ones for
    classifier-free guidance). Other pipelines keep their encoders and get the prompt text.
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
                    # encode_prompt is not under no_grad in diffusers (only __call__ is): without it the
                    # embeddings carry T5/CLIP's graph into training's first backward, which frees it, and
                    # the second step dies with "backward through the graph a second time" (and on
                    # FLUX.1-dev T5's activations would stay alive).
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
        for name in [n for n in pipe.components if n.startswith(("text_encoder", "tokenizer"))]:
            setattr(pipe, name, None)

    @classmethod
    def from_embeddings(cls, cache: dict[str, dict[str, Any]]) -> PromptEncoder:
        """An encoder over embeddings computed earlier (``fluxir.models.empty_prompt``): no pipeline needed."""
        encoder = cls.__new__(cls)
        encoder.cache = cache
        return encoder

    def batch_kwargs(self, texts: list[str]) -> dict[str, Any]:
        """Pipeline keyword arguments for a batch of prompts."""
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
    import inspect

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
