"""FluxGen step 4 at scale: HQ/LQ pairs of the kept images on every core of several machines, resumable.

Workers come from a ``forkserver`` with one OpenCV and one torch thread each; machine ``rank`` of ``world_size``
takes the ids with ``image_id % world_size == rank``. A pair depends only on (image, id, seed), so 1 or 64 workers
give byte-identical files; its ``<lq>.json`` record is written last and marks it done.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

import fluxir
from fluxir.fluxgen.degrade_config import DegradationConfig
from fluxir.io.atomic import write_json_atomic
from fluxir.io.images import read_image
from fluxir.io.provenance import (
    DISCLOSURE_KEY,
    GENERATED_SOFTWARE,
    PAIR_DISCLOSURE,
    SOFTWARE_KEY,
    hash_json,
    png_text,
    read_provenance,
)
from fluxir.io.store import ImageStore, portable_path
from fluxir.parameters.config import Config, ConfigError, Rule, check_fields, field_problems, is_int
from fluxir.runtime.launch import die_with_parent
from fluxir.runtime.progress import progress as progress_bar

logger = logging.getLogger(__name__)


def pairs_key(config_repr: str, seed: int, config_keys: Iterable[str]) -> str:
    """The folder of one degradation setting: a hash of the config, the seed and the generation configs."""
    return hash_json([config_repr, seed, sorted(set(config_keys))])


def resolve_workers(workers: int | str) -> int:
    """``auto``: the cores this process may run on."""
    if workers == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not is_int(workers, 1):
        raise ValueError(f"degrade.workers must be 'auto' or a positive integer, got {workers!r}")
    return workers


def ids_for_rank(image_ids: Iterable[int], rank: int, world_size: int) -> list[int]:
    check_fields({"world_size": world_size}, [Rule("world_size", "positive_int")], "degrade.")
    if not is_int(rank, 0) or rank >= world_size:
        raise ValueError(
            f"degrade.rank must be an integer in [0, {world_size - 1}] (world_size {world_size}), got {rank!r}"
        )
    return [i for i in image_ids if i % world_size == rank]


def launcher_rank_and_world(environ: Mapping[str, str]) -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) without one.

    ``RANK``/``WORLD_SIZE`` (torchrun, accelerate) win. A SLURM job array of A tasks, each running T tasks with
    ``srun``, gives A x T shares: rank = (array index - ``SLURM_ARRAY_TASK_MIN``) x T + ``SLURM_PROCID``.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return int(environ["RANK"]), int(environ["WORLD_SIZE"])
    rank, world = int(environ.get("SLURM_PROCID", 0)), int(environ.get("SLURM_NTASKS", 1))
    if "SLURM_ARRAY_TASK_ID" in environ:
        if int(environ.get("SLURM_ARRAY_TASK_STEP", 1)) != 1:
            raise ValueError(
                "degradation over a SLURM job array needs consecutive task ids (--array=0-7, no :step); "
                f"got SLURM_ARRAY_TASK_STEP={environ['SLURM_ARRAY_TASK_STEP']}"
            )
        index = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
        rank, world = index * world + rank, int(environ["SLURM_ARRAY_TASK_COUNT"]) * world
    return rank, world


def rank_and_world(degrade: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[int, int]:
    """``degrade.rank``/``degrade.world_size`` when set (both), else the launcher's share."""
    rank, world = degrade.get("rank"), degrade.get("world_size")
    if rank is None and world is None:
        return launcher_rank_and_world(environ)
    if rank is None or world is None:
        raise ValueError(
            f"set both degrade.rank and degrade.world_size or neither (null: from the launcher), "
            f"got rank={rank!r}, world_size={world!r}"
        )
    return rank, world


