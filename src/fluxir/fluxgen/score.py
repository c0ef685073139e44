"""FluxGen step 2 at scale: no-reference IQA scores over many processes, resumable, merged into one table.

Paper Sec. 3.1 scores every generated image with CLIP-IQA, MANIQA and MUSIQ. For 350,000 images:

- Work is cut into *chunks* of ``iqa.batch_size`` consecutive distinct images of the manifest; a chunk
  is one scorer batch, always the same images whatever the number of processes, so every score is
  the same number whether 1 or 8 processes computed it. Process ``r`` of ``w`` takes the unscored
  chunks ``r, r+w, r+2w, ...`` (the id sharding of generation, one chunk at a time):
  ``accelerate launch -m fluxir.fluxgen score --env base``.
- Scores are written in *parts*: ``<parts>/<metrics key>/part-<rank>-<n>.parquet`` with one row per
  image (``sha256`` + one float64 column per metric), written to a temporary name and renamed, every
  ``iqa.part_size`` images. The metrics key hashes pyiqa's version, each metric's settings and
  weight files and the arithmetic precision (``iqa.precision``), so a row is valid for exactly that
  image content, metric, version and precision. A killed run
  loses at most the images since its last part; a rerun scores only chunks that are not in a part.
- Image decoding overlaps the model: a torch DataLoader with ``iqa.loader_workers`` workers decodes
  the next chunks while the metrics run on the current one.
- ``merge_scores`` joins the parts onto the manifest by sha256: the versioned ``iqa_scores`` table.
- The mechanism is not IQA's own: ``score_chunks_into_parts`` takes any per-image scorer, and FluxGen's content
  filter (``fluxir.fluxgen.content_filter``) scores its NSFW classifier through it.
"""

from __future__ import annotations

import contextlib
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
from fluxir.datasets.durable_parquet import write_parquet
from fluxir.io.hashing import hash_json
from fluxir.io.images import read_image
from fluxir.models.loading import resolve_device
from fluxir.parameters.rules import Config, Rule, check_fields
from fluxir.runtime.processes import worker_init
from fluxir.runtime.progress import progress as progress_bar

logger = logging.getLogger(__name__)

_PART = re.compile(r"part-(\d+)-(\d+)\.parquet")


PRECISIONS = ("fp32", "tf32", "bf16")
SCORING_RULES = (
    Rule("batch_size", "positive_int"),
    Rule(
        "precision",
        "choice",
        PRECISIONS,
        must="'fp32' (IEEE float32 matmuls), 'tf32' (TensorFloat-32 matmuls on CUDA) or 'bf16' (autocast)",
    ),
    Rule("loader_workers", "nonneg_int", must="an integer >= 0 (0: decode in the scoring process)"),
    Rule("part_size", "positive_int"),
)


@dataclass
class IqaConfig(Config):
    """Parameters ``iqa.*``: their values (defaults included) live in conf/base/parameters_fluxgen.yml only."""

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
        """The metrics: at least one, each known to pyiqa and no-reference (their weight files are
        ``fluxir.parameters.validation``'s concern)."""
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
    """pyiqa's version, every metric's name, options and weight files, and the precision the scores were computed in."""
    return {**iqa_lib.metric_versions(specs), "precision": precision}


def metrics_key(specs: Sequence[Any], precision: str) -> str:
    """Short hash of ``score_versions``: the folder of the score parts."""
    return hash_json(score_versions(specs, precision))


@contextlib.contextmanager
def scoring_precision(precision: str, device: Any) -> Iterator[None]:
    """The metrics' arithmetic: ``fp32`` IEEE float32 matmuls, ``tf32`` TensorFloat-32 matmuls (CUDA only; the
    CPU stays float32), ``bf16`` bf16 autocast. pyiqa runs every metric under ``torch.backends.cudnn.flags``,
    whose default turns cuDNN's TF32 convolutions on in all three."""
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


def read_parts(parts_dir: Path, names: Sequence[str]) -> pd.DataFrame:
    """All rows scored so far: ``sha256`` + one column per metric name, one row per sha256."""
    parts = sorted(p for p in parts_dir.glob("part-*.parquet") if _PART.fullmatch(p.name)) if parts_dir.is_dir() else []
    if not parts:
        return pd.DataFrame({"sha256": pd.Series([], dtype=str), **{n: pd.Series([], dtype=np.float64) for n in names}})
    table = pd.concat([pd.read_parquet(p, columns=["sha256", *names]) for p in parts], ignore_index=True)
    return table.drop_duplicates("sha256", ignore_index=True)


def chunks_to_score(manifest: pd.DataFrame, scored: set[str], batch_size: int) -> list[pd.DataFrame]:
    """The chunks with an unscored image: the manifest's distinct images (by sha256, in manifest order)
    cut into fixed chunks of ``batch_size`` rows, so a chunk is the same batch in every run."""
    distinct = manifest.drop_duplicates("sha256")[["path", "sha256"]].reset_index(drop=True)
    chunk_of_row = np.arange(len(distinct)) // batch_size
    todo = np.unique(chunk_of_row[~distinct["sha256"].isin(scored).to_numpy()])
    return [distinct.iloc[k * batch_size : (k + 1) * batch_size] for k in todo]


class _ChunkImages(Dataset):
    """Item ``k``: the decoded images of chunk ``k`` as a list of (H, W, 3) uint8 arrays (in a loader worker)."""

    def __init__(self, chunks: list[pd.DataFrame]) -> None:
        self.paths = [list(chunk["path"]) for chunk in chunks]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> list[np.ndarray]:
        return [read_image(p) for p in self.paths[k]]


