"""FluxIR: a light adapter that controls a frozen Flux transformer for image restoration (paper Sec. 3.2, Fig. 3).

``FluxIRAdapter`` owns copies of Flux's input embedders and of its first double-stream block D, plus

- M_i, a zero-initialised ``Linear(in_channels -> inner_dim)`` on the packed LQ latent, added to the
  adapter's embedding of the noisy latent (Eq. 1: z_c = z_t + M_i(z_lq)),
- theta_p (text_seq_len x joint_attention_dim) and theta_y (pooled_projection_dim), zero-initialised,
  added to the T5 and pooled CLIP embeddings (p_c = p + theta_p, y_c = y + theta_y),
- one SE_z and one SE_p per Flux block (19 double + 38 single = 57 blocks, 114 SE layers), Eq. 3:
  SE(x) = W_e (W_s x + B_s) + B_e with W_e, B_e zero-initialised.

D maps (z_c, p_c, y_c, t) to features (f_z, f_p) (Eq. 2); SE^i maps them to the controls of block i
(Eq. 4: z_c^i = SE_z^i(f_z), p_c^i = SE_p^i(f_p)). ``fluxir.models.controlled_flux`` adds z_c^i to the image
stream and p_c^i to the text stream right BEFORE block i: the text output of the last single block is discarded
by Flux, so a control added after it would never receive gradient; added before, all 114 SE layers train.
Because W_e and B_e start at zero, a fresh adapter leaves Flux's output bit-identical. The variant switches of
the paper's ablations (Tables 2, 5, 6) are ``FluxIRConfig``'s (``fluxir.models.adapter_config``).

Shapes (FLUX.1-dev at 1024x1024): B batch, N = 4096 image tokens, S = 512 text tokens, c = 3072.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from diffusers.models.embeddings import CombinedTimestepGuidanceTextProjEmbeddings, CombinedTimestepTextProjEmbeddings
from diffusers.models.transformers.transformer_flux import FluxPosEmbed, FluxTransformerBlock
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from fluxir.io.atomic import atomic_directory, local_fs, manifest_problem, write_manifest
from fluxir.models.adapter_config import FluxIRConfig, check_compatible

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT_VERSION = 1
LICENSE_NAME, NOTICE_NAME, CARD_NAME = "LICENSE", "NOTICE", "README.md"
# The statement that the base model was modified, which its licence asks of a Derivative (FLUX.1 [dev] 3(c)).
MODIFIED_STATEMENT = (
    "The FluxIR adapter modifies the model: it adds a control branch (a trained copy of the model's first "
    "double-stream block and input embedders, a projection of the degraded image's latent, learnable text "
    "embeddings and one squeeze-excite layer per block) whose outputs are added to the model's blocks. The "
    "base model's own weights are not changed and not included."
)


class SELayer(nn.Module):
    """Eq. 3: SE(x) = W_e (W_s x + B_s) + B_e, (B, L, c) -> (B, L, c); rank None = one full c x c Linear.

    W_e and B_e start at zero so the control starts at zero; W_s keeps its default (random) init,
    otherwise no gradient would reach either layer.
    """

    def __init__(self, dim: int, rank: int | None) -> None:
        super().__init__()
        self.squeeze = nn.Linear(dim, rank) if rank is not None else None  # W_s (r x c), B_s (r)
        self.excite = nn.Linear(rank if rank is not None else dim, dim)  # W_e (c x r), B_e (c)
        nn.init.zeros_(self.excite.weight)
        nn.init.zeros_(self.excite.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.squeeze is not None:
            x = self.squeeze(x)  # (B, L, r)
        return self.excite(x)  # (B, L, c)


class FluxIRAdapter(nn.Module):
    """The FluxIR adapter (Fig. 3): one MM-DiT block D + M_i + theta_p/theta_y + 57 x (SE_z, SE_p).

    ``FluxIRAdapter(config)`` has fresh random weights; ``from_flux`` starts from a Flux model, as the paper does.
    """

    def __init__(self, config: FluxIRConfig) -> None:
        super().__init__()
        self.config = config
        # How it was trained (steps, global batch, run key, ...): written by fluxir.training, saved in config.json
        # as "_training" and shown in evaluation reports; empty for an adapter that was never trained.
        self.training_record: dict[str, Any] = {}
        c = config.inner_dim
        # The adapter's own copies of Flux's input layers, built as in
        # diffusers.models.transformers.transformer_flux.FluxTransformer2DModel.__init__ (diffusers 0.42.1).
        self.x_embedder = nn.Linear(config.in_channels, c)
        self.context_embedder = nn.Linear(config.joint_attention_dim, c)
        temb_cls = (
            CombinedTimestepGuidanceTextProjEmbeddings if config.guidance_embeds else CombinedTimestepTextProjEmbeddings
        )
        self.time_text_embed = temb_cls(embedding_dim=c, pooled_projection_dim=config.pooled_projection_dim)
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=list(config.axes_dims_rope))  # no parameters
        # M_i of Eq. 1, zero-initialised: z_c = z_t + M_i(z_lq) starts as z_t.
        self.input_proj = nn.Linear(config.in_channels, c)
        nn.init.zeros_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        # theta_p, theta_y: p_c = p + theta_p, y_c = y + theta_y.
        if config.learn_text_embeddings:
            self.theta_p = nn.Parameter(torch.zeros(config.text_seq_len, config.joint_attention_dim))
            self.theta_y = nn.Parameter(torch.zeros(config.pooled_projection_dim))
        else:
            self.register_parameter("theta_p", None)
            self.register_parameter("theta_y", None)
        # D of Eq. 2.
        self.block = FluxTransformerBlock(
            dim=c, num_attention_heads=config.num_attention_heads, attention_head_dim=config.attention_head_dim
        )
        # SE layers of Eq. 3-4: one per Flux block and stream, or one shared per stream (Table 5).
        n_se = 1 if config.shared_se else config.num_blocks
        self.se_z = nn.ModuleList(SELayer(c, config.rank) for _ in range(n_se))
        self.se_p = nn.ModuleList(SELayer(c, config.rank) for _ in range(n_se)) if config.text_control else None
        self.gradient_checkpointing = False

    @classmethod
    def from_flux(cls, flux: nn.Module, config: FluxIRConfig | None = None, **overrides: Any) -> FluxIRAdapter:
        """An adapter initialised from ``flux`` (D from its first double block, embedders copied), on its device
        and dtype; ``overrides`` set config fields (e.g. ``rank=16``)."""
        if config is None:
            config = FluxIRConfig.from_flux(flux, **overrides)
        elif overrides:
            config = FluxIRConfig.from_params({**config.to_dict(), **overrides})
        check_compatible(config, flux)
        device, dtype = flux.x_embedder.weight.device, flux.x_embedder.weight.dtype
        with torch.device(device):
            adapter = cls(config)
        adapter.to(dtype)
        with torch.no_grad():
            for name in ("x_embedder", "context_embedder", "time_text_embed"):
                getattr(adapter, name).load_state_dict(getattr(flux, name).state_dict())
            adapter.block.load_state_dict(flux.transformer_blocks[0].state_dict())
        return adapter.requires_grad_(True)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.weight.dtype

    @classmethod
    def from_pretrained(
        cls,
        folder_or_hub_id: str | os.PathLike,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> FluxIRAdapter:
        """Load an adapter from a folder written by ``save_pretrained`` or ``save_adapter``, or from a hub id."""
        folder = Path(folder_or_hub_id)
        if not folder.exists():
            name = str(folder_or_hub_id)
            if name.count("/") != 1 or name.startswith((".", "/")):
                raise FileNotFoundError(
                    f"FluxIRAdapter.from_pretrained({name!r}): no such folder, and not a hub id (<owner>/<name>)"
                )
            from huggingface_hub import snapshot_download

            # The whole repository (a few small files besides the weights): its manifest lists them all.
            folder = Path(snapshot_download(name, revision=revision))
        return load_adapter(folder, device=device, dtype=dtype)

    def save_pretrained(
        self,
        folder: str | os.PathLike,
        *,
        base_model: str,
        license: Mapping[str, Any] | None = None,
        evaluation: str | None = None,
        usage_path: str | None = None,
        note: str = "",
        fs: Any = None,
    ) -> None:
        """``save_adapter`` plus what sharing needs: ``LICENSE``, ``NOTICE`` (the base model's Attribution Notice and
        the statement that the model was modified) and a model card ``README.md``.

        ``base_model``: the hub id of the Flux it controls (its licence is looked up by it); ``license``:
        ``{license, license_name, license_link}`` for a base model fluxir does not know; ``usage_path``: what the
        card's usage snippet loads (default ``folder``); ``evaluation`` and ``note``: markdown for the card.
        """
        from fluxir.export.cards import (
            attribution_notice,
            generator_license,
            license_file_text,
            memory_text,
            model_card,
        )

        info = generator_license(base_model, None, license)
        weights_bytes = sum(t.numel() * t.element_size() for t in self.state_dict().values())
        card = model_card(
            base_model=base_model,
            license_info=info,
            config=self.config.to_dict(),
            parameters=count_parameters(self),
            weights_bytes=weights_bytes,
            training_record=self.training_record,
            evaluation=evaluation or "Not evaluated: run `kedro run --pipeline=evaluate`, then export again.",
            memory=memory_text(self.config.to_dict(), weights_bytes),
            load_path=usage_path or str(folder),
            note=note,
        )
        extra = {
            LICENSE_NAME: license_file_text(info, base_model),
            NOTICE_NAME: attribution_notice(info, MODIFIED_STATEMENT),
            CARD_NAME: card,
        }
        save_adapter(self, folder, fs=fs, extra_files=extra)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the adapter block D in backward (Flux's blocks follow ``flux.gradient_checkpointing``)."""
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    def features(
        self,
        hidden_states: Tensor,  # (B, N, in_channels) packed noisy latent z_t
        lq_latents: Tensor,  # (B, N, in_channels) packed LQ latent z_lq
        encoder_hidden_states: Tensor,  # (B, S, joint_attention_dim) T5 embedding p
        pooled_projections: Tensor,  # (B, pooled_projection_dim) pooled CLIP embedding y
        timestep: Tensor,  # (B,) in [0, 1]
        img_ids: Tensor | None = None,  # (N, 3)
        txt_ids: Tensor | None = None,  # (S, 3)
        guidance: Tensor | None = None,  # (B,)
        image_rotary_emb: tuple[Tensor, Tensor] | None = None,  # precomputed rope of (txt_ids, img_ids)
    ) -> tuple[Tensor, Tensor]:
        """Eq. 1-2: (f_z (B, N, c), f_p (B, S, c)) = D(z_c, p_c, y_c, t)."""
        cfg = self.config
        _check_inputs(cfg, hidden_states, lq_latents, encoder_hidden_states, pooled_projections, guidance)
        dtype = self.dtype
        z_t, z_lq = hidden_states.to(dtype), lq_latents.to(dtype)
        p, y = encoder_hidden_states.to(dtype), pooled_projections.to(dtype)
        z_c = self.x_embedder(z_t) + self.input_proj(z_lq)  # Eq. 1, (B, N, c)
        if self.theta_p is not None:
            p = p + self.theta_p[: p.shape[1]]  # p_c = p + theta_p, (B, S, joint)
            y = y + self.theta_y  # y_c = y + theta_y, (B, pooled)
        t = timestep.to(z_c.dtype) * 1000  # as FluxTransformer2DModel.forward
        if guidance is None:
            temb = self.time_text_embed(t, y)  # (B, c)
        else:
            temb = self.time_text_embed(t, guidance.to(z_c.dtype) * 1000, y)
        p_c = self.context_embedder(p)  # (B, S, c)
        if image_rotary_emb is None:
            if img_ids is None or txt_ids is None:
                raise ValueError("pass img_ids (N, 3) and txt_ids (S, 3), or image_rotary_emb")
            image_rotary_emb = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            f_p, f_z = torch.utils.checkpoint.checkpoint(
                self.block, z_c, p_c, temb, image_rotary_emb, None, use_reentrant=False
            )
        else:
            f_p, f_z = self.block(
                hidden_states=z_c, encoder_hidden_states=p_c, temb=temb, image_rotary_emb=image_rotary_emb
            )
        return f_z, f_p

    def controls(self, f_z: Tensor, f_p: Tensor) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Eq. 4, lazily for blocks i = 0..num_blocks-1 (double blocks first): (z_c^i (B,N,c), p_c^i (B,S,c))."""
        n = self.config.num_blocks
        if self.config.shared_se:  # one MLP for all blocks: compute once, reuse
            z_c = self.se_z[0](f_z)
            p_c = self.se_p[0](f_p) if self.se_p is not None else None
            for _ in range(n):
                yield z_c, p_c
            return
        for i in range(n):
            yield self.se_z[i](f_z), (self.se_p[i](f_p) if self.se_p is not None else None)

    def forward(
        self,
        hidden_states: Tensor,
        lq_latents: Tensor,
        encoder_hidden_states: Tensor,
        pooled_projections: Tensor,
        timestep: Tensor,
        img_ids: Tensor,
        txt_ids: Tensor,
        guidance: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        """All controls at once: ([z_c^i], [p_c^i] or None), num_blocks each. ``controlled_flux_forward`` uses
        ``features`` + ``controls`` instead, so that only one control (B, N, c) is alive at a time."""
        f_z, f_p = self.features(
            hidden_states, lq_latents, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance
        )
        z_controls, p_controls = zip(*self.controls(f_z, f_p))
        return list(z_controls), list(p_controls)


def _check_inputs(
    cfg: FluxIRConfig,
    hidden_states: Tensor,
    lq_latents: Tensor,
    encoder_hidden_states: Tensor,
    pooled_projections: Tensor,
    guidance: Tensor | None,
) -> None:
    if hidden_states.ndim != 3 or hidden_states.shape[-1] != cfg.in_channels:
        raise ValueError(
            f"hidden_states must be packed latents (B, N, {cfg.in_channels}), got {tuple(hidden_states.shape)}"
        )
    if lq_latents.shape != hidden_states.shape:
        raise ValueError(
            f"lq_latents {tuple(lq_latents.shape)} must have the shape of the packed noisy latents "
            f"hidden_states {tuple(hidden_states.shape)} (encode the LQ image upscaled to the output size)"
        )
    if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != cfg.joint_attention_dim:
        raise ValueError(
            f"encoder_hidden_states must be (B, S, {cfg.joint_attention_dim}), got {tuple(encoder_hidden_states.shape)}"
        )
    if cfg.learn_text_embeddings and encoder_hidden_states.shape[1] > cfg.text_seq_len:
        raise ValueError(
            f"prompt has {encoder_hidden_states.shape[1]} tokens but the adapter's theta_p has "
            f"text_seq_len={cfg.text_seq_len} rows"
        )
    if pooled_projections.shape[-1] != cfg.pooled_projection_dim:
        raise ValueError(
            f"pooled_projections must be (B, {cfg.pooled_projection_dim}), got {tuple(pooled_projections.shape)}"
        )
    if cfg.guidance_embeds and guidance is None:
        raise ValueError("this Flux has guidance_embeds=True (FLUX.1-dev): pass guidance (B,)")
    if not cfg.guidance_embeds and guidance is not None:
        raise ValueError("this Flux has guidance_embeds=False: pass guidance=None")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters; works on the meta device."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def adapter_parameter_breakdown(config: FluxIRConfig) -> dict[str, int]:
    """Parameter counts of an adapter built on the meta device: ``total``, ``without_se`` (the paper's "387M" for
    FLUX.1-dev), ``se`` (Table 2's "+ 22.8M" at r = 32) and the parts of ``without_se``."""
    with torch.device("meta"):
        adapter = FluxIRAdapter(config)
    se = count_parameters(adapter.se_z) + (count_parameters(adapter.se_p) if adapter.se_p is not None else 0)
    total = count_parameters(adapter)
    text = sum(p.numel() for p in (adapter.theta_p, adapter.theta_y) if p is not None)
    return {
        "total": total,
        "without_se": total - se,
        "se": se,
        "block": count_parameters(adapter.block),
        "embedders": sum(
            count_parameters(getattr(adapter, n)) for n in ("x_embedder", "context_embedder", "time_text_embed")
        ),
        "input_proj": count_parameters(adapter.input_proj),
        "text_embeddings": text,
    }


# ----------------------------------------------------------------------------------------------------
# Save / load (adapter weights only)


def save_adapter(
    adapter: FluxIRAdapter, folder: str | os.PathLike, fs: Any = None, extra_files: Mapping[str, str] | None = None
) -> None:
    """Write ``config.json`` + ``adapter.safetensors`` (+ ``extra_files``, {name: text}) atomically, replacing
    ``folder``; ``fs``: an fsspec filesystem (local by default)."""
    if not isinstance(adapter, FluxIRAdapter):
        raise TypeError(f"save_adapter expects a FluxIRAdapter, got {type(adapter).__name__}")
    fs = fs or local_fs()
    with atomic_directory(folder, fs) as tmp:
        meta = {
            "_class_name": "FluxIRAdapter",
            "_format_version": FORMAT_VERSION,
            **adapter.config.to_dict(),
            "_training": adapter.training_record,
        }
        with fs.open(f"{tmp}/{CONFIG_NAME}", "w") as f:
            f.write(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
        with fs.open(f"{tmp}/{WEIGHTS_NAME}", "wb") as f:
            f.write(st_save(state, metadata={"format": "pt"}))
        for name, text in (extra_files or {}).items():
            with fs.open(f"{tmp}/{name}", "w") as f:
                f.write(text)
        write_manifest(tmp, fs)  # last: load_adapter checks the files against it


def load_adapter(
    folder: str | os.PathLike, fs: Any = None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> FluxIRAdapter:
    """Read a folder written by ``save_adapter``; weights must match config.json exactly."""
    fs = fs or local_fs()
    folder = str(folder).rstrip("/")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not fs.exists(f"{folder}/{name}"):
            raise FileNotFoundError(f"{folder!r} is not a FluxIR adapter folder: {name} is missing")
    if problem := manifest_problem(folder, fs):
        raise ValueError(
            f"FluxIR adapter {folder!r} is damaged: {problem}. Use another version "
            "(--load-versions=fluxir_adapter:<version>) or train it again"
        )
    try:
        with fs.open(f"{folder}/{CONFIG_NAME}", "r") as f:
            raw = json.loads(f.read())
    except ValueError as err:
        raise ValueError(f"{folder}/{CONFIG_NAME} is not readable JSON ({err}); the adapter folder is damaged") from err
    version = raw.get("_format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(f"{folder!r} has adapter format {version}; this fluxir reads up to {FORMAT_VERSION}")
    config = FluxIRConfig.from_params(raw)
    with fs.open(f"{folder}/{WEIGHTS_NAME}", "rb") as f:
        try:
            state = st_load(f.read())
        except Exception as err:  # safetensors raises its own SafetensorError for a cut or corrupt file
            raise ValueError(
                f"{folder}/{WEIGHTS_NAME} is not a readable safetensors file ({err}); the adapter "
                "folder is damaged: use another version or train it again"
            ) from err
    with torch.device("meta"):
        adapter = FluxIRAdapter(config)
    try:
        adapter.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{folder}/{WEIGHTS_NAME} does not match its {CONFIG_NAME} {config}: {err}") from err
    adapter.training_record = dict(raw.get("_training") or {})
    return adapter.to(device=device, dtype=dtype).requires_grad_(True)
