"""Preflight of this machine besides the models: public restorers' weights, IQA weights, benchmarks, free disk,
accelerator memory against the budgets, processes per stage, installed packages."""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from fluxir.preflight import BUDGET_GB, Finding, lookup, train_memory_table
from fluxir.preflight.models import key_finding, meta_model, model_folder

# Estimated PNG size of generated/HQ/LQ images: raw RGB is 3 B/px; photographic PNGs keep ~50-70% of it.
PNG_BYTES_PER_PIXEL = 2.0
# What downloads the missing files into the places this check looks (docs/full_scale.md section 1).
FETCH_IQA = "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only iqa"
FETCH_BENCHMARKS = "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only benchmarks"
FETCH_BASELINES = "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only baselines"


def check_baselines(params: Mapping[str, Any]) -> list[Finding]:
    """The public restorers of ``evaluate.methods`` and ``restore.method``: weights present and fitting."""
    from fluxir.restoration.methods import METHODS, PUBLIC_METHODS

    wanted = [*(lookup(params, "evaluate", "methods", default=[]) or []), lookup(params, "restore", "method")]
    findings = []
    for method in [m for m in PUBLIC_METHODS if m in wanted]:
        item = f"baselines.{method}"
        try:
            cfg = METHODS[method].settings(lookup(params, "baselines", default={}))
            detail = WEIGHT_CHECKS[method](cfg)
        except Exception as err:  # noqa: BLE001  (one line per broken method, never a crash of the report)
            advice = "" if "fluxir.fetch" in str(err) else f" ({FETCH_BASELINES})"
            findings.append(Finding("FAIL", "baseline", item, f"{err}{advice}"))
            continue
        findings.append(Finding("OK", "baseline", item, detail))
    return findings


def _check_realesrgan(cfg: Any) -> str:
    from fluxir.restoration.realesrgan import load_rrdbnet

    net = load_rrdbnet(cfg)  # 67 MB for RealESRGAN_x4plus: loaded for real, every key checked
    return f"RRDBNet ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters) loads from {cfg.weights}"


def _check_controlnet(cfg: Any) -> str:
    from fluxir.restoration.controlnet import config_mismatch

    folder = model_folder(cfg.controlnet)
    if folder is None or not (folder / "config.json").is_file():
        raise ValueError(
            f"{cfg.controlnet!r} is neither a FluxControlNetModel folder nor in the Hugging Face cache; "
            f"download it: {FETCH_BASELINES}"
        )
    model = meta_model("diffusers", "FluxControlNetModel", folder)
    found = key_finding("controlnet", folder, model, "diffusers")
    if found.status != "OK":
        raise ValueError(found.detail)
    base = model_folder(cfg.model)
    if base is None or not (base / "transformer" / "config.json").is_file():
        raise ValueError(
            f"baselines.flux_controlnet.model {cfg.model!r} has no transformer/config.json here: "
            "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only flux"
        )
    if wrong := config_mismatch(model.config, json.loads((base / "transformer" / "config.json").read_text())):
        raise ValueError(f"{folder} does not fit the Flux transformer of {cfg.model!r}: {', '.join(wrong)}")
    return f"{found.detail}; fits {cfg.model}"


WEIGHT_CHECKS = {"realesrgan": _check_realesrgan, "flux_controlnet": _check_controlnet}


def check_iqa(params: Mapping[str, Any]) -> list[Finding]:
    """Every weight file of iqa.metrics and evaluate.metrics present, then each metric built on the CPU."""
    from fluxir import iqa
    from fluxir.fetch.manifest import iqa_specs
    from fluxir.iqa import weights as iqa_weights

    settings = params.get("iqa") or {}
    try:
        iqa.configure_weights(settings.get("weights_dir"), settings.get("trust_weight_files", False))
        parsed = iqa_specs(params)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        return [Finding("FAIL", "iqa", "settings", str(err))]
    findings = []
    for spec in parsed:
        problems = iqa_weights.file_problems([spec])
        findings += [Finding("FAIL", "iqa", spec.name, f"{problem}; or `{FETCH_IQA}`") for problem in problems]
        if problems:
            continue
        files = ", ".join(p.name for p in iqa.required_weight_files(spec)) or "no weight file"
        try:
            iqa.create_metrics([spec], "cpu")
        except Exception as err:  # noqa: BLE001  (reported, not raised: the rest of the report still matters)
            findings.append(Finding("FAIL", "iqa", spec.name, f"{type(err).__name__}: {err}"))
            continue
        known = iqa_weights.plan_files(spec)[1]
        detail = f"{files}; builds on the CPU" + ("" if known else "; its files are not known here")
        findings.append(Finding("OK" if known else "WARN", "iqa", spec.name, detail))
    return findings


