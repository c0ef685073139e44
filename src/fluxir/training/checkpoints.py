"""Training checkpoints: adapter, optimizer, scheduler, RNG, step and history, written by rank 0 through a
temporary folder renamed into place, so a killed run never leaves a half checkpoint under a final name."""

from __future__ import annotations

import json
import logging
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fluxir.io.atomic import atomic_directory, manifest_problem, write_manifest
from fluxir.models.adapter import FluxIRAdapter, load_adapter, save_adapter

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the checkpoints under their final names, oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit():
            found.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
    return sorted(found)


def save_checkpoint(
    run_dir: Path,
    step: int,
    adapter: FluxIRAdapter,
    optimizer: Any,
    scheduler: Any,
    history: list[dict[str, Any]],
    extra: dict[str, Any],
    keep: int,
) -> Path:
    final = run_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    # The same step written again: the complete old one stays until the new one is in place.
    with atomic_directory(final) as tmp_name:
        tmp = Path(tmp_name)
        save_adapter(adapter, tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra, "history": history}, indent=1))
        write_manifest(tmp)  # last: sizes and hashes of everything above
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def newest_complete_checkpoint(run_dir: Path, move_damaged: bool) -> tuple[int, Path] | None:
    """The newest checkpoint of ``run_dir`` whose manifest matches its files; None when there is none.

    A newer one that does not match is skipped with a warning and, with ``move_damaged`` (rank 0), moved aside
    to ``.damaged-step_<n>-<random>``: neither counted by ``keep_checkpoints`` nor lost.
    """
    damaged = []
    for step, path in reversed(list_checkpoints(run_dir)):
        problem = manifest_problem(path)
        if problem is None:
            for bad in damaged if move_damaged else []:
                bad.rename(bad.with_name(f".damaged-{bad.name}-{uuid.uuid4().hex[:6]}"))
            return step, path
        logger.warning("skipping damaged checkpoint %s: %s; resuming from an older one", path, problem)
        damaged.append(path)
    if damaged:
        raise RuntimeError(
            f"no complete checkpoint in {run_dir}: {', '.join(p.name for p in damaged)} do not match their manifest "
            "(see the warnings above). Start over with --params=train.resume=false (deletes them) "
            f"or move {run_dir} away"
        )
    return None


def load_checkpoint(path: Path, adapter: FluxIRAdapter, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint into the given objects; returns its trainer state (step, history, ...)."""
    saved = load_adapter(path / "adapter", device=next(adapter.parameters()).device, dtype=torch.float32)
    adapter.load_state_dict(saved.state_dict())
    device = next(adapter.parameters()).device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())
