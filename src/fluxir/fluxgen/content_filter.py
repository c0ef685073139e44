"""FluxGen's content filter: every generated image scored by an NSFW image classifier before selection.

The story, in order:

1. Why. The FLUX.1 [dev] licence, section 2(e)(i), lets Output be created or distributed only by a user who
   (A) implements and maintains content filters against unlawful or infringing content, or (B) reviews
   Output before distribution. Black Forest Labs' own reference code does (A): ``src/flux/cli.py`` runs a
   transformers ``pipeline("image-classification", model="Falconsai/nsfw_image_detection")`` on every image
   and does not save one whose ``nsfw`` label scores above 0.85 (``content_filters.py`` holds their filters).
   FluxGen does the same by default: ``fluxgen.content_filter`` with ``enabled: true``, that classifier and
   that threshold (conf/base/parameters_fluxgen.yml), and selection drops the flagged images.
2. The classifier (``load_classifier``) is any transformers image classifier in the hub's format (a hub id or a
   folder with config.json, preprocessor_config.json, model.safetensors) whose ``id2label`` has an ``nsfw``
   label, loaded with ``AutoImageProcessor`` / ``AutoModelForImageClassification.from_pretrained``. A score is
   the softmax probability of that label, the number BFL's pipeline call compares with 0.85.
3. Scoring at scale is FluxGen's IQA scoring (``fluxir.fluxgen.score``), reused as is: chunks of
   ``batch_size`` distinct images keyed by sha256, share ``r`` of ``w`` processes (``accelerate launch -m
   fluxir.fluxgen content_filter``), images decoded by ``loader_workers`` processes, parts of ``part_size``
   rows under ``<nsfw_parts>/<filter key>/``. The filter key hashes the classifier's id, its revision (hub
   snapshot commit or folder hash, ``fluxir.io.provenance.model_revision``), the dtype and transformers'
   version: a rerun scores only images not scored by that very classifier. The threshold is not in the key:
   changing it re-reads the scores, it does not recompute them.
4. ``filter_table``: the generated manifest joined with the scores, ``nsfw_flagged = nsfw_score > threshold``;
   ``fluxir.fluxgen.select.apply_content_filter`` drops those rows from the selection and says why.
5. Turned off (``enabled: false``, which must be written explicitly): nothing is loaded or scored, every row is
   unflagged with no score, and ``record_filter_state`` logs a WARNING and MLflow tags saying that reviewing
   every output before distribution is the user's duty (2(e)(i)(B)).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fluxir.io.hashing import hash_json
from fluxir.io.provenance import model_revision
from fluxir.parameters.rules import Config, Rule

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
    """Parameters ``fluxgen.content_filter.*``: their values live in conf/base/parameters_fluxgen.yml only."""

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
    """What makes a score: the classifier (id and revision), its dtype and transformers' version."""
    import transformers

    return {
        "model": cfg.model,
        "revision": model_revision(cfg.model),
        "dtype": cfg.dtype,
        "transformers": transformers.__version__,
    }


def filter_key(cfg: ContentFilterConfig) -> str:
    """Short hash of ``filter_versions``: the folder of the score parts."""
    return hash_json(filter_versions(cfg))


# ----------------------------------------------------------------------------------------------------
# The classifier


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


def classifier_scorer(cfg: ContentFilterConfig, device: str) -> Callable[[list[np.ndarray]], dict[str, np.ndarray]]:
    """The chunk scorer ``fluxir.fluxgen.score.score_chunks_into_parts`` calls: loads the classifier once."""
    processor, classifier, nsfw_index = load_classifier(cfg.model, device, cfg.dtype)
    return lambda images: {SCORE_COLUMN: nsfw_probabilities(processor, classifier, nsfw_index, images)}


# ----------------------------------------------------------------------------------------------------
# Scoring every image, resumable, on one or many processes


def run_filter(
    cfg: ContentFilterConfig,
    manifest: pd.DataFrame,
    parts_root: Path,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
) -> tuple[Path, int]:
    """Score this process's share of the unscored images into ``<parts_root>/<filter key>``; returns that folder
    and how many images this process scored."""
    from fluxir.fluxgen.score import score_chunks_into_parts
    from fluxir.models.loading import resolve_device

    parts_dir = Path(parts_root) / filter_key(cfg)
    device = resolve_device(cfg.device, process_device)
    scored = score_chunks_into_parts(
        manifest,
        parts_dir,
        [SCORE_COLUMN],
        cfg.batch_size,
        lambda: classifier_scorer(cfg, device),
        process_index,
        num_processes,
        loader_workers=cfg.loader_workers,
        part_size=cfg.part_size,
        progress=progress,
        label="content filter",
    )
    return parts_dir, scored


def filter_table(manifest: pd.DataFrame, parts_dir: Path | None, cfg: ContentFilterConfig) -> pd.DataFrame:
    """One row per generated image: image_id, sha256, nsfw_score, nsfw_flagged, nsfw_threshold, content_filter.

    ``parts_dir`` None (filter disabled): no score (NaN), nothing flagged, ``content_filter`` says "disabled".
    """
    from fluxir.fluxgen.score import merge_scores

    base = manifest[["image_id", "sha256"]].reset_index(drop=True)
    if parts_dir is None:
        table = base.assign(**{SCORE_COLUMN: np.nan})
        table["nsfw_flagged"] = False
        table["nsfw_threshold"] = np.nan
        table["content_filter"] = "disabled"
        return table
    table = merge_scores(base.assign(path=manifest["path"].to_numpy()), parts_dir, [SCORE_COLUMN], "nsfw score")
    table = table.drop(columns="path")
    table["nsfw_flagged"] = table[SCORE_COLUMN] > cfg.threshold
    table["nsfw_threshold"] = float(cfg.threshold)
    table["content_filter"] = json.dumps(filter_versions(cfg), sort_keys=True)
    return table


def record_filter_state(cfg: ContentFilterConfig, flagged: int | None) -> dict[str, str]:
    """Log what filtered this run (or that nothing did: a WARNING naming 2(e)(i)(B)) and set the matching tags
    on the active MLflow run, if any; returns the tags."""
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
