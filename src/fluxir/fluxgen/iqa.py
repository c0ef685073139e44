"""Image quality assessment with pyiqa: no-reference scores for FluxGen selection, full-reference for evaluation.

Paper Sec. 3.1 selects generated images on CLIP-IQA, MANIQA and MUSIQ; Sec. 4.1 (footnote 2) names the
pyiqa models ``clipiqa+_vitL14_512``, ``maniqa-pipal`` and ``musiq`` and reports PSNR/SSIM/LPIPS.

Weights are never downloaded: which files each metric needs, where they live and how they are loaded
(keys checked, file named on a mismatch) is :mod:`fluxir.fluxgen.iqa_weights`; this module re-exports
its public helpers (``configure_weights``, ``required_weight_files``, ``check_weights``).

Tiny environments use the same pyiqa code path with scorers that need no files: the weight-free
metrics (``entropy``, ``piqe``; ``psnr``, ``ssim``, ...) or a pyiqa architecture with random weights
(``{"name": "musiq", "pretrained": False}``, seeded, so scores are reproducible).

At import time this module loads no torch or pyiqa (only numpy and ``fluxir.io``'s PIL/fsspec): pyiqa fixes
its weight folder when first imported, so it must come after ``configure_weights``, and both take seconds.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fluxir.fluxgen import iqa_weights
from fluxir.fluxgen.iqa_weights import WEIGHT_FREE, configure_weights, pyiqa_configs
from fluxir.io import read_image

__all__ = [
    "CONVENTIONS", "FULL_REFERENCE_DEFAULT", "FULL_REFERENCE_TINY", "NO_REFERENCE_DEFAULT", "NO_REFERENCE_TINY",
    "RANDOM_WEIGHT_SEED", "WEIGHT_FREE", "MetricSpec", "check_weights", "configure_weights", "create_metrics",
    "lower_is_better", "metric_versions", "required_weight_files", "score_full_reference", "score_no_reference",
]

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
    "psnr", "ssim", {"name": "lpips", "pretrained": False, "net": "squeeze", "pnet_rand": True, "lpips": False},
)
# Seed for metrics built with random weights, so tiny-run scores are reproducible across processes.
RANDOM_WEIGHT_SEED = 0

_SPEC_KEYS = ("name", "pretrained", "options")
_RESERVED_FR_OPTIONS = ("test_y_channel", "color_space", "crop_border")


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
                raise ValueError(f"IQA metric {spec['name']!r}: option {key!r} given twice ({value!r} and {options[key]!r})")
            options[key] = value
        if "pretrained" in options:  # pyiqa's own `pretrained` option is our field; keep one source of truth
            raise ValueError(f"IQA metric {spec['name']!r}: set 'pretrained' at the top level, not in options")
        return cls(_known_name(spec["name"]), pretrained, options)

    @property
    def metric_mode(self) -> str:
        """``"NR"`` (no-reference) or ``"FR"`` (full-reference), from pyiqa's config."""
        return pyiqa_configs()[self.name]["metric_mode"]


def _parse_all(specs: Any) -> list[MetricSpec]:
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


# ----------------------------------------------------------------------------- weight files


def required_weight_files(spec: str | Mapping[str, Any] | MetricSpec) -> list[Path]:
    """Files this metric needs offline, under the configured weight home; empty for weight-free ones.

    Metrics outside this module's table also return ``[]`` (nothing known to check up front); building
    them still never downloads: a missing file raises at :func:`create_metrics`.
    """
    return [need.path for need in iqa_weights.needs(MetricSpec.parse(spec))]


def check_weights(specs: Any) -> None:
    """Raise one FileNotFoundError listing every missing weight file of ``specs``, where to put it, and its URL."""
    iqa_weights.check_files(_parse_all(specs))


# ----------------------------------------------------------------------------- building metrics


@contextmanager
def _seeded(active: bool) -> Iterator[None]:
    """Fixed torch seed while building random-weight metrics, leaving the caller's RNG untouched."""
    if not active:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHT_SEED)
        yield