def _as_is(images: list[np.ndarray]) -> list[np.ndarray]:
    """Loader collate: keep the decoded arrays (the default would copy each into a tensor)."""
    return images


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
    manifest: pd.DataFrame,
    parts_dir: Path,
    names: Sequence[str],
    batch_size: int,
    make_scorer: Callable[[], Callable[[list[np.ndarray]], dict[str, np.ndarray]]],
    process_index: int = 0,
    num_processes: int = 1,
    *,
    loader_workers: int,
    part_size: int,
    progress: bool = True,
    label: str = "IQA",
) -> int:
    """Score this process's share of the chunks not in a part yet with ``make_scorer()`` (called only when there is
    work: loading a model for nothing costs minutes at scale); returns how many images it scored.

    The mechanism of this module for any per-image scorer (IQA metrics here, the content filter's classifier in
    ``fluxir.fluxgen.content_filter``): chunks of ``batch_size`` distinct images by sha256, share
    ``process_index`` of ``num_processes``, decoded by ``loader_workers`` processes, parts of ``part_size`` rows
    holding ``sha256`` + one float64 column per name of ``names``.
    """
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = set(read_parts(parts_dir, names)["sha256"])
    todo = chunks_to_score(manifest, done, batch_size)
    mine = todo[process_index::num_processes]
    logger.info(
        "%s process %d/%d: %d of %d chunks to score into %s",
        label,
        process_index,
        num_processes,
        len(mine),
        len(todo),
        parts_dir,
    )
    if not mine:
        return 0
    score_chunk = make_scorer()
    loader = DataLoader(
        _ChunkImages(mine),
        batch_size=None,
        shuffle=False,
        collate_fn=_as_is,
        num_workers=loader_workers,
        worker_init_fn=worker_init(),
        prefetch_factor=4 if loader_workers else None,
        persistent_workers=False,
    )
    number, pending, pending_rows, scored = _next_part_number(parts_dir, process_index), [], 0, 0
    with progress_bar(
        total=sum(len(c) for c in mine), desc=f"{label}[{process_index}]", unit="img", disable=not progress
    ) as bar:
        for chunk, images in zip(mine, loader):
            scores = score_chunk(images)
            pending.append(pd.DataFrame({"sha256": chunk["sha256"].to_numpy(), **scores}))
            pending_rows += len(chunk)
            if pending_rows >= part_size:
                _write_part(parts_dir, process_index, number, pending)
                number, pending, pending_rows = number + 1, [], 0
            scored += len(chunk)
            bar.update(len(chunk))
    if pending:
        _write_part(parts_dir, process_index, number, pending)
    return scored


def score_into_parts(
    manifest: pd.DataFrame,
    parts_dir: Path,
    specs: Sequence[Any],
    batch_size: int,
    device: Any,
    process_index: int = 0,
    num_processes: int = 1,
    *,
    loader_workers: int,
    part_size: int,
    precision: str,
    progress: bool = True,
) -> int:
    """Score this process's share of the not yet scored chunks into parts; returns how many images it scored."""
    check_fields(
        {"batch_size": batch_size, "loader_workers": loader_workers, "part_size": part_size, "precision": precision},
        SCORING_RULES,
        "iqa.",
    )
    parsed = [iqa_lib.MetricSpec.parse(s) for s in specs]
    not_nr = [s.name for s in parsed if s.metric_mode != "NR"]
    if not_nr:
        raise ValueError(
            f"iqa.metrics {not_nr} are full-reference; FluxGen selection needs no-reference metrics (musiq, piqe, ...)"
        )

    def make_scorer() -> Callable[[list[np.ndarray]], dict[str, np.ndarray]]:
        metrics = iqa_lib.create_metrics(parsed, device)
        return lambda images: _score_batch(metrics, images, device, precision)

    return score_chunks_into_parts(
        manifest,
        parts_dir,
        [s.name for s in parsed],
        batch_size,
        make_scorer,
        process_index,
        num_processes,
        loader_workers=loader_workers,
        part_size=part_size,
        progress=progress,
    )


def merge_scores(
    manifest: pd.DataFrame, parts_dir: Path, names: Sequence[str], what: str = "IQA score"
) -> pd.DataFrame:
    """The manifest plus one score column per metric (joined by sha256); every image must be scored."""
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


def checked_specs(cfg: IqaConfig) -> list[iqa_lib.MetricSpec]:
    """``cfg``'s metrics with the weight folder set and every weight file checked (one error listing all)."""
    specs = cfg.specs()
    iqa_lib.configure_weights(cfg.weights_dir, cfg.trust_weight_files)
    iqa_lib.check_weights(specs)
    return specs


def run_scoring(
    cfg: IqaConfig,
    manifest: pd.DataFrame,
    parts_root: Path,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
) -> tuple[Path, int]:
    """FluxGen's scoring step, as the ``fluxgen.score_images`` node and ``python -m fluxir.fluxgen score`` run it.

    Weight files checked first (one error for all), then this process's unscored chunks into
    ``<parts_root>/<metrics key>``. Returns that folder and how many images this process scored.
    """
    specs = checked_specs(cfg)
    parts_dir = Path(parts_root) / metrics_key(specs, cfg.precision)
    scored = score_into_parts(
        manifest,
        parts_dir,
        specs,
        cfg.batch_size,
        resolve_device(cfg.device, process_device),
        process_index,
        num_processes,
        loader_workers=cfg.loader_workers,
        part_size=cfg.part_size,
        precision=cfg.precision,
        progress=progress,
    )
    return parts_dir, scored