def _pair_count(spec: Any) -> int:
    from fluxir.evaluation.testsets import list_images, pair_key

    if spec.kind == "synthetic":
        return spec.num_images  # crops cut from the HQ images
    lq = {pair_key(p.stem, spec.strip_suffix) for p in list_images(spec.lq_dir)}
    if spec.kind == "lq_only":
        return len(lq)
    return len(lq & {pair_key(p.stem, spec.strip_suffix) for p in list_images(spec.hq_dir)})


def check_benchmarks(params: Mapping[str, Any], catalog: Mapping[str, Any]) -> list[Finding]:
    """Each evaluate.benchmarks entry: the folders of its catalog entry ``<key>_benchmark`` hold images; its pairs."""
    from fluxir.evaluation.testsets import FOLDERS_ENTRY, BenchmarkSpec, list_images, sources_too_small

    evaluate = params.get("evaluate") or {}
    # The tiny environment's demo folders are written by `make demo`; a real run's benchmarks are downloaded.
    fix = "`python scripts/demo_data.py --env tiny` (make demo)" if evaluate.get("tiny_models") else FETCH_BENCHMARKS
    findings = []
    for key, settings in (evaluate.get("benchmarks") or {}).items():
        entry = FOLDERS_ENTRY.format(key=key)
        folders = {side: (catalog.get(entry) or {}).get(f"{side}_path") for side in ("hq", "lq")}
        try:
            spec = BenchmarkSpec.from_params(settings, folders, entry)
        except (ValueError, TypeError) as err:
            findings.append(Finding("FAIL", "benchmark", key, str(err)))
            continue
        if empty := [str(Path(d).resolve()) for d in spec.source_dirs if not Path(d).is_dir() or not list_images(d)]:
            detail = (
                f"folder(s) {empty} of catalog entry {entry} missing or without images: {fix} or see docs/evaluation.md"
            )
            findings.append(Finding("FAIL", "benchmark", key, detail))
            continue
        count = _pair_count(spec)
        what = f"{count} {'images' if spec.kind == 'lq_only' else 'pairs'} ({spec.kind})"
        small = {folder: (total, names) for folder, (total, names) in sources_too_small(spec).items() if names}
        if not small:
            findings.append(Finding("OK" if count else "FAIL", "benchmark", key, what))
            continue
        # images smaller than the crops are skipped by the run: a WARN, a FAIL when none is left
        sizes = {"synthetic": ("hq_size",), "lq_only": ("lq_size",), "paired": ("hq_size", "lq_size")}[spec.kind]
        crops = " / ".join(f"evaluate.benchmarks.{key}.{name} {getattr(spec, name)}" for name in sizes)
        parts = [f"{len(names)} of {total} in {folder} (e.g. {names[:3]})" for folder, (total, names) in small.items()]
        none_left = any(len(names) == total for total, names in small.values())
        detail = f"{what}; images smaller than the crops ({crops}) are skipped by the run: {'; '.join(parts)}"
        findings.append(Finding("FAIL" if none_left else "WARN", "benchmark", key, detail))
    return findings


def check_disk(params: Mapping[str, Any], project: Path) -> list[Finding]:
    """Disk for fluxgen.num_images generated PNGs plus their HQ/LQ pairs (LQ = HQ / 4 per side)."""
    fluxgen = params.get("fluxgen") or {}
    crops = lookup(params, "degrade", "config", "crop_sizes") or [[fluxgen["width"], fluxgen["height"]]]
    crop_px = sum(w * h for w, h in crops) / len(crops)
    num = fluxgen.get("num_images", 0)
    need = int(int(num) * (fluxgen["width"] * fluxgen["height"] + crop_px * (1 + 1 / 16)) * PNG_BYTES_PER_PIXEL)
    data = project / "data"
    free = shutil.disk_usage(data if data.exists() else project).free
    detail = (
        f"fluxgen.num_images={num} needs ~{need / 1e9:.2f} GB ({PNG_BYTES_PER_PIXEL} B/px PNG), "
        f"{free / 1e9:.1f} GB free at {data}"
    )
    status = "FAIL" if need > free else "WARN" if need > 0.8 * free else "OK"
    return [Finding(status, "disk", "data", detail)]


def train_memory_budget_gb(train: Mapping[str, Any], size: str = "1024x768") -> tuple[str, float]:
    """(what, GB per GPU) of the training settings at the largest bucket, from the memory model's table: the L_P
    row (whole, crop_512, none) bounds ``train.pixel_loss_crop`` from above; a larger batch adds step activations."""
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


def check_accelerator(params: Mapping[str, Any]) -> list[Finding]:
    import torch

    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    budgets = {
        "fluxgen.device": ("generation", BUDGET_GB["generation"]),
        "train.device": train_memory_budget_gb(params.get("train") or {}),
        "restore.device": ("restoration", BUDGET_GB["restoration"]),
        "evaluate.restore.device": ("restoration", BUDGET_GB["restoration"]),
    }
    findings = []
    for key, (what, budget) in budgets.items():
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