def _build(spec: MetricSpec, device: Any, extra: Mapping[str, Any] | None = None) -> Any:
    """Create one pyiqa metric from files under the weight home (checked before), never downloading.

    Described metrics are built with random weights and their checkpoint loaded by
    :func:`iqa_weights.load_checkpoint` (keys compared, file named on a mismatch); anything outside
    the table pyiqa resolves itself, inside ``no_downloads``.
    """
    import pyiqa
    import torch

    plan = iqa_weights.load_plan(spec)
    kwargs: dict[str, Any] = {**spec.options, **(extra or {}), **plan.kwargs}
    is_maniqa = iqa_weights.metric_options(spec)["type"] == "MANIQA"
    maniqa = iqa_weights.maniqa_backbone_from_checkpoint() if is_maniqa else nullcontext()
    with iqa_weights.no_downloads(spec.name), maniqa, _seeded(not spec.pretrained), warnings.catch_warnings():
        # pyiqa's LPIPS backbones still call torchvision with the deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", message=r"(The parameter 'pretrained'|Arguments other than a weight enum)")
        try:
            metric = pyiqa.create_metric(spec.name, device=torch.device(device), **kwargs)
        except TypeError as err:  # e.g. pretrained=False or an option the architecture does not take
            raise ValueError(f"IQA metric {spec.name!r} does not accept options {sorted(kwargs)}: {err}") from err
        except (RuntimeError, KeyError) as err:  # a CLIP backbone or torchvision file that does not fit
            files = [str(p) for p in required_weight_files(spec)]
            raise ValueError(f"IQA metric {spec.name!r} could not load its weights from {files}: {err!r}") from err
    if plan.checkpoint is not None and plan.bare_tensor:
        iqa_weights.load_prompt_tensor(metric.net, plan.checkpoint)
    elif plan.checkpoint is not None:
        iqa_weights.load_checkpoint(metric.net, plan.checkpoint, plan.only_keys)
    metric.eval()
    return metric


def create_metrics(specs: Any, device: Any = "cpu") -> dict[str, Any]:
    """Check all weight files first (one error for all), then build ``{name: pyiqa metric}`` in spec order."""
    parsed = _parse_all(specs)
    check_weights(parsed)
    return {s.name: _build(s, device) for s in parsed}


def metric_versions(specs: Any = NO_REFERENCE_DEFAULT) -> dict[str, Any]:
    """pyiqa version and, per metric, pretrained flag, options and weight file names (for manifests)."""
    from importlib.metadata import version

    out: dict[str, Any] = {"pyiqa": version("pyiqa"), "metrics": {}}
    for s in _parse_all(specs):
        out["metrics"][s.name] = {
            "pretrained": s.pretrained,
            "options": {k: v for k, v in s.options.items()},
            "weights": [need.path.name for need in iqa_weights.needs(s)],
            "random_weight_seed": None if s.pretrained else RANDOM_WEIGHT_SEED,
        }
    return out


# ----------------------------------------------------------------------------- images and batches


