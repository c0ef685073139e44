"""What a FluxIR adapter is (paper Sec. 3.2): the variant switches of the paper's ablations and the sizes of the
Flux it controls; ``check_compatible`` refuses an adapter built for a different Flux."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fluxir.parameters.config import Config, ConfigError, Rule

# Base-model fields that must agree between an adapter and the Flux transformer it controls.
BASE_FIELDS = (
    "in_channels",
    "num_layers",
    "num_single_layers",
    "num_attention_heads",
    "attention_head_dim",
    "joint_attention_dim",
    "pooled_projection_dim",
    "guidance_embeds",
    "axes_dims_rope",
)

# Variant fields without a Python default: their one value is train.adapter in conf/base/parameters_train.yml.
REQUIRED_FIELDS = ("rank", "guidance")

ADAPTER_RULES = (
    Rule("rank", "positive_int", nullable=True, must="a positive int, None or 'full'"),
    *(
        Rule(name, "positive_int")
        for name in (
            "text_seq_len",
            "in_channels",
            "num_layers",
            "num_attention_heads",
            "attention_head_dim",
            "joint_attention_dim",
            "pooled_projection_dim",
        )
    ),
    Rule("num_single_layers", "nonneg_int"),
    Rule("guidance", "number_at_least", 0, note=" (set it with train.adapter.guidance)"),
)


@dataclass
class FluxIRConfig(Config):
    """Variant switches + the sizes of the Flux it controls (FLUX.1-dev's by default); ``rank`` and ``guidance``
    have their values in ``train.adapter`` of conf/base/parameters_train.yml."""

    rank: int | None  # SE rank r (Eq. 3, Table 2: 16/32/64/128); None (or "full") = one full c x c Linear per SE
    # The value a guidance-distilled Flux (FLUX.1-dev) is given while this adapter is trained; restoration
    # uses the same, so the two cannot disagree.
    guidance: float
    shared_se: bool = False  # Table 5 "single MLP": one SE_z (and SE_p) for all blocks; the paper uses rank=None
    learn_text_embeddings: bool = True  # theta_p, theta_y (Table 6)
    text_control: bool = True  # SE_p, control of the text stream (Table 6)
    text_seq_len: int = 512  # rows of theta_p: the longest prompt (T5 tokens) the adapter accepts
    # Base-model sizes, as in FluxTransformer2DModel's config.
    in_channels: int = 64
    num_layers: int = 19
    num_single_layers: int = 38
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = True
    axes_dims_rope: tuple[int, ...] = field(default=(16, 56, 56))

    PREFIX, RULES = "FluxIRConfig.", ADAPTER_RULES

    def __post_init__(self) -> None:
        if isinstance(self.rank, str):
            if self.rank.lower() != "full":
                raise ConfigError([f"FluxIRConfig.rank must be a positive int, None or 'full', got {self.rank!r}"])
            self.rank = None
        self.axes_dims_rope = tuple(int(a) for a in self.axes_dims_rope)
        super().__post_init__()
        self.guidance = float(self.guidance)

    def joint_problems(self, failed: set[str]) -> list[str]:
        if "attention_head_dim" in failed or sum(self.axes_dims_rope) == self.attention_head_dim:
            return []
        return [
            f"FluxIRConfig.axes_dims_rope {tuple(self.axes_dims_rope)} must sum to attention_head_dim "
            f"{self.attention_head_dim}"
        ]

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def num_blocks(self) -> int:
        """Flux blocks controlled: double then single (57 for FLUX.1-dev)."""
        return self.num_layers + self.num_single_layers

    @classmethod
    def from_flux(cls, flux: nn.Module, **overrides: Any) -> FluxIRConfig:
        """Config for a given ``FluxTransformer2DModel``; ``overrides`` (the ``train.adapter`` parameters) set the
        variant fields and must hold ``rank`` and ``guidance``."""
        if missing := [name for name in REQUIRED_FIELDS if name not in overrides]:
            raise ValueError(
                f"FluxIRConfig.from_flux needs {' and '.join(missing)}: pass the values of train.adapter in "
                "conf/base/parameters_train.yml (e.g. load_params(...)['train']['adapter'])"
            )
        cfg = flux.config
        if getattr(cfg, "patch_size", 1) != 1:
            raise ValueError(f"FluxIR supports Flux with patch_size 1, got {cfg.patch_size}")
        base = {name: getattr(cfg, name) for name in BASE_FIELDS}
        return cls.from_params({**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (rank None = full)."""
        d = dataclasses.asdict(self)
        d["axes_dims_rope"] = list(self.axes_dims_rope)
        return d

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FluxIRConfig:
        """Inverse of ``to_dict``; keys starting with '_' (file metadata) are ignored, unknown keys refused."""
        return super().from_params({k: v for k, v in params.items() if not k.startswith("_")})


def check_compatible(adapter_or_config: Any, flux: nn.Module) -> None:
    """ValueError naming both shapes when an adapter (or its ``FluxIRConfig``) was built for a different Flux."""
    config = getattr(adapter_or_config, "config", adapter_or_config)
    if not isinstance(config, FluxIRConfig):
        raise TypeError(f"expected a FluxIRAdapter or FluxIRConfig, got {type(adapter_or_config).__name__}")
    flux_shape = {name: getattr(flux.config, name) for name in BASE_FIELDS}
    flux_shape["axes_dims_rope"] = tuple(flux_shape["axes_dims_rope"])
    flux_shape["inner_dim"] = flux.config.num_attention_heads * flux.config.attention_head_dim
    ours = {name: getattr(config, name) for name in BASE_FIELDS} | {"inner_dim": config.inner_dim}
    if bad := [k for k in ours if ours[k] != flux_shape[k]]:
        diffs = ", ".join(f"{k}: adapter {ours[k]} vs flux {flux_shape[k]}" for k in bad)
        raise ValueError(
            f"FluxIR adapter does not fit this Flux transformer ({diffs}). The adapter was built for "
            f"{ours}; the transformer has {flux_shape}."
        )
