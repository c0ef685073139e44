"""The settings of FluxGen's "degrade" step and their checks: SeeSR's degradation settings plus FluxGen's crops.

The values live in ``conf/base/parameters_fluxgen.yml`` (``degrade.config``, SeeSR's
``utils_data/make_paired_data.py`` settings under SeeSR's names); ``DegradationConfig`` declares the fields
and checks them, and :mod:`fluxir.fluxgen.degrade` applies them to one image.

Conventions: sizes are (width, height), like PIL and the paper's "1024x768" generation resolution.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fluxir.parameters.rules import Config, Relation, Rule, is_int

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
# Latents are /8 of the image and Flux packs 2x2 latent patches: image sides must be multiples of 16.
SIDE_MULTIPLE = 16

PROBABILITIES = (
    "sinc_prob",
    "sinc_prob2",
    "final_sinc_prob",
    "gaussian_noise_prob",
    "gray_noise_prob",
    "second_blur_prob",
    "gaussian_noise_prob2",
    "gray_noise_prob2",
)
RANGES = (
    "blur_sigma",
    "betag_range",
    "betap_range",
    "blur_sigma2",
    "betag_range2",
    "betap_range2",
    "resize_range",
    "noise_range",
    "poisson_scale_range",
    "resize_range2",
    "noise_range2",
    "poisson_scale_range2",
    "jpeg_range",
    "jpeg_range2",
)
PREFIX = "degrade.config."  # the parameters group, named in every message


def _crop_problems(prefix: str, crop_sizes: Any, scale: int) -> list[str]:
    try:
        validate_crop_sizes(crop_sizes, scale)
    except ValueError as err:
        return [f"{prefix}crop_sizes: {err}"]
    return []


def _kernel_prob_problems(prob_name: str) -> Any:
    """``kernel_prob`` holds one probability per kernel of ``kernel_list``: its length is the other field's."""

    def check(prefix: str, kernels: Sequence[str], probs: Any) -> list[str]:
        message = Rule(prob_name, "distribution", len(kernels)).problem(probs, prefix)
        return [message] if message else []

    return check


DEGRADATION_RULES = (
    Rule("scale", "positive_int"),
    Rule("crop_position", "choice", ("center", "random"), must="'center' or 'random'"),
    *(Rule(name, "probability") for name in PROBABILITIES),
    Rule("kernel_sizes", "odd_ints_in", (3, 21)),
    *(Rule(name, "choices", KERNEL_TYPES) for name in ("kernel_list", "kernel_list2")),
    *(Rule(name, "range") for name in RANGES),
    *(
        Rule(name, "strict_range", must="[low, high] with low < high (basicsr requires it)")
        for name in ("blur_sigma", "blur_sigma2")
    ),
    *(
        Rule(name, "range_to", 100, must="a JPEG quality range within (0, 100]")
        for name in ("jpeg_range", "jpeg_range2")
    ),
    # Real-ESRGAN draws "down" from [low, 1] and "up" from [1, high]
    *(Rule(name, "range_around", 1) for name in ("resize_range", "resize_range2")),
    *(Rule(name, "distribution", 3, note=" (up, down, keep)") for name in ("resize_prob", "resize_prob2")),
    Relation(("kernel_list", "kernel_prob"), _kernel_prob_problems("kernel_prob")),
    Relation(("kernel_list2", "kernel_prob2"), _kernel_prob_problems("kernel_prob2")),
    Relation(("crop_sizes", "scale"), _crop_problems),
)


@dataclass(frozen=True)
class DegradationConfig(Config):
    """SeeSR ``make_paired_data.py`` settings (field names are SeeSR's) plus FluxGen's crops; values in
    ``conf/base/parameters_fluxgen.yml`` (``degrade.config``).

    Left out on purpose: SeeSR's ``blur_kernel_size`` 21 / ``blur_kernel_size2`` 11 (basicsr's
    dataset ignores them and hard-codes kernel sizes 7..21, here ``kernel_sizes``),
    ``no_degradation_prob`` and ``gt_size`` (set but never used by its degradation function; our
    crop comes from ``crop_sizes``).
    """

    scale: int
    crop_sizes: tuple[tuple[int, int], ...]  # (width, height)
    crop_position: str  # "center" (paper Sec. 4.1) or "random"
    use_hflip: bool
    use_usm: bool
    # kernels, first order
    kernel_sizes: tuple[int, ...]
    kernel_list: tuple[str, ...]
    kernel_prob: tuple[float, ...]
    sinc_prob: float
    blur_sigma: tuple[float, float]
    betag_range: tuple[float, float]
    betap_range: tuple[float, float]
    # kernels, second order
    kernel_list2: tuple[str, ...]
    kernel_prob2: tuple[float, ...]
    sinc_prob2: float
    blur_sigma2: tuple[float, float]
    betag_range2: tuple[float, float]
    betap_range2: tuple[float, float]
    final_sinc_prob: float
    # first degradation process
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]
    # second degradation process
    second_blur_prob: float
    resize_prob2: tuple[float, float, float]  # up, down, keep
    resize_range2: tuple[float, float]
    gaussian_noise_prob2: float
    noise_range2: tuple[float, float]
    poisson_scale_range2: tuple[float, float]
    gray_noise_prob2: float
    jpeg_range2: tuple[float, float]

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so the frozen config is hashable and safe to share.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, _to_tuple(value))
        super().__post_init__()
        object.__setattr__(self, "crop_sizes", tuple(validate_crop_sizes(self.crop_sizes, self.scale)))

    PREFIX, RULES = PREFIX, DEGRADATION_RULES

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly dict (lists instead of tuples) that ``from_params`` reads back."""
        return {f.name: _to_list(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _to_list(value: Any) -> Any:
    return [_to_list(v) for v in value] if isinstance(value, (list, tuple)) else value


def validate_crop_sizes(crop_sizes: Sequence[Sequence[int]], scale: int) -> list[tuple[int, int]]:
    """Check (width, height) crop sizes: sides must be multiples of 16 (VAE /8, 2x2 packing) and ``scale``."""
    multiple = math.lcm(SIDE_MULTIPLE, scale)
    if isinstance(crop_sizes, (str, bytes)) or not isinstance(crop_sizes, Sequence) or len(crop_sizes) == 0:
        raise ValueError(f"crop_sizes must be a non-empty list of (width, height) pairs, got {crop_sizes!r}")
    out: list[tuple[int, int]] = []
    for size in crop_sizes:
        ok_shape = isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
        if not ok_shape or not all(is_int(s) for s in size):
            raise ValueError(f"crop size {size!r} must be a (width, height) pair of ints")
        w, h = int(size[0]), int(size[1])
        if w % multiple or h % multiple or w <= 0 or h <= 0:
            nearest = tuple(max(multiple, multiple * round(s / multiple)) for s in (w, h))
            raise ValueError(
                f"crop size (width, height)={(w, h)} must have both sides positive multiples of {multiple} "
                f"(16 for the Flux latent grid, {scale} for the LQ scale); nearest valid size: {nearest}"
            )
        out.append((w, h))
    return out
