"""FluxGen step 4 at scale: HQ/LQ pairs of the kept images on every core of several machines, resumable.

One pair (``fluxir.fluxgen.degrade.degrade_pair``) takes about half a second on one core at 1024x768,
so 350,000 pairs are ~46 core-hours: this module spreads them out.

- **Cores**: ``degrade.workers`` processes (``auto``: every core this process may use), each with OpenCV
  and torch single-threaded so that N workers do not start N x cores threads. Workers come from a
  ``forkserver`` (a clean process with the degradation code preloaded), never forked from a process
  whose OpenMP pools are already running.
- **Machines**: ``python -m fluxir.fluxgen pairs`` on each machine of shared storage takes share ``rank`` of
  ``world_size``, the ids with ``image_id % world_size == rank`` (the sharding of generation). The share
  comes from the launcher (``launcher_rank_and_world``: torchrun/accelerate ``RANK``/``WORLD_SIZE``, ``srun``'s
  ``SLURM_PROCID``/``SLURM_NTASKS``, a SLURM job array's task index and count, or both), or from
  ``degrade.rank`` / ``degrade.world_size`` set by hand. Then one ``kedro run`` writes the manifest of all
  pairs (the Kedro node itself always degrades every missing pair, whatever the launcher says).
- **Deterministic**: a pair depends only on (image, id, seed) (see degrade.py), never on the worker,
  the number of workers or the order, so 1 or 64 workers give byte-identical files.
- **Resumable, kill-safe**: HQ and LQ are written atomically with their sha256 recorded, then the
  pair's ``<lq>.json`` (the random choices and both hashes), last: its presence marks the pair done.
  A pair without it is made again, with the same bytes. The manifest lists only pairs with a record,
  reads no image, and holds one small row per pair.
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

from fluxir.fluxgen.degrade import degrade_pair
from fluxir.fluxgen.degrade_config import DegradationConfig
from fluxir.io.atomic import write_json_atomic
from fluxir.io.images import read_image
from fluxir.io.provenance import (
    DISCLOSURE_KEY,
    GENERATED_SOFTWARE,
    PAIR_DISCLOSURE,
    SOFTWARE_KEY,
    fluxir_version,
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
    """Folder of one degradation setting: hash of the config, the seed and the generation configs."""
    return hash_json([config_repr, seed, sorted(set(config_keys))])


def resolve_workers(workers: int | str) -> int:
    """``auto``: the cores this process may run on; otherwise a positive integer."""
    if workers == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not is_int(workers, 1):
        raise ValueError(f"degrade.workers must be 'auto' or a positive integer, got {workers!r}")
    return workers


def ids_for_rank(image_ids: Iterable[int], rank: int, world_size: int) -> list[int]:
    """The ids machine ``rank`` of ``world_size`` degrades: ``image_id % world_size == rank``."""
    check_fields({"world_size": world_size}, [Rule("world_size", "positive_int")], "degrade.")
    if not is_int(rank, 0) or rank >= world_size:
        raise ValueError(
            f"degrade.rank must be an integer in [0, {world_size - 1}] (world_size {world_size}), got {rank!r}"
        )
    return [i for i in image_ids if i % world_size == rank]


def launcher_rank_and_world(environ: Mapping[str, str]) -> tuple[int, int]:
    """(rank, world size) of this process from its launcher's environment; (0, 1) without one.

    ``RANK``/``WORLD_SIZE`` (torchrun, accelerate) win. Under SLURM a job array of A tasks, each running
    T tasks with ``srun``, gives A x T shares: rank = array index x T + ``SLURM_PROCID``. The array index
    counts from ``SLURM_ARRAY_TASK_MIN`` (``--array=1-8`` works); arrays with a step are refused.
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
    """``degrade.rank``/``degrade.world_size`` when set (both, by hand), else the launcher's share."""
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
    """Where the files of pair ``i`` live: ``<root>/<key>/hq``, ``<root>/<key>/lq`` and ``<lq path>.json``."""

    def __init__(self, pair_store: ImageStore, key: str) -> None:
        self.key = key
        self.hq, self.lq = pair_store.sub(key).sub("hq"), pair_store.sub(key).sub("lq")

    def record_path(self, image_id: int) -> Path:
        return self.lq.path_for(image_id).with_suffix(".json")

    def is_done(self, image_id: int) -> bool:
        return self.record_path(image_id).is_file()


def _start_worker(owner_pid: int) -> None:
    """Pool initializer: die with the process that owns the pool (not only the forkserver), and one OpenCV and
    one torch thread per worker (N workers = N busy cores)."""
    die_with_parent(owner_pid)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def pair_provenance(source: str | os.PathLike, key: str, seed: int, side: str) -> Any:
    """The text chunks of one side of a pair: the generated source's provenance (model, revision, seed, config
    hash, the AI disclosure) with the pair's own disclosure, side, degradation seed and pairs key."""
    return png_text(
        {
            SOFTWARE_KEY: GENERATED_SOFTWARE,  # a FluxGen source written before provenance existed has none
            **read_provenance(source),
            DISCLOSURE_KEY: PAIR_DISCLOSURE,
            "Fluxir-Version": fluxir_version(),
            "Pair-Side": side,
            "Degradation-Seed": seed,
            "Pairs-Key": key,
        }
    )


