"""How FluxIR restores: ``RestoreConfig`` (the ``restore.*`` parameters other than the file ones) and the output
geometry it implies (``output_size``; sides padded to multiples of 16 for the VAE and Flux's 2x2 packing).

``fluxir.restoration.sampler`` restores with it; the public restorers take their output size and colour fix
from one; ``fluxir.restoration.work`` sizes a job from it before any model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fluxir.parameters.config import Config, Rule, is_int
from fluxir.restoration.colorfix import COLOR_FIX_METHODS
from fluxir.restoration.lowmem import OFFLOAD_MODES, QUANTIZE_MODES, combination_problems

SCHEDULES = ("flux_shift", "linear")
DTYPES = ("float32", "bfloat16", "float16")
MULTIPLE = 16  # VAE downsampling 8 x 2x2 packing


def _is_size(value: Any) -> bool:
    """An int >= 1 (the longer side) or [width, height] of ints >= 1."""
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(is_int(s, 1) for s in value)
    return is_int(value, 1)


def _tile_rule(name: str, multiple: int) -> Rule:
    return Rule(
        name,
        lambda v: is_int(v, 2 * multiple) and v % multiple == 0,
        nullable=True,
        must=f"a multiple of {multiple} >= {2 * multiple} (or null: no tiling)",
    )


GEOMETRY_RULES = (
    Rule(
        "target_size", _is_size, nullable=True, must="an int (longer side) or [width, height] of positive ints or null"
    ),
    Rule("color_fix", "choice", COLOR_FIX_METHODS),
)
RESTORE_RULES = (
    *GEOMETRY_RULES,
    Rule("steps", "positive_int", note=" (paper: 20)"),
    Rule("schedule", "choice", SCHEDULES),
    _tile_rule("tile_size", 16),
    _tile_rule("vae_tile_size", 8),
    Rule("seed", "nonneg_int"),
    Rule("dtype", "choice", DTYPES),
    Rule("batch_size", "positive_int"),
    Rule("max_sequence_length", "positive_int", nullable=True),
    Rule("control_scale", "number_at_least", 0, must="a number >= 0 (0: plain Flux, 1: as trained)"),
    Rule("plain_flux_guidance", "number_at_least", 0),
    Rule("start_t", "interval", "(0, 1]", must="a number in (0, 1] (1: from pure noise)"),
    Rule("max_output_megapixels", "positive_number"),
    Rule("offload", "choice", OFFLOAD_MODES),
    Rule("quantize", "choice", QUANTIZE_MODES),
)


class _Geometry(Config):
    """Reads a tile size 0 as null (no tiling) before the checks; a [width, height] target becomes a list of ints.
    ``scale`` sets the output only without a ``target_size``; then it must be a number > 0."""

    PREFIX = "restore."

    def joint_problems(self, failed: set[str]) -> list[str]:
        if "target_size" in failed or self.target_size is not None:
            return []
        message = Rule("scale", "positive_number").problem(self.scale, self.PREFIX)
        return [message] if message else []

    def __post_init__(self) -> None:
        for name in ("tile_size", "vae_tile_size"):
            if getattr(self, name, None) == 0:
                setattr(self, name, None)
        super().__post_init__()
        if isinstance(self.target_size, (list, tuple)):
            self.target_size = [int(s) for s in self.target_size]


@dataclass
class RestoreConfig(_Geometry):
    """How to restore: the parameters ``restore.*`` other than the file ones. Their values live in
    conf/base/parameters_restore.yml only (which documents each); ``RESTORE_RULES`` checks them."""

    steps: int  # paper Sec. 4.1: 20 sampling steps
    schedule: str  # "flux_shift" | "linear"
    scale: float  # output = input x scale (ignored when target_size is set)
    target_size: int | list[int] | None  # int: longer output side (aspect kept); [width, height]: exact
    tile_size: int | None  # diffusion tile in output pixels (multiple of 16); None/0: never tile
    tile_overlap: int  # pixels (multiple of 16), at most tile_size / 2
    vae_tile_size: int | None  # VAE tile in output pixels (multiple of 8); None/0: never tile
    vae_tile_overlap: int  # pixels (multiple of 8), at most vae_tile_size / 2
    color_fix: str  # "wavelet" | "adain" | "none"
    seed: int  # noise seed; the same seed gives the same output
    dtype: str  # transformer/adapter/VAE dtype (float16 VAEs run in float32 when force_upcast)
    device: str  # auto: cuda if available, else cpu
    batch_size: int  # tiles per transformer call
    max_sequence_length: int | None  # T5 tokens of the empty prompt; None: the adapter's text_seq_len (else 512)
    control_scale: float  # multiplies the adapter's controls: 0 = plain Flux, > 1 = closer to the LQ
    plain_flux_guidance: float  # Flux-dev's guidance input with no adapter (an adapter brings its trained one)
    start_t: float  # start the Euler integration at t = start_t from (1 - t) z_lq + t z_1; < 1: fewer steps
    max_output_megapixels: float  # larger outputs are refused before any model is loaded
    offload: str  # none | model | sequential (fluxir.restoration.lowmem)
    quantize: str  # none | int8 | fp8 | nf4: the frozen Flux transformer's linear weights
    compile: bool  # torch.compile Flux's blocks and the adapter block (fluxir.models.flux.compile_blocks)

    RULES = RESTORE_RULES

    def joint_problems(self, failed: set[str]) -> list[str]:
        found = super().joint_problems(failed)
        for tile_name, overlap_name, multiple in (
            ("tile_size", "tile_overlap", 16),
            ("vae_tile_size", "vae_tile_overlap", 8),
        ):
            tile, overlap = getattr(self, tile_name), getattr(self, overlap_name)
            if tile_name in failed or tile is None:
                continue
            if not (is_int(overlap, 0) and overlap % multiple == 0 and overlap <= tile // 2):
                found.append(
                    f"restore.{overlap_name} must be a multiple of {multiple} in [0, {tile_name}/2 = {tile // 2}], "
                    f"got {overlap!r}"
                )
        if not failed & {"offload", "quantize"}:
            found += combination_problems("restore.", self.offload, self.quantize)
        return found


@dataclass
class OutputGeometry(_Geometry):
    """What a public restorer takes from the restore settings: the output size (``scale`` or ``target_size``,
    as ``output_size`` reads them) and the colour fix."""

    scale: float
    target_size: int | list[int] | None
    color_fix: str

    RULES = GEOMETRY_RULES


def output_size(height: int, width: int, cfg: RestoreConfig | OutputGeometry) -> tuple[int, int]:
    """(H, W) of the restored image for an input of (height, width)."""
    if cfg.target_size is None:
        return max(1, round(height * cfg.scale)), max(1, round(width * cfg.scale))
    if isinstance(cfg.target_size, (list, tuple)):
        return int(cfg.target_size[1]), int(cfg.target_size[0])
    side = int(cfg.target_size)
    if width >= height:
        return max(1, round(height * side / width)), side
    return side, max(1, round(width * side / height))


def round_up(n: int, multiple: int = MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def config_dict(cfg: RestoreConfig) -> dict[str, Any]:
    """The config as a JSON-ready dict."""
    return asdict(cfg)
