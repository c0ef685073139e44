"""Image quality assessment with pyiqa: no-reference scores for FluxGen selection, full-reference for evaluation.

``weights`` (metric specs, which files, loaded offline) <- ``metrics`` (building metrics, scoring). Importing this
package loads no torch or pyiqa.
"""

from fluxir.iqa.metrics import (
    create_metrics,
    images_to_tensor,
    metric_scores,
    metric_versions,
    score_full_reference,
    score_no_reference,
)
from fluxir.iqa.weights import (
    CONVENTION_DEFINITIONS,
    CONVENTIONS,
    FULL_REFERENCE_TINY,
    NO_REFERENCE_DEFAULT,
    NO_REFERENCE_TINY,
    MetricSpec,
    check_weights,
    configure_weights,
    lower_is_better,
    required_weight_files,
)

__all__ = [
    "CONVENTIONS",
    "CONVENTION_DEFINITIONS",
    "FULL_REFERENCE_TINY",
    "NO_REFERENCE_DEFAULT",
    "NO_REFERENCE_TINY",
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