def _as_rgb_uint8(item: Any, index: int) -> np.ndarray:
    """An HxWx3 uint8 array from an array or an image path (``fluxir.io.read_image``: converted to RGB)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image {index}: no such file {str(path)!r}")
        return read_image(path)
    arr = np.asarray(item)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"image {index}: expected an HxWx3 uint8 RGB array or an image path, got dtype {arr.dtype} shape {arr.shape}"
        )
    return arr


def images_to_tensor(images: Sequence[np.ndarray], device: Any) -> Any:
    """(B, 3, H, W) float32 in [0, 1] on ``device``."""
    import torch

    batch = torch.from_numpy(np.stack(images)).to(device=device, dtype=torch.float32)
    return batch.permute(0, 3, 1, 2).contiguous().div_(255.0)


def _batches(groups: Iterable[tuple[np.ndarray, ...]], batch_size: int) -> Iterator[tuple[list[int], list[tuple[np.ndarray, ...]]]]:
    """Group items of equal image size into batches of up to ``batch_size``, streaming.

    At most one open batch per distinct size is held in memory, so long image lists never load at once.
    """
    open_batches: dict[tuple[int, ...], tuple[list[int], list[tuple[np.ndarray, ...]]]] = {}
    for index, item in enumerate(groups):
        key = item[0].shape
        indices, items = open_batches.setdefault(key, ([], []))
        indices.append(index)
        items.append(item)
        if len(items) == batch_size:
            yield open_batches.pop(key)
    yield from open_batches.values()


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def metric_scores(output: Any, expected: int, name: str) -> np.ndarray:
    """Per-image scores from a pyiqa output of shape (B,) or (B, 1)."""
    values = output.detach().float().cpu().numpy().reshape(-1)
    if values.size != expected:
        raise RuntimeError(f"IQA metric {name!r} returned {values.size} scores for {expected} images")
    return values.astype(np.float64)


def _len_or_none(items: Any) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


def score_no_reference(
    images: Iterable[Any],
    specs: Any = NO_REFERENCE_DEFAULT,
    batch_size: int = 8,
    device: Any = "cpu",
    progress: bool = True,
) -> Any:
    """Score images (HxWx3 uint8 arrays or paths) with no-reference metrics.

    Returns a pandas DataFrame with one column per metric name, one row per image in input order.
    Images of equal size are batched together; all weight files are checked before any scoring.
    """
    import pandas as pd
    import torch

    from fluxir.progress import progress as progress_bar

    _check_batch_size(batch_size)
    parsed = _parse_all(specs)
    not_nr = [s.name for s in parsed if s.metric_mode != "NR"]
    if not_nr:
        raise ValueError(f"{not_nr} are full-reference metrics; use score_full_reference (no-reference: musiq, piqe, ...)")
    metrics = create_metrics(parsed, device)
    results: dict[str, dict[int, float]] = {name: {} for name in metrics}
    count = 0
    items = ((_as_rgb_uint8(img, i),) for i, img in enumerate(images))
    with progress_bar(total=_len_or_none(images), desc="IQA (no-reference)", unit="img", disable=not progress) as bar:
        for indices, batch in _batches(items, batch_size):
            x = images_to_tensor([b[0] for b in batch], device)
            with torch.inference_mode():
                for name, metric in metrics.items():
                    for i, value in zip(indices, metric_scores(metric(x), len(indices), name)):
                        results[name][i] = float(value)
            count += len(indices)
            bar.update(len(indices))
    return pd.DataFrame({name: [values[i] for i in range(count)] for name, values in results.items()})


def _fr_plan(spec: MetricSpec, convention: str) -> tuple[dict[str, Any], str]:
    """pyiqa options that realise ``convention`` for psnr/ssim, and the convention each metric uses."""
    reserved = sorted(set(spec.options) & set(_RESERVED_FR_OPTIONS))
    if reserved:
        raise ValueError(
            f"IQA metric {spec.name!r}: options {reserved} are set by score_full_reference's convention/crop_border"
        )
    if spec.name in ("psnr", "ssim"):
        return {"test_y_channel": convention != "rgb", "color_space": "ycbcr" if convention == "ycbcr" else "yiq"}, convention
    if spec.name == "psnry":
        return {}, "y"
    if spec.name == "ssimc":
        return {}, "rgb"
    return {}, ""  # read from the built metric


def _cropped_pairs(restored: Iterable[Any], reference: Iterable[Any], crop_border: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(restored, reference) HxWx3 uint8 pairs in order, ``crop_border`` pixels cut from each side; sizes checked."""
    restored_iter, reference_iter = iter(restored), iter(reference)
    index = 0
    while True:
        a = next(restored_iter, None)
        b = next(reference_iter, None)
        if a is None and b is None:
            return
        if a is None or b is None:
            which = "restored" if a is None else "reference"
            raise ValueError(f"restored and reference differ in length: {which} ran out at image {index}")
        x, y = _as_rgb_uint8(a, index), _as_rgb_uint8(b, index)
        if x.shape != y.shape:
            raise ValueError(f"image {index}: restored is {x.shape[:2]} but reference is {y.shape[:2]} (HxW must match)")
        if min(x.shape[:2]) <= 2 * crop_border:
            raise ValueError(f"image {index}: size {x.shape[:2]} is too small for crop_border={crop_border} on each side")
        if crop_border:
            x = x[crop_border:-crop_border, crop_border:-crop_border]
            y = y[crop_border:-crop_border, crop_border:-crop_border]
        yield x, y
        index += 1