class PairStores:
    """Pair ``i``'s files: ``<root>/<key>/hq``, ``<root>/<key>/lq`` and its record ``<lq path>.json``."""

    def __init__(self, pair_store: ImageStore, key: str) -> None:
        self.key = key
        self.hq, self.lq = pair_store.sub(key).sub("hq"), pair_store.sub(key).sub("lq")

    def record_path(self, image_id: int) -> Path:
        return self.lq.path_for(image_id).with_suffix(".json")


def _start_worker(owner_pid: int) -> None:
    """Die with the pool's owner (not only the forkserver); one thread each, so N workers = N busy cores."""
    die_with_parent(owner_pid)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def pair_provenance(source: str | os.PathLike, key: str, seed: int, side: str) -> Any:
    """One side's PNG text: the source's provenance with the pair's disclosure, side, seed and pairs key."""
    return png_text(
        {
            SOFTWARE_KEY: GENERATED_SOFTWARE,  # a FluxGen source written before provenance existed has none
            **read_provenance(source),
            DISCLOSURE_KEY: PAIR_DISCLOSURE,
            "Fluxir-Version": fluxir.__version__,
            "Pair-Side": side,
            "Degradation-Seed": seed,
            "Pairs-Key": key,
        }
    )


def make_pair(job: tuple[int, str], stores: PairStores, config: Any, seed: int) -> int:
    from fluxir.fluxgen.degrade import degrade_pair  # basicsr and torchvision: only where pairs are made (2 s)

    image_id, source = job
    hq, lq, info = degrade_pair(read_image(source), image_id, seed, config)
    hq_rec = stores.hq.write_recorded(image_id, hq, pnginfo=pair_provenance(source, stores.key, seed, "hq"))
    lq_rec = stores.lq.write_recorded(image_id, lq, pnginfo=pair_provenance(source, stores.key, seed, "lq"))
    sizes = {"hq_size": [hq.shape[1], hq.shape[0]], "lq_size": [lq.shape[1], lq.shape[0]]}  # (width, height)
    record = {"hq_sha256": hq_rec.sha256, "lq_sha256": lq_rec.sha256, "degradation": info, **sizes}
    # last: the pair counts as done only once both images are in place
    write_json_atomic(stores.record_path(image_id), record, sort_keys=True, default=str)
    return image_id


def make_pairs(
    jobs: list[tuple[int, str]], stores: PairStores, config: Any, seed: int, workers: int = 1, progress: bool = True
) -> list[int]:
    """Make the pairs of ``jobs`` (``(image_id, source path)``) not done yet; returns their ids."""
    todo = [job for job in jobs if not stores.record_path(job[0]).is_file()]
    where = stores.lq.root.parent
    logger.info("degrade: %d of %d pairs to make with %d worker(s) into %s", len(todo), len(jobs), workers, where)
    if not todo:
        return []
    work = functools.partial(make_pair, stores=stores, config=config, seed=seed)
    made: list[int] = []
    with progress_bar(total=len(todo), desc="degrade", unit="pair", disable=not progress) as bar:
        if workers == 1:
            for job in todo:
                made.append(work(job))
                bar.update(1)
        else:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["fluxir.fluxgen.pairs"])  # the degradation code, once
            with context.Pool(workers, initializer=_start_worker, initargs=(os.getpid(),)) as pool:
                # chunks of a few pairs: little IPC, and a killed worker loses at most a few seconds of work
                for image_id in pool.imap_unordered(work, todo, chunksize=4):
                    made.append(image_id)
                    bar.update(1)
    return sorted(made)


