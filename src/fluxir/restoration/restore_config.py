"""How FluxIR restores: ``RestoreConfig`` (the ``restore.*`` parameters other than the file ones) and the output
geometry it implies (``output_size``; sides padded to multiples of 16 for the VAE and Flux's 2x2 packing).

``fluxir.restoration.sampler`` restores with it; the public restorers take their output size and colour fix
from one; ``fluxir.restoration.work`` sizes a job from it before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fluxir.config import stage_params
from fluxir.restoration.colorfix import COLOR_FIX_METHODS
from fluxir.restoration.lowmem import OFFLOAD_MODES, QUANTIZE_MODES, check_combination
from fluxir.rules import Rule, field_problems, is_int, raise_problems_of, reject_unknown_keys

SCHEDULES = ("flux_shift", "linear")
DTYPES = ("float32", "bfloat16", "float16")
MULTIPLE = 16  # VAE downsampling 8 x 2x2 packing


RESTORE_RULES = (
    Rule("steps", "positive_int", note=" (paper: 20)"),
    Rule("schedule", "choice", SCHEDULES),
    Rule("color_fix", "choice", COLOR_FIX_METHODS),
    Rule("seed", "nonneg_int"),
    Rule("dtype", "choice", DTYPES),
    Rule("batch_size", "positive_int"),
    Rule("max_sequence_length", "positive_int", nullable=True),
    Rule("control_scale", "number_at_least", 0, must="a number >= 0 (0: plain Flux, 1: as trained)"),
    Rule("max_output_megapixels", "positive_number"),
    Rule("offload", "choice", OFFLOAD_MODES),
    Rule("quantize", "choice", QUANTIZE_MODES),
)


@dataclass
class RestoreConfig:
    """How to restore: the parameters ``restore.*`` other than the file ones (parameters_restore.yml documents each)."""

    steps: int = 20  # paper Sec. 4.1: 20 sampling steps
    schedule: str = "flux_shift"  # "flux_shift" | "linear"
    scale: float = 4  # output = input x scale (ignored when target_size is set)
    target_size: int | list[int] | None = None  # int: longer output side (aspect kept); [width, height]: exact
    tile_size: int | None = 1024  # diffusion tile in output pixels (multiple of 16); None/0: never tile
    tile_overlap: int = 256  # pixels (multiple of 16), at most tile_size / 2
    vae_tile_size: int | None = 1024  # VAE tile in output pixels (multiple of 8); None/0: never tile
    vae_tile_overlap: int = 128  # pixels (multiple of 8), at most vae_tile_size / 2
    color_fix: str = "wavelet"  # "wavelet" | "adain" | "none"
    seed: int = 0  # noise seed; the same seed gives the same output
    dtype: str = "bfloat16"  # transformer/adapter/VAE dtype (float16 VAEs run in float32 when force_upcast)
    device: str = "auto"  # auto: cuda if available, else cpu
    batch_size: int = 1  # tiles per transformer call
    max_sequence_length: int | None = None  # T5 tokens of the empty prompt; None: the adapter's text_seq_len (else 512)
    control_scale: float = 1.0  # multiplies the adapter's controls: 0 = plain Flux, > 1 = closer to the LQ
    start_t: float = 1.0  # start the Euler integration at t = start_t from (1 - t) z_lq + t z_1; < 1: fewer steps
    max_output_megapixels: float = 16  # larger outputs are refused before any model is loaded
    offload: str = "none"  # none | model | sequential (fluxir.restoration.lowmem)
    quantize: str = "none"  # none | int8 | fp8 | nf4: the frozen Flux transformer's linear weights
    compile: bool = False  # torch.compile Flux's blocks and the adapter block (fluxir.models.flux.compile_blocks)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RestoreConfig:
        """Build and validate from a parameters dict; unknown keys and bad values raise ValueError."""
        if "guidance" in params:
            raise ValueError(
                "restore.guidance is not a parameter: restoration uses the guidance the adapter was trained "
                "with (train.adapter.guidance, saved in the adapter's config.json); remove it"
            )
        params = stage_params(params)
        reject_unknown_keys(params, cls, "restore parameter(s)")
        cfg = cls(**params)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the parameter of every value the restorer cannot use (all of them at once)."""
        problems = field_problems(self, RESTORE_RULES, "restore.")
        if self.target_size is None:
            problems += field_problems(self, [Rule("scale", "positive_number")], "restore.")
        else:
            size = self.target_size
            if isinstance(size, (list, tuple)):
                if len(size) != 2 or not all(is_int(s, 1) for s in size):
                    problems.append(
                        f"restore.target_size must be an int (longer side) or [width, height] of positive "
                        f"ints, got {size!r}"
                    )
                else:
                    self.target_size = [int(s) for s in size]
            elif not is_int(size, 1):
                problems.append(f"restore.target_size must be an int (longer side) or [width, height], got {size!r}")
        for name, overlap_name, multiple in (
            ("tile_size", "tile_overlap", 16),
            ("vae_tile_size", "vae_tile_overlap", 8),
        ):
            tile, overlap = getattr(self, name), getattr(self, overlap_name)
            if tile in (None, 0):
                setattr(self, name, None)
                continue
            if not is_int(tile, 2 * multiple) or tile % multiple:
                problems.append(
                    f"restore.{name} must be a multiple of {multiple} >= {2 * multiple} (or null: no "
                    f"tiling), got {tile!r}"
                )
            elif not is_int(overlap, 0) or overlap % multiple or overlap > tile // 2:
                problems.append(
                    f"restore.{overlap_name} must be a multiple of {multiple} in [0, {name}/2 = "
                    f"{tile // 2}], got {overlap!r}"
                )
        if _bad_number(self.start_t) or not 0 < self.start_t <= 1:
            problems.append(f"restore.start_t must be a number in (0, 1] (1: from pure noise), got {self.start_t!r}")
        if not problems:
            check_combination(self.offload, self.quantize)
        raise_problems_of(problems)


def _bad_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)


def output_size(height: int, width: int, cfg: RestoreConfig) -> tuple[int, int]:
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
