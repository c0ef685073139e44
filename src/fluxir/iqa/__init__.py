"""Image quality assessment with pyiqa, built offline from ``weights``' files: no-reference scores (paper Sec. 3.1:
FluxGen keeps the generated images these rate best) and full-reference scores (Sec. 4.1: PSNR, SSIM, LPIPS) against
the HQ. No torch or pyiqa at import time: pyiqa fixes its weight folder when first imported, after
``configure_weights``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager, nullcontext
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from fluxir.compat import maniqa_backbone_from_checkpoint, no_downloads
from fluxir.io.images import read_image
from fluxir.iqa import weights as iqa_weights
from fluxir.iqa.weights import CONVENTION_DEFINITIONS as CONVENTION_DEFINITIONS
from fluxir.iqa.weights import (
    CONVENTIONS,
    FULL_REFERENCE_DEFAULT,
    NO_REFERENCE_DEFAULT,
    RANDOM_WEIGHT_SEED,
    MetricSpec,
    check_weights,
    parse_all,
    parse_of_mode,
    required_weight_files,
)
from fluxir.iqa.weights import FULL_REFERENCE_TINY as FULL_REFERENCE_TINY
from fluxir.iqa.weights import NO_REFERENCE_TINY as NO_REFERENCE_TINY
from fluxir.iqa.weights import configure_weights as configure_weights
from fluxir.iqa.weights import lower_is_better as lower_is_better
from fluxir.parameters.config import Rule, check_fields
from fluxir.runtime.progress import progress as progress_bar


@contextmanager
def _seeded() -> Iterator[None]:  # the caller's RNG stays untouched
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHT_SEED)
        yield


def build_metric(spec: MetricSpec, device: Any, extra: Mapping[str, Any] | None = None) -> Any:
    """One pyiqa metric from the files under the weight home, never downloading: described metrics get their
    checkpoint through ``load_checkpoint`` (keys compared), the rest resolve inside ``no_downloads``."""
    import pyiqa
    import torch

    plan = iqa_weights.load_plan(spec)
    kwargs: dict[str, Any] = {**spec.options, **(extra or {}), **plan.kwargs}
    is_maniqa = iqa_weights.metric_options(spec)["type"] == "MANIQA"
    maniqa = maniqa_backbone_from_checkpoint() if is_maniqa else nullcontext()
    with (
        no_downloads(spec.name, iqa_weights.file_sha256),
        maniqa,
        _seeded() if not spec.pretrained else nullcontext(),
        warnings.catch_warnings(),
    ):
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
    parsed = parse_all(specs)
    check_weights(parsed)
    return {s.name: build_metric(s, device) for s in parsed}


def metric_versions(specs: Any = NO_REFERENCE_DEFAULT) -> dict[str, Any]:
    """pyiqa version and, per metric, pretrained flag, options and weight file names (for manifests)."""
    from importlib.metadata import version

    out: dict[str, Any] = {"pyiqa": version("pyiqa"), "metrics": {}}
    for s in parse_all(specs):
        out["metrics"][s.name] = {
            "pretrained": s.pretrained,
            "options": dict(s.options),
            "weights": [need.path.name for need in iqa_weights.plan_files(s)[0]],
            "random_weight_seed": None if s.pretrained else RANDOM_WEIGHT_SEED,
        }
    return out


def as_rgb_uint8(item: Any, index: int) -> np.ndarray:
    """An HxWx3 uint8 array from an array or an image path (``fluxir.io.images.read_image``: converted to RGB)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image {index}: no such file {str(path)!r}")
        return read_image(path)
    arr = np.asarray(item)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"image {index}: expected an HxWx3 uint8 RGB array or an image path, "
            f"got dtype {arr.dtype} shape {arr.shape}"
        )
    return arr


def images_to_tensor(images: Sequence[np.ndarray], device: Any) -> Any:
    """(B, 3, H, W) float32 in [0, 1] on ``device``."""
    import torch

    batch = torch.from_numpy(np.stack(images)).to(device=device, dtype=torch.float32)
    return batch.permute(0, 3, 1, 2).contiguous().div_(255.0)


def same_size_batches(
    groups: Iterable[tuple[np.ndarray, ...]], batch_size: int
) -> Iterator[tuple[list[int], list[tuple[np.ndarray, ...]]]]:
    """(indices, items) batches of equal image size, streaming: one open batch per size, so long lists never
    load at once."""
    open_batches: dict[tuple[int, ...], tuple[list[int], list[tuple[np.ndarray, ...]]]] = {}
    for index, item in enumerate(groups):
        key = item[0].shape
        indices, items = open_batches.setdefault(key, ([], []))
        indices.append(index)
        items.append(item)
        if len(items) == batch_size:
            yield open_batches.pop(key)
    yield from open_batches.values()


# the arguments of the scorers, checked as parameters are
_ARGUMENTS = (
    Rule("batch_size", "positive_int"),
    Rule("convention", "choice", CONVENTIONS),
    Rule("crop_border", "nonneg_int", note=" (pixels per side)"),
)


def metric_scores(output: Any, expected: int, name: str) -> np.ndarray:
    """Per-image scores from a pyiqa output of shape (B,) or (B, 1)."""
    values = output.detach().float().cpu().numpy().reshape(-1)
    if values.size != expected:
        raise RuntimeError(f"IQA metric {name!r} returned {values.size} scores for {expected} images")
    return values.astype(np.float64)


