"""FluxGen steps 2 and 3 (paper Sec. 3.1): no-reference IQA scores of every generated image, then the percentile cut.

Scoring is resumable on many processes: fixed chunks of ``iqa.batch_size`` distinct images (the same scores
whatever the number of processes) go into atomic parquet parts under a key of pyiqa's version, the metrics, their
weights and ``iqa.precision``. ``score_chunks_into_parts`` takes any per-image scorer (the content filter's too).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from fluxir import iqa as iqa_lib
from fluxir.datasets import write_parquet
from fluxir.io.images import read_image
from fluxir.io.provenance import hash_json
from fluxir.models.loading import resolve_device
from fluxir.parameters.config import Config, Rule
from fluxir.runtime.launch import worker_init
from fluxir.runtime.progress import progress as progress_bar

logger = logging.getLogger(__name__)

_PART = re.compile(r"part-(\d+)-(\d+)\.parquet")
Scorer = Callable[[list[np.ndarray]], dict[str, np.ndarray]]  # images -> {column: (B,) float64}

_PRECISIONS = "'fp32' (IEEE float32 matmuls), 'tf32' (TensorFloat-32 matmuls on CUDA) or 'bf16' (autocast)"
SCORING_RULES = (
    Rule("batch_size", "positive_int"),
    Rule("precision", "choice", ("fp32", "tf32", "bf16"), must=_PRECISIONS),
    Rule("loader_workers", "nonneg_int", must="an integer >= 0 (0: decode in the scoring process)"),
    Rule("part_size", "positive_int"),
)


@dataclass
class IqaConfig(Config):
    """Parameters ``iqa.*`` (values in conf/base/parameters_fluxgen.yml)."""

    metrics: list[Any]
    weights_dir: str | None
    trust_weight_files: bool
    batch_size: int
    device: str
    loader_workers: int
    part_size: int
    precision: str  # fp32, tf32 or bf16: part of the scores' key

    PREFIX, RULES = "iqa.", SCORING_RULES

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> dict[str, Any]:
        metrics = params["metrics"]
        return {**params, "metrics": [metrics] if isinstance(metrics, (str, Mapping)) else list(metrics or [])}

    def joint_problems(self, failed: set[str]) -> list[str]:
        """At least one metric, each known to pyiqa and no-reference (weight files: ``parameters.validation``)."""
        found = []
        if not self.metrics:
            found.append("iqa.metrics names no metric (the paper: [clipiqa+_vitL14_512, maniqa-pipal, musiq])")
        specs = []
        for spec in self.metrics:
            try:
                specs.append(iqa_lib.MetricSpec.parse(spec))
            except (ValueError, TypeError) as err:
                found.append(f"iqa.metrics: {err}")
        if not_nr := [s.name for s in specs if s.metric_mode != "NR"]:
            found.append(
                f"iqa.metrics {not_nr} are full-reference; FluxGen selection needs no-reference metrics "
                "(musiq, piqe, ...)"
            )
        return found

    def specs(self) -> list[iqa_lib.MetricSpec]:
        return [iqa_lib.MetricSpec.parse(s) for s in self.metrics]


def score_versions(specs: Sequence[Any], precision: str) -> dict[str, Any]:
    """pyiqa's version, every metric's name, options and weight files, and the precision of the scores."""
    return {**iqa_lib.metric_versions(specs), "precision": precision}


def metrics_key(specs: Sequence[Any], precision: str) -> str:
    """The folder of the score parts: a short hash of ``score_versions``."""
    return hash_json(score_versions(specs, precision))


@contextlib.contextmanager
def scoring_precision(precision: str, device: Any) -> Iterator[None]:
    """``fp32`` IEEE float32 matmuls, ``tf32`` TensorFloat-32 matmuls (CUDA only), ``bf16`` autocast. pyiqa's
    ``torch.backends.cudnn.flags`` turn cuDNN's TF32 convolutions on in all three."""
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


def read_parts(parts_dir: Path, names: Sequence[str]) -> pd.DataFrame:
    """All rows scored so far, one per sha256."""
    parts = sorted(p for p in parts_dir.glob("part-*.parquet") if _PART.fullmatch(p.name)) if parts_dir.is_dir() else []
    if not parts:
        return pd.DataFrame({"sha256": pd.Series([], dtype=str), **{n: pd.Series([], dtype=np.float64) for n in names}})
    table = pd.concat([pd.read_parquet(p, columns=["sha256", *names]) for p in parts], ignore_index=True)
    return table.drop_duplicates("sha256", ignore_index=True)


def chunks_to_score(manifest: pd.DataFrame, scored: set[str], batch_size: int) -> list[pd.DataFrame]:
    """The chunks holding an unscored image; a chunk is the same batch in every run."""
    distinct = manifest.drop_duplicates("sha256")[["path", "sha256"]].reset_index(drop=True)
    chunk_of_row = np.arange(len(distinct)) // batch_size
    todo = np.unique(chunk_of_row[~distinct["sha256"].isin(scored).to_numpy()])
    return [distinct.iloc[k * batch_size : (k + 1) * batch_size] for k in todo]


