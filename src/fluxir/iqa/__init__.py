"""Image quality assessment with pyiqa: no-reference scores for FluxGen selection, full-reference for evaluation.

``specs`` (which metric, which options) <- ``weights`` (which files, loaded offline) <- ``metrics``
(building them, batching images) <- ``scoring`` (the no-reference and full-reference scorers). This package
re-exports their public names; importing it loads no torch or pyiqa.
"""

from fluxir.iqa.metrics import create_metrics, images_to_tensor, metric_scores, metric_versions
from fluxir.iqa.scoring import score_full_reference, score_no_reference
from fluxir.iqa.specs import (
    CONVENTION_DEFINITIONS,
    CONVENTIONS,
    FULL_REFERENCE_DEFAULT,
    FULL_REFERENCE_TINY,
    NO_REFERENCE_DEFAULT,
    NO_REFERENCE_TINY,
    RANDOM_WEIGHT_SEED,
    MetricSpec,
    lower_is_better,
)
from fluxir.iqa.weights import WEIGHT_FREE, check_weights, configure_weights, required_weight_files

__all__ = [
    "CONVENTIONS",
    "CONVENTION_DEFINITIONS",
    "FULL_REFERENCE_DEFAULT",
    "FULL_REFERENCE_TINY",
    "NO_REFERENCE_DEFAULT",
    "NO_REFERENCE_TINY",
    "RANDOM_WEIGHT_SEED",
    "WEIGHT_FREE",
    "MetricSpec",
    "check_weights",
    "configure_weights",
    "create_metrics",
    "images_to_tensor",
    "lower_is_better",
    "metric_scores",
    "metric_versions",
    "required_weight_files",
    "score_full_reference",
    "score_no_reference",
]
