"""FluxGen's content filter: an NSFW image classifier scores every generated image; selection drops those above the
threshold.

The FLUX.1 [dev] licence, section 2(e)(i), lets Output be distributed only by a user who (A) maintains content
filters or (B) reviews it first. Black Forest Labs' ``src/flux/cli.py`` does (A) with
``Falconsai/nsfw_image_detection`` above 0.85, FluxGen's defaults; ``enabled: false`` logs and tags (B) as the
user's duty. Scores reuse ``fluxir.fluxgen.score``'s resumable parts, keyed by the classifier, not the threshold.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fluxir.io.provenance import hash_json, model_revision
from fluxir.parameters.config import Config, Rule

logger = logging.getLogger(__name__)

SCORE_COLUMN = "nsfw_score"
NSFW_LABEL = "nsfw"
REVIEW_DUTY = (
    "fluxgen.content_filter.enabled is false: no content filter checks the generated images. The FLUX.1 [dev] "
    "licence, section 2(e)(i)(B), then makes reviewing every output before distribution the user's duty."
)

FILTER_RULES = (
    Rule("enabled", "choice", (True, False), must="true or false (false: you review every output yourself)"),
    Rule("model", "text"),
    Rule("threshold", "interval", "[0, 1)", must="a probability in [0, 1) (Black Forest Labs use 0.85)"),
    Rule("batch_size", "positive_int"),
    Rule("dtype", "choice", ("float32", "bfloat16", "float16"), must="float32, bfloat16 or float16"),
    Rule("loader_workers", "nonneg_int", must="an integer >= 0 (0: decode in the scoring process)"),
    Rule("part_size", "positive_int"),
)


@dataclass
class ContentFilterConfig(Config):
    """Parameters ``fluxgen.content_filter.*`` (values in conf/base/parameters_fluxgen.yml)."""

    enabled: bool
    model: str  # hub id or folder of a transformers image classifier with an "nsfw" label
    threshold: float  # an image whose nsfw probability is above it is flagged
    batch_size: int
    device: str  # auto: this process's accelerate device, else cuda if present, else cpu
    dtype: str
    loader_workers: int
    part_size: int

    PREFIX, RULES = "fluxgen.content_filter.", FILTER_RULES


def filter_versions(cfg: ContentFilterConfig) -> dict[str, Any]:
    """What makes a score: the classifier's id and revision, its dtype and transformers' version."""
    import transformers

    return {
        "model": cfg.model,
        "revision": model_revision(cfg.model),
        "dtype": cfg.dtype,
        "transformers": transformers.__version__,
    }


def filter_key(cfg: ContentFilterConfig) -> str:
    """The folder of the score parts: a short hash of ``filter_versions``."""
    return hash_json(filter_versions(cfg))


def load_classifier(model: str, device: str, dtype: str) -> tuple[Any, Any, int]:
    """(image processor, classifier in eval mode on ``device``, index of its ``nsfw`` label)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        processor = AutoImageProcessor.from_pretrained(model)
        classifier = AutoModelForImageClassification.from_pretrained(model, dtype=getattr(torch, dtype))
    except OSError as err:
        raise FileNotFoundError(
            f"fluxgen.content_filter.model={model!r} could not be loaded ({err}); download it with "
            "`HF_HUB_OFFLINE=0 python -m fluxir.fetch --only filter`, or set fluxgen.content_filter.model to a folder "
            "holding config.json, preprocessor_config.json and model.safetensors"
        ) from err
    labels = {str(name).lower(): int(i) for i, name in classifier.config.id2label.items()}
    if NSFW_LABEL not in labels:
        raise ValueError(
            f"fluxgen.content_filter.model={model!r} has labels {sorted(labels)}, none of them {NSFW_LABEL!r}: "
            "choose a classifier in the format of Falconsai/nsfw_image_detection (id2label {0: normal, 1: nsfw})"
        )
    return processor, classifier.to(device).eval(), labels[NSFW_LABEL]


def nsfw_probabilities(processor: Any, classifier: Any, nsfw_index: int, images: list[np.ndarray]) -> np.ndarray:
    """``(B,)`` float64: the softmax probability of the ``nsfw`` label for each (H, W, 3) uint8 image."""
    import torch

    inputs = processor(images=images, return_tensors="pt")
    pixels = inputs["pixel_values"].to(classifier.device, classifier.dtype)
    with torch.inference_mode():
        logits = classifier(pixel_values=pixels).logits
    return torch.softmax(logits.float(), dim=-1)[:, nsfw_index].double().cpu().numpy()


def _classifier_scorer(cfg: ContentFilterConfig, device: str) -> Callable[[list[np.ndarray]], dict[str, np.ndarray]]:
    processor, classifier, nsfw_index = load_classifier(cfg.model, device, cfg.dtype)
    return lambda images: {SCORE_COLUMN: nsfw_probabilities(processor, classifier, nsfw_index, images)}


def run_filter(
    cfg: ContentFilterConfig,
    manifest: pd.DataFrame,
    parts_root: Path,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
) -> tuple[Path, int]:
    """This process's unscored images into ``<parts_root>/<filter key>``; returns that folder and the count."""
    from fluxir.fluxgen.score import score_chunks_into_parts

    parts_dir = Path(parts_root) / filter_key(cfg)
    scorer = functools.partial(_classifier_scorer, cfg)
    args = (process_index, num_processes, process_device, progress, "content filter")
    return parts_dir, score_chunks_into_parts(cfg, manifest, parts_dir, [SCORE_COLUMN], scorer, *args)


def filter_table(manifest: pd.DataFrame, parts_dir: Path | None, cfg: ContentFilterConfig) -> pd.DataFrame:
    """One row per image: image_id, sha256, nsfw_score, nsfw_flagged, nsfw_threshold, content_filter ("disabled",
    with no score and nothing flagged, when ``parts_dir`` is None)."""
    from fluxir.fluxgen.score import merge_scores

    base = manifest[["image_id", "sha256"]].reset_index(drop=True)
    if parts_dir is None:
        return base.assign(nsfw_score=np.nan, nsfw_flagged=False, nsfw_threshold=np.nan, content_filter="disabled")
    table = merge_scores(base.assign(path=manifest["path"].to_numpy()), parts_dir, [SCORE_COLUMN], "nsfw score")
    table = table.drop(columns="path")
    table["nsfw_flagged"] = table[SCORE_COLUMN] > cfg.threshold
    table["nsfw_threshold"] = float(cfg.threshold)
    table["content_filter"] = json.dumps(filter_versions(cfg), sort_keys=True)
    return table


def record_filter_state(cfg: ContentFilterConfig, flagged: int | None) -> dict[str, str]:
    """Log what filtered this run (or a WARNING naming 2(e)(i)(B)) and tag the active MLflow run; returns the tags."""
    if cfg.enabled:
        tags = {
            "content_filter": f"{cfg.model} (nsfw > {cfg.threshold} flagged)",
            "content_filter.flagged": str(flagged),
        }
        logger.info("content filter %s flagged %s image(s) (nsfw > %s)", cfg.model, flagged, cfg.threshold)
    else:
        tags = {"content_filter": "disabled", "content_filter.review_duty": REVIEW_DUTY}
        logger.warning(REVIEW_DUTY)
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tags(tags)
        if not cfg.enabled:
            from fluxir.runtime.tracking import log_new_params

            log_new_params({"content_filter.review_duty": "user (FLUX.1-dev licence 2(e)(i)(B))"})
    return tags
