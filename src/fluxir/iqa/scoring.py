"""The two IQA scorers: no-reference scores (paper Sec. 3.1: FluxGen keeps the generated images these rate best)
and full-reference scores (paper Sec. 4.1: PSNR, SSIM, LPIPS) of restored images against their HQ."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fluxir.iqa.metrics import (
    as_rgb_uint8,
    build_metric,
    check_batch_size,
    create_metrics,
    images_to_tensor,
    len_or_none,
    metric_scores,
    same_size_batches,
)
from fluxir.iqa.specs import CONVENTIONS, FULL_REFERENCE_DEFAULT, NO_REFERENCE_DEFAULT, MetricSpec, parse_of_mode
from fluxir.iqa.weights import check_weights


def score_no_reference(
    images: Iterable[Any],
    specs: Any = NO_REFERENCE_DEFAULT,
    *,
    batch_size: int,
    device: Any = "cpu",
    progress: bool = True,
) -> Any:
    """Score images (HxWx3 uint8 arrays or paths) with no-reference metrics.

    Returns a pandas DataFrame with one column per metric name, one row per image in input order.
    Images of equal size are batched together; all weight files are checked before any scoring.
    """
    import pandas as pd
    import torch

    from fluxir.runtime.progress import progress as progress_bar

    check_batch_size(batch_size)
    parsed = parse_of_mode(specs, "NR")
    metrics = create_metrics(parsed, device)
    results: dict[str, dict[int, float]] = {name: {} for name in metrics}
    count = 0
    items = ((as_rgb_uint8(img, i),) for i, img in enumerate(images))
    with progress_bar(total=len_or_none(images), desc="IQA (no-reference)", unit="img", disable=not progress) as bar:
        for indices, batch in same_size_batches(items, batch_size):
            x = images_to_tensor([b[0] for b in batch], device)
            with torch.inference_mode():
                for name, metric in metrics.items():
                    for i, value in zip(indices, metric_scores(metric(x), len(indices), name)):
                        results[name][i] = float(value)
            count += len(indices)
            bar.update(len(indices))
    return pd.DataFrame({name: [values[i] for i in range(count)] for name, values in results.items()})


# ----------------------------------------------------------------------------------------------------
# Full reference

_RESERVED_FR_OPTIONS = ("test_y_channel", "color_space", "crop_border")


def _fr_plan(spec: MetricSpec, convention: str) -> tuple[dict[str, Any], str]:
    """pyiqa options that realise ``convention`` for psnr/ssim, and the convention each metric uses."""
    reserved = sorted(set(spec.options) & set(_RESERVED_FR_OPTIONS))
    if reserved:
        raise ValueError(
            f"IQA metric {spec.name!r}: options {reserved} are set by score_full_reference's convention/crop_border"
        )
    if spec.name in ("psnr", "ssim"):
        return {
            "test_y_channel": convention != "rgb",
            "color_space": "ycbcr" if convention == "ycbcr" else "yiq",
        }, convention
    if spec.name == "psnry":
        return {}, "y"
    if spec.name == "ssimc":
        return {}, "rgb"
    return {}, ""  # read from the built metric


def _cropped_pairs(
    restored: Iterable[Any], reference: Iterable[Any], crop_border: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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
        index += 1


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
    """Full-reference scores of restored vs. reference images (arrays or paths, paired in order).

    ``convention`` ("rgb", "y" or "ycbcr", see CONVENTIONS) sets the channels of psnr and ssim;
    ``crop_border`` pixels are cut from each side of both images before every metric. Returns a long
    DataFrame with columns image, metric, value, convention, crop_border: each number carries the
    convention it was computed under (lpips and other RGB-defined metrics record "rgb").

    pyiqa's definitions, checked against scikit-image in tests/iqa/test_iqa.py: PSNR on [0, 1] with an
    1e-8 floor on the MSE (identical images give 80 dB); SSIM with an 11x11 Gaussian window (sigma 1.5),
    population variances, 'valid' border, images as integer levels 0..255 (Y rounded), no downsampling,
    and negative local structure terms clamped to 0 (only heavy noise makes that differ from skimage).
    """
    import pandas as pd
    import torch

    from fluxir.runtime.progress import progress as progress_bar

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not isinstance(crop_border, int) or isinstance(crop_border, bool) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer (pixels per side), got {crop_border!r}")
    check_batch_size(batch_size)
    parsed = parse_of_mode(metrics, "FR")
    plans = {s.name: _fr_plan(s, convention) for s in parsed}
    check_weights(parsed)
    built: dict[str, Any] = {}
    conventions: dict[str, str] = {}
    for s in parsed:
        extra, conv = plans[s.name]
        built[s.name] = build_metric(s, device, extra)
        if not conv:  # e.g. ms_ssim defaults to Y; record what the metric really does
            net = built[s.name].net
            y = bool(getattr(net, "test_y_channel", False))
            conv = ("ycbcr" if getattr(net, "color_space", "yiq") == "ycbcr" else "y") if y else "rgb"
        conventions[s.name] = conv

    values: dict[int, dict[str, float]] = {}
    with progress_bar(
        total=len_or_none(restored), desc="IQA (full-reference)", unit="img", disable=not progress
    ) as bar:
        for indices, batch in same_size_batches(_cropped_pairs(restored, reference, crop_border), batch_size):
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
        {
            "image": names[i] if names is not None else i,
            "metric": name,
            "value": values[i][name],
            "convention": conventions[name],
            "crop_border": crop_border,
        }
        for i in range(count)
        for name in built
    ]
    return pd.DataFrame(rows, columns=["image", "metric", "value", "convention", "crop_border"])