def _score_batches(
    items: Iterable[tuple],
    metrics: Mapping[str, Any],
    batch_size: int,
    device: Any,
    total: int | None,
    desc: str,
    show: bool,
) -> dict[int, dict[str, float]]:
    """{item index: {metric: score}}, items of equal size batched; an item holds the metric's input images."""
    import torch

    scores: dict[int, dict[str, float]] = {}
    with progress_bar(total=total, desc=desc, unit="img", disable=not show) as shown:
        for indices, batch in same_size_batches(items, batch_size):
            inputs = [images_to_tensor(list(images), device) for images in zip(*batch)]
            with torch.inference_mode():
                for name, metric in metrics.items():
                    for i, value in zip(indices, metric_scores(metric(*inputs), len(indices), name)):
                        scores.setdefault(i, {})[name] = float(value)
            shown.update(len(indices))
    return scores


def score_no_reference(
    images: Iterable[Any],
    specs: Any = NO_REFERENCE_DEFAULT,
    *,
    batch_size: int,
    device: Any = "cpu",
    progress: bool = True,
) -> Any:
    """No-reference scores of images (HxWx3 uint8 arrays or paths): a DataFrame, one column per metric, one row
    per image in input order. All weight files are checked before any scoring."""
    import pandas as pd

    check_fields({"batch_size": batch_size}, _ARGUMENTS, "")
    metrics = create_metrics(parse_of_mode(specs, "NR"), device)
    items = ((as_rgb_uint8(img, i),) for i, img in enumerate(images))
    total = len(images) if isinstance(images, Sized) else None
    scores = _score_batches(items, metrics, batch_size, device, total, "IQA (no-reference)", progress)
    return pd.DataFrame({name: [scores[i][name] for i in range(len(scores))] for name in metrics})


_RESERVED_FR_OPTIONS = ("test_y_channel", "color_space", "crop_border")


def _fr_plan(spec: MetricSpec, convention: str) -> tuple[dict[str, Any], str]:
    # pyiqa options that realise ``convention`` for psnr/ssim, and the convention each metric uses
    if reserved := sorted(set(spec.options) & set(_RESERVED_FR_OPTIONS)):
        raise ValueError(
            f"IQA metric {spec.name!r}: options {reserved} are set by score_full_reference's convention/crop_border"
        )
    if spec.name in ("psnr", "ssim"):
        return {
            "test_y_channel": convention != "rgb",
            "color_space": "ycbcr" if convention == "ycbcr" else "yiq",
        }, convention
    return {}, {"psnry": "y", "ssimc": "rgb"}.get(spec.name, "")  # "": read from the built metric


def _cropped_pairs(
    restored: Iterable[Any], reference: Iterable[Any], crop_border: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for index, (a, b) in enumerate(zip_longest(restored, reference)):
        if a is None or b is None:
            which = "restored" if a is None else "reference"
            raise ValueError(f"restored and reference differ in length: {which} ran out at image {index}")
        x, y = as_rgb_uint8(a, index), as_rgb_uint8(b, index)
        if x.shape != y.shape:
            raise ValueError(
                f"image {index}: restored is {x.shape[:2]} but reference is {y.shape[:2]} (HxW must match)"
            )
        if min(x.shape[:2]) <= 2 * crop_border:
            raise ValueError(
                f"image {index}: size {x.shape[:2]} is too small for crop_border={crop_border} on each side"
            )
        if crop_border:
            x = x[crop_border:-crop_border, crop_border:-crop_border]
            y = y[crop_border:-crop_border, crop_border:-crop_border]
        yield x, y


def score_full_reference(
    restored: Iterable[Any],
    reference: Iterable[Any],
    metrics: Any = FULL_REFERENCE_DEFAULT,
    *,
    convention: str,
    crop_border: int,
    batch_size: int,
    device: Any = "cpu",
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> Any:
    """Full-reference scores of restored vs. reference images (arrays or paths, paired in order), ``crop_border``
    pixels cut from each side; ``convention`` sets the channels of psnr and ssim. A long DataFrame (image, metric,
    value, convention, crop_border): each number carries its convention (lpips and the like record "rgb").

    pyiqa's definitions, checked against scikit-image in tests/iqa/test_iqa.py: PSNR on [0, 1] with an
    1e-8 floor on the MSE (identical images give 80 dB); SSIM with an 11x11 Gaussian window (sigma 1.5),
    population variances, 'valid' border, images as integer levels 0..255 (Y rounded), no downsampling,
    and negative local structure terms clamped to 0 (only heavy noise makes that differ from skimage).
    """
    import pandas as pd

    check_fields({"batch_size": batch_size, "convention": convention, "crop_border": crop_border}, _ARGUMENTS, "")
    parsed = parse_of_mode(metrics, "FR")
    plans = {s.name: _fr_plan(s, convention) for s in parsed}
    check_weights(parsed)
    built, conventions = {}, {}
    for s in parsed:
        extra, conv = plans[s.name]
        built[s.name] = build_metric(s, device, extra)
        if not conv:  # e.g. ms_ssim defaults to Y; record what the metric really does
            net = built[s.name].net
            y = bool(getattr(net, "test_y_channel", False))
            conv = ("ycbcr" if getattr(net, "color_space", "yiq") == "ycbcr" else "y") if y else "rgb"
        conventions[s.name] = conv

    pairs = _cropped_pairs(restored, reference, crop_border)
    total = len(restored) if isinstance(restored, Sized) else None
    values = _score_batches(pairs, built, batch_size, device, total, "IQA (full-reference)", progress)
    names = range(len(values)) if names is None else names
    if len(names) != len(values):
        raise ValueError(f"names has {len(names)} entries for {len(values)} image pairs")
    rows = [
        (names[i], name, values[i][name], conventions[name], crop_border) for i in range(len(values)) for name in built
    ]
    return pd.DataFrame(rows, columns=["image", "metric", "value", "convention", "crop_border"])