def score_full_reference(
    restored: Iterable[Any],
    reference: Iterable[Any],
    metrics: Any = FULL_REFERENCE_DEFAULT,
    convention: str = "y",
    crop_border: int = 4,
    device: Any = "cpu",
    batch_size: int = 8,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> Any:
    """Full-reference scores of restored vs. reference images (arrays or paths, paired in order).

    ``convention`` ("rgb", "y" or "ycbcr", see CONVENTIONS) sets the channels of psnr and ssim;
    ``crop_border`` pixels are cut from each side of both images before every metric. Returns a long
    DataFrame with columns image, metric, value, convention, crop_border: each number carries the
    convention it was computed under (lpips and other RGB-defined metrics record "rgb").

    pyiqa's definitions, checked against scikit-image in tests/fluxgen/test_iqa.py: PSNR on [0, 1] with an
    1e-8 floor on the MSE (identical images give 80 dB); SSIM with an 11x11 Gaussian window (sigma 1.5),
    population variances, 'valid' border, images as integer levels 0..255 (Y rounded), no downsampling,
    and negative local structure terms clamped to 0 (only heavy noise makes that differ from skimage).
    """
    import pandas as pd
    import torch

    from fluxir.progress import progress as progress_bar

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not isinstance(crop_border, int) or isinstance(crop_border, bool) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer (pixels per side), got {crop_border!r}")
    _check_batch_size(batch_size)
    parsed = _parse_all(metrics)
    not_fr = [s.name for s in parsed if s.metric_mode != "FR"]
    if not_fr:
        raise ValueError(f"{not_fr} are no-reference metrics; use score_no_reference (full-reference: psnr, ssim, lpips, ...)")
    plans = {s.name: _fr_plan(s, convention) for s in parsed}
    check_weights(parsed)
    built: dict[str, Any] = {}
    conventions: dict[str, str] = {}
    for s in parsed:
        extra, conv = plans[s.name]
        built[s.name] = _build(s, device, extra)
        if not conv:  # e.g. ms_ssim defaults to Y; record what the metric really does
            net = built[s.name].net
            y = bool(getattr(net, "test_y_channel", False))
            conv = ("ycbcr" if getattr(net, "color_space", "yiq") == "ycbcr" else "y") if y else "rgb"
        conventions[s.name] = conv

    values: dict[int, dict[str, float]] = {}
    with progress_bar(total=_len_or_none(restored), desc="IQA (full-reference)", unit="img", disable=not progress) as bar:
        for indices, batch in _batches(_cropped_pairs(restored, reference, crop_border), batch_size):
            x = images_to_tensor([p[0] for p in batch], device)
            y = images_to_tensor([p[1] for p in batch], device)
            with torch.inference_mode():
                for name, metric in built.items():
                    for i, value in zip(indices, metric_scores(metric(x, y), len(indices), name)):
                        values.setdefault(i, {})[name] = float(value)
            bar.update(len(indices))
    count = len(values)
    if names is not None and len(names) != count:
        raise ValueError(f"names has {len(names)} entries for {count} image pairs")
    rows = [
        {"image": names[i] if names is not None else i, "metric": name, "value": values[i][name],
         "convention": conventions[name], "crop_border": crop_border}
        for i in range(count) for name in built
    ]
    return pd.DataFrame(rows, columns=["image", "metric", "value", "convention", "crop_border"])
