"""IQA metric specs: which pyiqa metric, with trained or random weights, with which options.

Paper Sec. 3.1 selects generated images on CLIP-IQA, MANIQA and MUSIQ; Sec. 4.1 (footnote 2) names the
pyiqa models ``clipiqa+_vitL14_512``, ``maniqa-pipal`` and ``musiq`` and reports PSNR/SSIM/LPIPS.

Tiny environments use the same pyiqa code path with scorers that need no files: the weight-free
metrics (``entropy``, ``piqe``; ``psnr``, ``ssim``, ...) or a pyiqa architecture with random weights
(``{"name": "musiq", "pretrained": False}``, seeded, so scores are reproducible).

Only the standard library is imported here: pyiqa's metric table is read from its config file.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

NO_REFERENCE_DEFAULT = ("clipiqa+_vitL14_512", "maniqa-pipal", "musiq")
FULL_REFERENCE_DEFAULT = ("psnr", "ssim", "lpips")
# "y": pyiqa's default luma, Y = 0.299 R + 0.587 G + 0.114 B on [0, 1] (BT.601 weights, full range; pyiqa
# `psnry`/`ssim`). "ycbcr": the Y of MATLAB rgb2ycbcr / BasicSR (16 + 65.481 R + 128.553 G + 24.966 B,
# studio range); it reads about 1.3 dB higher in PSNR than "y" on the same pair, so always say which.
CONVENTIONS = ("rgb", "y", "ycbcr")
CONVENTION_DEFINITIONS = {  # what each convention computes PSNR/SSIM on, as evaluation reports state it
    "rgb": "RGB channels (no luma conversion)",
    "y": "Y = 0.299 R + 0.587 G + 0.114 B on [0, 1] (BT.601 weights, full range; pyiqa's default)",
    "ycbcr": "Y = 16 + 65.481 R + 128.553 G + 24.966 B (MATLAB rgb2ycbcr / BasicSR, studio range)",
}
# Recommended no-download stand-ins for tiny runs (conf/tiny): same pyiqa code path, no weight files.
NO_REFERENCE_TINY = ("entropy", "piqe", {"name": "musiq", "pretrained": False})
# LPIPS stand-in: pyiqa's LPIPS code on a random (seeded) SqueezeNet without the learned linear layers
# (lpips=False averages the normalised feature differences), so distances stay >= 0 and 0 for equal images.
FULL_REFERENCE_TINY = (
    "psnr",
    "ssim",
    {"name": "lpips", "pretrained": False, "net": "squeeze", "pnet_rand": True, "lpips": False},
)
# Seed for metrics built with random weights, so tiny-run scores are reproducible across processes.
RANDOM_WEIGHT_SEED = 0

_SPEC_KEYS = ("name", "pretrained", "options")


# ----------------------------------------------------------------------------- pyiqa's metric table


@lru_cache(maxsize=1)
def pyiqa_configs() -> dict[str, dict[str, Any]]:
    """pyiqa's DEFAULT_CONFIGS, read without importing pyiqa when it is not loaded yet.

    Importing pyiqa fixes its weight directory and takes seconds; its config module is plain data.
    """
    if "pyiqa" in sys.modules:
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        return dict(DEFAULT_CONFIGS)
    found = importlib.util.find_spec("pyiqa")
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError("pyiqa is not installed (pip install 'pyiqa>=0.1.16,<0.2')")
    path = Path(next(iter(found.submodule_search_locations))) / "default_model_configs.py"
    module_spec = importlib.util.spec_from_file_location("_fluxir_pyiqa_default_configs", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return dict(module.DEFAULT_CONFIGS)


# ----------------------------------------------------------------------------- metric specs


@dataclass
class MetricSpec:
    """One pyiqa metric: its name, whether to load trained weights, and extra pyiqa options."""

    name: str
    pretrained: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | MetricSpec) -> MetricSpec:
        """Parse ``"musiq"`` or ``{"name": "musiq", "pretrained": False, ...}``; other keys become options."""
        if isinstance(spec, MetricSpec):
            return spec
        if isinstance(spec, str):
            return cls(_known_name(spec))
        if not isinstance(spec, Mapping):
            raise TypeError(f"an IQA metric spec is a name or a dict with 'name', got {type(spec).__name__}: {spec!r}")
        if "name" not in spec or not isinstance(spec["name"], str):
            raise ValueError(f"an IQA metric spec dict needs a string 'name', got {dict(spec)!r}")
        pretrained = spec.get("pretrained", True)
        if not isinstance(pretrained, bool):
            raise TypeError(f"IQA metric {spec['name']!r}: 'pretrained' must be true or false, got {pretrained!r}")
        options = spec.get("options") or {}
        if not isinstance(options, Mapping):
            raise TypeError(f"IQA metric {spec['name']!r}: 'options' must be a dict, got {options!r}")
        options = dict(options)
        for key, value in spec.items():
            if key in _SPEC_KEYS:
                continue
            if key in options and options[key] != value:
                raise ValueError(
                    f"IQA metric {spec['name']!r}: option {key!r} given twice ({value!r} and {options[key]!r})"
                )
            options[key] = value
        if "pretrained" in options:  # pyiqa's own `pretrained` option is our field; keep one source of truth
            raise ValueError(f"IQA metric {spec['name']!r}: set 'pretrained' at the top level, not in options")
        return cls(_known_name(spec["name"]), pretrained, options)

    @property
    def metric_mode(self) -> str:
        """``"NR"`` (no-reference) or ``"FR"`` (full-reference), from pyiqa's config."""
        return pyiqa_configs()[self.name]["metric_mode"]


def parse_all(specs: Any) -> list[MetricSpec]:
    """Accept one spec or a sequence of them; metric names must be unique (they become column names)."""
    if isinstance(specs, (str, Mapping, MetricSpec)):
        specs = [specs]
    parsed = [MetricSpec.parse(s) for s in specs]
    if not parsed:
        raise ValueError("no IQA metric given")
    names = [s.name for s in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"IQA metric names must be unique (they name the score columns), repeated: {duplicates}")
    return parsed


# mode -> (what the other metrics are, the function that scores them, examples of this mode)
_OTHER_MODE = {
    "NR": ("full-reference", "score_full_reference", "no-reference: musiq, piqe, ..."),
    "FR": ("no-reference", "score_no_reference", "full-reference: psnr, ssim, lpips, ..."),
}


def parse_of_mode(specs: Any, mode: str) -> list[MetricSpec]:
    """``parse_all``, refusing metrics of the other mode ("NR" no-reference, "FR" full-reference) by name."""
    parsed = parse_all(specs)
    wrong = [s.name for s in parsed if s.metric_mode != mode]
    if wrong:
        kind, use, examples = _OTHER_MODE[mode]
        raise ValueError(f"{wrong} are {kind} metrics; use {use} ({examples})")
    return parsed


def _known_name(name: str) -> str:
    """Return ``name`` if pyiqa knows it, else raise naming close matches and every known metric."""
    configs = pyiqa_configs()
    if name in configs:
        return name
    close = difflib.get_close_matches(name, list(configs), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown IQA metric {name!r}.{hint} pyiqa knows: {', '.join(sorted(configs))}")


def lower_is_better(metric_or_name: Any) -> bool:
    """True when a lower score means better quality (piqe, brisque, niqe, lpips), False for musiq etc."""
    if hasattr(metric_or_name, "lower_better"):  # a pyiqa InferenceModel
        return bool(metric_or_name.lower_better)
    name = MetricSpec.parse(metric_or_name).name
    return bool(pyiqa_configs()[name].get("lower_better", False))
