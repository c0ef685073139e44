"""Building pyiqa metrics offline, and the image batches both scorers feed them.

Weights are never downloaded: which files each metric needs, where they live and how they are loaded
(keys checked, file named on a mismatch) is :mod:`fluxir.iqa.weights`.

At import time this module loads no torch or pyiqa (only numpy and ``fluxir.io.images``' PIL): pyiqa fixes
its weight folder when first imported, so it must come after ``configure_weights``, and both take seconds.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from fluxir.compat import maniqa_backbone_from_checkpoint, no_downloads
from fluxir.io.images import read_image
from fluxir.iqa import weights as iqa_weights
from fluxir.iqa.specs import NO_REFERENCE_DEFAULT, RANDOM_WEIGHT_SEED, MetricSpec, parse_all
from fluxir.iqa.weights import check_weights, required_weight_files
from fluxir.parameters.config import Rule, check_fields

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


def build_metric(spec: MetricSpec, device: Any, extra: Mapping[str, Any] | None = None) -> Any:
    """Create one pyiqa metric from files under the weight home (checked before), never downloading.

    Described metrics are built with random weights and their checkpoint loaded by
    :func:`iqa_weights.load_checkpoint` (keys compared, file named on a mismatch); anything outside
    the table pyiqa resolves itself, inside ``fluxir.compat.no_downloads``.
    """
    import pyiqa
    import torch

    plan = iqa_weights.load_plan(spec)
    kwargs: dict[str, Any] = {**spec.options, **(extra or {}), **plan.kwargs}
    is_maniqa = iqa_weights.metric_options(spec)["type"] == "MANIQA"
    maniqa = maniqa_backbone_from_checkpoint() if is_maniqa else nullcontext()
    with (
        no_downloads(spec.name, iqa_weights.file_sha256),
        maniqa,
        _seeded(not spec.pretrained),
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
            "options": {k: v for k, v in s.options.items()},
            "weights": [need.path.name for need in iqa_weights.needs(s)],
            "random_weight_seed": None if s.pretrained else RANDOM_WEIGHT_SEED,
        }
    return out


# ----------------------------------------------------------------------------- images and batches


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


BATCH_RULES = (Rule("batch_size", "positive_int"),)


def check_batch_size(batch_size: int) -> None:
    check_fields({"batch_size": batch_size}, BATCH_RULES, "")


def metric_scores(output: Any, expected: int, name: str) -> np.ndarray:
    """Per-image scores from a pyiqa output of shape (B,) or (B, 1)."""
    values = output.detach().float().cpu().numpy().reshape(-1)
    if values.size != expected:
        raise RuntimeError(f"IQA metric {name!r} returned {values.size} scores for {expected} images")
    return values.astype(np.float64)


def len_or_none(items: Any) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None