def pairs_manifest(kept: pd.DataFrame, stores: PairStores, seed: int) -> pd.DataFrame:
    """One row per kept image, from the pair records alone (sizes included: training never opens an image)."""
    ids = [int(i) for i in kept["image_id"]]
    records, missing = [], []
    for image_id in ids:
        try:
            records.append(json.loads(stores.record_path(image_id).read_text()))
        except FileNotFoundError:
            missing.append(image_id)
    if missing:
        raise RuntimeError(
            f"{len(missing)} kept images have no pair yet in {stores.lq.root.parent} (first ids: {missing[:5]}): "
            "finish every share of python -m fluxir.fluxgen pairs, or rerun the Kedro node "
            "(it makes every missing pair)"
        )
    hq_root, lq_root = portable_path(stores.hq.root), portable_path(stores.lq.root)
    names = [stores.hq.path_for(i) for i in ids]
    hq_size = np.array([r["hq_size"] for r in records], dtype=np.int32).reshape(-1, 2)  # (width, height)
    lq_size = np.array([r["lq_size"] for r in records], dtype=np.int32).reshape(-1, 2)
    return pd.DataFrame(
        {
            "image_id": kept["image_id"].to_numpy(),
            "source_path": kept["path"].to_numpy(),
            "source_sha256": kept["sha256"].to_numpy(),
            "hq_path": [f"{hq_root}/{n.parent.name}/{n.name}" for n in names],
            "lq_path": [f"{lq_root}/{n.parent.name}/{n.name}" for n in names],
            "hq_sha256": [r["hq_sha256"] for r in records],
            "lq_sha256": [r["lq_sha256"] for r in records],
            "degradation_seed": seed,
            "pairs_key": stores.key,
            "degradation": [json.dumps(r["degradation"], sort_keys=True) for r in records],
            "width": hq_size[:, 0],
            "height": hq_size[:, 1],
            "lq_width": lq_size[:, 0],
            "lq_height": lq_size[:, 1],
        }
    )


@dataclass(frozen=True)
class PairsStageConfig(Config):
    """Parameters ``degrade.*``: how the pairs stage runs and the degradation it applies (``config``)."""

    seed: int
    workers: int | str  # "auto": every core
    rank: int | None
    world_size: int | None
    config: DegradationConfig

    PREFIX = "degrade."
    RULES = (  # rank/world_size null: the launcher's share
        Rule("seed", "integer"),
        Rule("world_size", "positive_int", nullable=True),
        Rule("rank", "nonneg_int", nullable=True),
        Rule("workers", lambda w: w == "auto" or is_int(w, 1), must="'auto' or a positive integer"),
    )

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return {**params, "config": DegradationConfig.from_params(params["config"])}
        except ConfigError as err:  # every problem at once: the stage's own values too
            raise ConfigError(err.problems + cls.stage_problems(params)) from None

    def problems(self) -> list[str]:
        return self.stage_problems(vars(self))

    @classmethod
    def stage_problems(cls, values: Mapping[str, Any]) -> list[str]:
        found = field_problems(values, cls.RULES, cls.PREFIX)
        if not any(m.startswith(("degrade.rank ", "degrade.world_size ")) for m in found):
            try:
                ids_for_rank([], *rank_and_world(values, {}))  # a launcher's share: checked when it runs
            except ValueError as err:
                found.append(str(err))
        return found


def degrade_selection(
    selection: pd.DataFrame,
    pair_store: ImageStore,
    cfg: PairsStageConfig,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[PairStores, pd.DataFrame, list[int]]:
    """The ``fluxgen.degrade_pairs`` node's and ``python -m fluxir.fluxgen pairs``'s step: share ``rank`` of
    ``world_size`` of the kept images' missing pairs; returns (stores, kept rows, ids made now)."""
    kept = selection[selection["keep"]].sort_values("image_id")
    if kept.empty:
        raise ValueError(
            "no image passed the IQA selection: nothing to degrade (check select.percentile and the scores)"
        )
    stores = PairStores(pair_store, pairs_key(repr(cfg.config), cfg.seed, kept["config_key"].astype(str)))
    mine = set(ids_for_rank(kept["image_id"].astype(int), rank, world_size))
    jobs = [(int(i), p) for i, p in zip(kept["image_id"], kept["path"]) if int(i) in mine]
    made = make_pairs(jobs, stores, cfg.config, cfg.seed, resolve_workers(cfg.workers), progress)
    return stores, kept, made