class _ChunkImages(Dataset):
    """Item ``k``: chunk ``k``'s images, (H, W, 3) uint8, decoded in a loader worker."""

    def __init__(self, chunks: list[pd.DataFrame]) -> None:
        self.paths = [list(chunk["path"]) for chunk in chunks]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> list[np.ndarray]:
        return [read_image(p) for p in self.paths[k]]


def _as_is(images: list[np.ndarray]) -> list[np.ndarray]:
    return images  # the default collate would copy each array into a tensor


def _score_batch(
    metrics: dict[str, Any], images: list[np.ndarray], device: Any, precision: str
) -> dict[str, np.ndarray]:
    """``{metric: (B,) float64}`` for a chunk; images of different sizes are scored in separate calls."""
    out = {name: np.empty(len(images)) for name in metrics}
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for rows in by_shape.values():
        x = iqa_lib.images_to_tensor([images[i] for i in rows], device)  # (B, 3, H, W) in [0, 1], pyiqa's input
        with torch.inference_mode(), scoring_precision(precision, device):
            for name, metric in metrics.items():
                out[name][rows] = iqa_lib.metric_scores(metric(x), len(rows), name)
    return out


def _next_part_number(parts_dir: Path, rank: int) -> int:
    numbers = [int(m[2]) for p in parts_dir.glob(f"part-{rank:05d}-*.parquet") if (m := _PART.fullmatch(p.name))]
    return max(numbers, default=-1) + 1


def _write_part(parts_dir: Path, rank: int, number: int, rows: list[pd.DataFrame]) -> None:
    path = parts_dir / f"part-{rank:05d}-{number:06d}.parquet"
    write_parquet(path, pd.concat(rows, ignore_index=True), index=False)  # complete under its name or absent


def score_chunks_into_parts(
    cfg: Any,
    manifest: pd.DataFrame,
    parts_dir: Path,
    names: Sequence[str],
    make_scorer: Callable[[str], Scorer],
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
    label: str = "IQA",
) -> int:
    """Score this process's unscored chunks into parts with ``cfg``'s device, batch_size, loader_workers and
    part_size; returns the count. ``make_scorer(device)`` runs only when there is work (a model loads for minutes)."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = set(read_parts(parts_dir, names)["sha256"])
    todo = chunks_to_score(manifest, done, cfg.batch_size)
    mine = todo[process_index::num_processes]
    where = f"{label} {process_index}/{num_processes}"
    logger.info("%s: %d of %d chunks to score into %s", where, len(mine), len(todo), parts_dir)
    if not mine:
        return 0
    score_chunk = make_scorer(resolve_device(cfg.device, process_device))
    loader = DataLoader(
        _ChunkImages(mine),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=cfg.loader_workers,
        worker_init_fn=worker_init(),
        prefetch_factor=4 if cfg.loader_workers else None,
    )
    number, pending, pending_rows, scored = _next_part_number(parts_dir, process_index), [], 0, 0
    total = sum(len(c) for c in mine)
    with progress_bar(total=total, desc=f"{label}[{process_index}]", unit="img", disable=not progress) as bar:
        for chunk, images in zip(mine, loader):
            scores = score_chunk(images)
            pending.append(pd.DataFrame({"sha256": chunk["sha256"].to_numpy(), **scores}))
            pending_rows += len(chunk)
            if pending_rows >= cfg.part_size:
                _write_part(parts_dir, process_index, number, pending)
                number, pending, pending_rows = number + 1, [], 0
            scored += len(chunk)
            bar.update(len(chunk))
    if pending:
        _write_part(parts_dir, process_index, number, pending)
    return scored


def _iqa_scorer(specs: list[iqa_lib.MetricSpec], device: Any, precision: str) -> Scorer:
    metrics = iqa_lib.create_metrics(specs, device)
    return lambda images: _score_batch(metrics, images, device, precision)


def merge_scores(
    manifest: pd.DataFrame, parts_dir: Path, names: Sequence[str], what: str = "IQA score"
) -> pd.DataFrame:
    """The manifest plus one score column per name (joined by sha256); every image must be scored."""
    scores = read_parts(parts_dir, names)
    table = manifest.reset_index(drop=True).merge(scores, on="sha256", how="left", validate="many_to_one")
    missing = table[names].isna().any(axis=1)
    if missing.any():
        raise RuntimeError(
            f"{int(missing.sum())} images have no {what} in {parts_dir} "
            f"(first: {table.loc[missing, 'path'].iloc[0]}); "
            "run the scoring again: it scores only what is missing"
        )
    return table


def run_scoring(
    cfg: IqaConfig,
    manifest: pd.DataFrame,
    parts_root: Path,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
) -> tuple[Path, int]:
    """The ``fluxgen.score_images`` node's and ``python -m fluxir.fluxgen score``'s step: every weight file checked
    (one error for all), then this process's unscored chunks into ``<parts_root>/<metrics key>``."""
    specs = cfg.specs()
    iqa_lib.configure_weights(cfg.weights_dir, cfg.trust_weight_files)
    iqa_lib.check_weights(specs)
    parts_dir = Path(parts_root) / metrics_key(specs, cfg.precision)
    names = [s.name for s in specs]
    scorer = functools.partial(_iqa_scorer, specs, precision=cfg.precision)
    return parts_dir, score_chunks_into_parts(
        cfg, manifest, parts_dir, names, scorer, process_index, num_processes, process_device, progress
    )


