"""No-reference IQA scores (paper Sec. 3.1): FluxGen keeps the generated images these rate best."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fluxir.iqa.metrics import (
    as_rgb_uint8,
    check_batch_size,
    create_metrics,
    images_to_tensor,
    len_or_none,
    metric_scores,
    same_size_batches,
)
from fluxir.iqa.specs import NO_REFERENCE_DEFAULT, parse_of_mode


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