def make_pair(job: tuple[int, str], stores: PairStores, config: Any, seed: int) -> int:
    """Degrade source ``job = (image_id, path)`` into its HQ/LQ files and record; returns the id."""
    image_id, source = job
    hq, lq, info = degrade_pair(read_image(source), image_id, seed, config)
    hq_rec = stores.hq.write_recorded(image_id, hq, pnginfo=pair_provenance(source, stores.key, seed, "hq"))
    lq_rec = stores.lq.write_recorded(image_id, lq, pnginfo=pair_provenance(source, stores.key, seed, "lq"))
    record = {
        "hq_sha256": hq_rec.sha256,
        "lq_sha256": lq_rec.sha256,
        "degradation": info,
        "hq_size": [hq.shape[1], hq.shape[0]],
        "lq_size": [lq.shape[1], lq.shape[0]],
    }  # (width, height)
    # last: the pair counts as done only once both images are in place
    write_json_atomic(stores.record_path(image_id), record, sort_keys=True, default=str)
    return image_id


def make_pairs(
    jobs: list[tuple[int, str]],
    stores: PairStores,
    config: Any,
    seed: int,
    workers: int = 1,
    progress: bool = True,
) -> list[int]:
    """Make the pairs of ``jobs`` (``(image_id, source path)``) that are not done yet; returns their ids."""
    todo = [job for job in jobs if not stores.is_done(job[0])]
    logger.info(
        "degrade: %d of %d pairs to make with %d worker(s) into %s",
        len(todo),
        len(jobs),
        workers,
        stores.lq.root.parent,
    )
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
            context.set_forkserver_preload(["fluxir.fluxgen.degrade", "fluxir.fluxgen.manifest"])
            with context.Pool(workers, initializer=_start_worker, initargs=(os.getpid(),)) as pool:
                # chunks of a few pairs: little IPC, and a killed worker loses at most a few seconds of work
                for image_id in pool.imap_unordered(work, todo, chunksize=4):
                    made.append(image_id)
                    bar.update(1)
    return sorted(made)


def pairs_manifest(kept: pd.DataFrame, stores: PairStores, seed: int) -> pd.DataFrame:
    """One row per kept image from the pair records (no image is read); every pair must be done.

    ``width``/``height`` (HQ) and ``lq_width``/``lq_height`` come from the records too, so training
    never opens an image to learn its size.
    """
    hq_root, lq_root = portable_path(stores.hq.root), portable_path(stores.lq.root)
    rows: dict[str, list[Any]] = {
        k: [] for k in ("hq_path", "lq_path", "hq_sha256", "lq_sha256", "degradation", "hq_size", "lq_size")
    }
    missing = []
    for image_id in kept["image_id"]:
        try:
            record = json.loads(stores.record_path(int(image_id)).read_text())
        except FileNotFoundError:
            missing.append(int(image_id))
            continue
        name = stores.hq.path_for(int(image_id))
        rows["hq_path"].append(f"{hq_root}/{name.parent.name}/{name.name}")
        rows["lq_path"].append(f"{lq_root}/{name.parent.name}/{name.name}")
        rows["hq_sha256"].append(record["hq_sha256"])
        rows["lq_sha256"].append(record["lq_sha256"])
        rows["degradation"].append(json.dumps(record["degradation"], sort_keys=True))
        for kind in ("hq", "lq"):
            rows[f"{kind}_size"].append(record[f"{kind}_size"])
    if missing:
        raise RuntimeError(
            f"{len(missing)} kept images have no pair yet in {stores.lq.root.parent} (first ids: {missing[:5]}): "
            "finish every share of python -m fluxir.fluxgen pairs, or rerun the Kedro node "
            "(it makes every missing pair)"
        )
    return pd.DataFrame(
        {
            "image_id": kept["image_id"].to_numpy(),
            "source_path": kept["path"].to_numpy(),
            "source_sha256": kept["sha256"].to_numpy(),
            "hq_path": rows["hq_path"],
            "lq_path": rows["lq_path"],
            "hq_sha256": rows["hq_sha256"],
            "lq_sha256": rows["lq_sha256"],
            "degradation_seed": seed,
            "pairs_key": stores.key,
            "degradation": rows["degradation"],
            "width": np.array([w for w, _ in rows["hq_size"]], dtype=np.int32),
            "height": np.array([h for _, h in rows["hq_size"]], dtype=np.int32),
            "lq_width": np.array([w for w, _ in rows["lq_size"]], dtype=np.int32),
            "lq_height": np.array([h for _, h in rows["lq_size"]], dtype=np.int32),
        }
    )


@dataclass(frozen=True)
class PairsStageConfig(Config):
    """Parameters ``degrade.*``, how the pairs stage runs (seed, workers, share) and the degradation it applies
    (``config``): their values (defaults included) live in conf/base/parameters_fluxgen.yml only."""

    seed: int
    workers: int | str  # "auto": every core
    rank: int | None
    world_size: int | None
    config: DegradationConfig

    PREFIX = "degrade."
    # rank/world_size null: the launcher's share (``share``)
    RULES = (
        Rule("seed", "integer"),
        Rule("world_size", "positive_int", nullable=True),
        Rule("rank", "nonneg_int", nullable=True),
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
        """The problems of the stage's own values (``config`` checks itself)."""
        found = field_problems(values, cls.RULES, cls.PREFIX)
        checks = [lambda: resolve_workers(values["workers"])]
        if not any(m.startswith(("degrade.rank ", "degrade.world_size ")) for m in found):
            checks.append(lambda: ids_for_rank([], *rank_and_world(values, {})))  # a launcher's: checked when it runs
        for check in checks:
            try:
                check()
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
    """FluxGen's degradation step, as the ``fluxgen.degrade_pairs`` node and ``python -m fluxir.fluxgen pairs`` run it:
    share ``rank`` of ``world_size`` of the missing pairs of the kept images; returns (stores, kept rows, ids made
    now)."""
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