# Step 3: the percentile cut and its figure (08_reporting, MLflow)


def histograms_with_cuts(table: pd.DataFrame, cuts: dict[str, tuple[float, bool]], percentile: float) -> Any:
    """One histogram per IQA metric with the selection cut drawn and the kept side shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cuts), figsize=(4.5 * len(cuts), 3.4), squeeze=False)
    for ax, (name, (cut, lower)) in zip(axes[0], cuts.items()):
        values = table[name].to_numpy()
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="#4c72b0", alpha=0.85)
        ax.axvline(cut, color="#c44e52", lw=2, label=f"cut {cut:.4g}")
        lo, hi = ax.get_xlim()
        ax.axvspan(*((lo, cut) if lower else (cut, hi)), color="#55a868", alpha=0.12)  # the kept side
        kept = (values <= cut) if lower else (values >= cut)
        ax.set_title(f"{name} ({'lower' if lower else 'higher'} is better)\nkept {kept.sum()}/{len(values)}")
        ax.set_xlabel("score")
        ax.legend(loc="upper left", fontsize=8)
    axes[0][0].set_ylabel("images")
    fig.suptitle(f"IQA selection: {percentile:g}th percentile cut per metric", fontsize=10)
    fig.tight_layout()
    return fig


def check_percentile(percentile: Any) -> None:
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile < 100:
        raise ValueError(f"select.percentile must be in (0, 100) exclusive, got {percentile!r} (the paper uses 5)")


def percentile_cuts(
    scores: pd.DataFrame, names: list[str], percentile: float
) -> tuple[pd.DataFrame, dict[str, tuple[float, bool]]]:
    """Keep images inside the top ``100 - percentile`` % on every metric (paper: top 95% => percentile 5).

    Returns (scores plus ``<metric>_threshold``, ``<metric>_pass`` and ``keep``, ``{metric: (cut, lower_is_better)}``).
    """
    check_percentile(percentile)
    table = scores.copy()
    keep = pd.Series(True, index=table.index)
    cuts: dict[str, tuple[float, bool]] = {}
    for name in names:
        lower = iqa_lib.lower_is_better(name)
        cut = float(table[name].quantile((100 - percentile) / 100 if lower else percentile / 100))
        passed = table[name] <= cut if lower else table[name] >= cut
        table[f"{name}_threshold"] = cut
        table[f"{name}_pass"] = passed
        keep &= passed
        cuts[name] = (cut, lower)
    table["keep"] = keep
    return table, cuts


def apply_content_filter(table: pd.DataFrame, nsfw: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``percentile_cuts``'s table joined with the content filter's rows: flagged images lose ``keep``, and
    ``drop_reason`` says why each dropped image is out."""
    columns = ["image_id", "nsfw_score", "nsfw_flagged", "nsfw_threshold", "content_filter"]
    out = table.merge(nsfw[columns], on="image_id", how="left", validate="one_to_one")
    if out["nsfw_flagged"].isna().any():
        missing = out.loc[out["nsfw_flagged"].isna(), "image_id"].tolist()
        raise RuntimeError(
            f"images {missing[:5]} have IQA scores but no content filter row: rerun the fluxgen pipeline "
            "(both stages read the same generated_images)"
        )
    flagged = out["nsfw_flagged"].astype(bool)
    out["nsfw_flagged"] = flagged
    iqa_reason = [
        "" if row_keep else "iqa: below the cut on " + ", ".join(n for n in names if not out.at[i, f"{n}_pass"])
        for i, row_keep in out["keep"].items()
    ]
    filter_reason = [
        f"content filter: nsfw score {score:.4f} > {threshold:g}" if is_flagged else ""
        for score, threshold, is_flagged in zip(out["nsfw_score"], out["nsfw_threshold"], flagged)
    ]
    out["drop_reason"] = ["; ".join(r for r in pair if r) for pair in zip(filter_reason, iqa_reason)]
    out["keep"] = out["keep"] & ~flagged
    return out
