"""Preflight of the machine: accelerator memory against the budgets, processes per stage, installed packages."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from fluxir.preflight import BUDGET_GB, Finding, lookup, train_memory_table


def train_memory_budget_gb(train: Mapping[str, Any], size: str = "1024x768") -> tuple[str, float]:
    """(what, GB per GPU) of the training settings at the largest bucket, from the memory model's table.

    The L_P row (whole, crop_512, none) bounds ``train.pixel_loss_crop`` from above; a batch beyond the table adds
    the batch-1 step's activations per sample."""
    table = train_memory_table()
    batch, crop = int(train.get("batch_size") or 1), train.get("pixel_loss_crop")
    checkpointing = bool(train.get("gradient_checkpointing", True))
    variant = (
        "none"
        if float(train.get("pixel_loss_weight", 1.0)) == 0
        else "crop_512"
        if crop is not None and int(crop) <= 512
        else "whole"
    )
    rows = {
        r["batch_size"]: r
        for r in table["rows"]
        if r["size"] == size and r["pixel_loss"] == variant and r["gradient_checkpointing"] == checkpointing
    }
    gib = (
        rows[batch]["total"]
        if batch in rows
        else (table["static_total_gib"] + table["reserve_gib"] + batch * rows[1]["step_peak"])
    )
    what = (
        f"training ({size}, batch {batch}, L_P {variant}, checkpointing {'on' if checkpointing else 'off'}: "
        f"{gib:.1f} GiB, benchmarks/train_memory.py)"
    )
    return what, round(gib * 2**30 / 1e9, 1)


def _budgets(params: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    return {
        "fluxgen.device": ("generation", BUDGET_GB["generation"]),
        "train.device": train_memory_budget_gb(params.get("train") or {}),
        "restore.device": ("restoration", BUDGET_GB["restoration"]),
        "evaluate.restore.device": ("restoration", BUDGET_GB["restoration"]),
    }


def check_accelerator(params: Mapping[str, Any]) -> list[Finding]:
    import torch

    gpus = (
        [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    findings = []
    for key, (what, budget) in _budgets(params).items():
        device = str(lookup(params, *key.split("."), default="auto"))
        if device == "cpu":
            findings.append(Finding("OK", "accelerator", key, "cpu (tiny or debugging runs only)"))
        elif not gpus:
            detail = f"{device}: no CUDA GPU here; {what} needs ~{budget} GB per GPU (docs/full_scale.md)"
            findings.append(Finding("FAIL" if device.startswith("cuda") else "WARN", "accelerator", key, detail))
        else:
            small = [f"{g.name} {g.total_memory / 1e9:.0f} GB" for g in gpus if g.total_memory < 0.95 * budget * 1e9]
            have = (
                f"too small: {small}" if small else f"{len(gpus)} x {gpus[0].name} {gpus[0].total_memory / 1e9:.0f} GB"
            )
            detail = f"{what} needs ~{budget} GB per GPU; {have}"
            findings.append(Finding("FAIL" if small else "OK", "accelerator", key, detail))
    return findings


STAGE_PROCESSES = {
    "fluxgen.num_processes": ("generate and score", "fluxgen.device"),
    "train.num_processes": ("train", "train.device"),
    "evaluate.num_processes": ("evaluate (restoration)", "evaluate.restore.device"),
    "restore.num_processes": ("restore", "restore.device"),
}


def check_processes(params: Mapping[str, Any], gpus: int | None = None) -> list[Finding]:
    """How many processes each stage will run (``<stage>.num_processes``, ``fluxir.runtime.launch``), on which GPUs."""
    from fluxir.runtime.launch import resolve_num_processes, visible_gpus

    gpus = visible_gpus() if gpus is None else gpus
    findings = []
    for key, (stage, device_key) in STAGE_PROCESSES.items():
        setting = lookup(params, *key.split("."), default="auto")
        try:
            count = resolve_num_processes(setting, key, gpus)
        except ValueError as err:
            findings.append(Finding("FAIL", "processes", key, str(err)))
            continue
        on_cpu = str(lookup(params, *device_key.split("."), default="auto")) == "cpu" or not gpus
        where = "processes" if count > 1 else "process"
        if on_cpu:
            findings.append(Finding("OK", "processes", key, f"{stage}: {count} CPU {where} ({setting}), no GPU"))
        elif count > gpus:
            detail = f"{stage}: {count} {where} but {gpus} GPU(s) visible; set {key}=auto or at most {gpus}"
            findings.append(Finding("FAIL", "processes", key, detail))
        else:
            detail = (
                f"{stage}: {count} {where} ({setting}) on GPU(s) {', '.join(map(str, range(count)))} of {gpus} visible"
            )
            findings.append(Finding("OK", "processes", key, detail))
    return findings


def check_versions(project: Path) -> list[Finding]:
    """Installed versions against pyproject.toml [project].dependencies."""
    from packaging.requirements import Requirement

    pyproject = project / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    findings = []
    for line in deps:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            findings.append(Finding("FAIL", "package", req.name, f"not installed; pyproject.toml wants {line!r}"))
            continue
        fits = not req.specifier or req.specifier.contains(installed, prereleases=True)
        detail = installed + ("" if fits else f" does not satisfy {req.specifier} (pyproject.toml)")
        findings.append(Finding("OK" if fits else "FAIL", "package", req.name, detail))
    return findings
