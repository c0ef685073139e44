"""Preflight check before a long run: ``python -m fluxir.check --env base [--params k=v,...]``.

One table of OK / WARN / FAIL lines for everything a real run needs, checked without GPU time: each
model folder's components (configs built on the meta device, weight-file keys read from safetensors
headers and compared with the architecture; no tensor loaded), the trained adapter against the Flux it
will drive, every IQA weight file (each metric then built on the CPU by the run's own loaders, which
compare checkpoint keys), the benchmark folders and their pair counts, free
disk for ``fluxgen.num_images``, accelerator memory against the budget of docs/full_scale.md, the
process count each stage will run (``<stage>.num_processes``) and the GPUs it takes, and the
installed packages against pyproject.toml. Every problem is listed; the exit status is 1 if any FAILs.

Model parameters may be hub ids: they are checked in the Hugging Face cache, where an offline run finds them.
"""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fluxir.config import cli_parser, load_catalog, load_params

# Accelerator memory a real run needs per GPU (GB of the card's label), from docs/full_scale.md "Memory";
# training's comes from the memory model's table (``train_memory_budget_gb``).
BUDGET_GB = {"generation": 40, "restoration": 32}
TRAIN_MEMORY = "train_memory.json"  # in fluxir/configs: written by benchmarks/train_memory.py --write
# Estimated PNG size of generated/HQ/LQ images: raw RGB is 3 B/px; photographic PNGs keep ~50-70% of it.
PNG_BYTES_PER_PIXEL = 2.0
# What downloads the missing files into the places this check looks (docs/full_scale.md section 1).
FETCH_IQA = "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only iqa"
FETCH_BENCHMARKS = "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only benchmarks"
FETCH_BASELINES = "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only baselines"
_MODEL_ROLES = {
    "fluxgen.model": ("fluxgen", "model"),
    "train.model": ("train", "model"),
    "restore.model": ("restore", "model"),
    "evaluate.restore.model": ("evaluate", "restore", "model"),
}


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    status: str  # "OK", "WARN" or "FAIL"
    area: str
    item: str
    detail: str


def _get(params: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    node: Any = params
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


# ----------------------------------------------------------------------------- model folders


def safetensors_keys(files: Iterable[Path]) -> set[str]:
    """Tensor names stored in safetensors files, read from their headers (no tensor is loaded)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys.update(handle.keys())
        except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
            raise ValueError(f"{file} is not a readable safetensors file ({err}); download it again") from err
    return keys


def _weight_files(folder: Path) -> list[Path]:
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        shards = set(json.loads(index[0].read_text())["weight_map"].values())
        missing = [s for s in sorted(shards) if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: shard(s) {missing} named in {index[0].name} are missing")
        return [folder / s for s in sorted(shards)]
    return sorted(folder.glob("*.safetensors"))


def _meta_model(library: str, class_name: str, folder: Path) -> Any:
    """The component's module built from its config on the meta device, or None for non-modules."""
    import importlib

    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ValueError(f"{folder}: model_index.json names {library}.{class_name}, which {library} does not have")
    if library == "diffusers" and hasattr(cls, "from_config") and hasattr(cls, "state_dict"):
        with init_empty_weights():
            return cls.from_config(cls.load_config(folder))
    if library == "transformers" and hasattr(cls, "config_class") and hasattr(cls, "state_dict"):
        with init_empty_weights():
            return cls(cls.config_class.from_pretrained(folder))
    saved = folder / "tokenizer_config.json"
    saved_class = json.loads(saved.read_text()).get("tokenizer_class") if saved.is_file() else None
    if saved_class and saved_class.removesuffix("Fast") != class_name.removesuffix("Fast"):
        raise ValueError(
            f"{saved} holds a {saved_class}, but model_index.json declares {class_name}: "
            f"replace it with the pipeline's own {folder.name} folder"
        )
    cls.from_pretrained(folder)  # tokenizers and schedulers: small files, loaded for real
    return None


def _key_finding(name: str, folder: Path, model: Any, library: str) -> Finding:
    files = _weight_files(folder)
    if not files:
        bins = sorted(p.name for p in folder.glob("*.bin"))
        if bins:
            return Finding("WARN", "model", name, f"{folder}: {bins} are not safetensors; keys not checked")
        return Finding("FAIL", "model", name, f"{folder}: no weight file (*.safetensors)")
    stored, wanted = safetensors_keys(files), set(model.state_dict())
    if hasattr(model, "get_expanded_tied_weights_keys"):  # transformers: tied copies are not stored (T5's embed_tokens)
        wanted -= set(model.get_expanded_tied_weights_keys(all_submodels=True))
    missing, unexpected = sorted(wanted - stored), sorted(stored - wanted)
    if not missing and not unexpected:
        return Finding("OK", "model", name, f"{type(model).__name__}, {len(wanted)} tensors in {len(files)} file(s)")
    # transformers may rename legacy checkpoint keys at load time: a difference there is a warning only
    status = "FAIL" if library == "diffusers" else "WARN"
    return Finding(
        status,
        "model",
        name,
        f"{folder}: keys differ from {type(model).__name__}: missing {missing[:3]} "
        f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})",
    )


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a hub id in the Hugging Face cache (what an offline run would load), or None."""
    from huggingface_hub import snapshot_download

    if repo_id.count("/") != 1:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached, or not a valid id: both mean "not available offline")
        return None


def model_folder(source: Any) -> Path | None:
    """The folder a run loads for a model parameter: a local folder, or a hub id's cached snapshot (None: neither)."""
    folder = Path(str(source)).expanduser()
    return folder.resolve() if folder.is_dir() else _cached_snapshot(str(source))


def download_advice(source: Any) -> str:
    """How to get a model onto this machine (docs/full_scale.md section 1), for every parameter that names it."""
    roles = ", ".join(_MODEL_ROLES)
    return (
        f"runs are offline: download it once with a token of an account that accepted its licence "
        f"(`export HF_TOKEN=hf_...`, or `hf auth login`, older clients `huggingface-cli login`): "
        f"`HF_HUB_OFFLINE=0 python -m fluxir.fetch --only flux` (FLUX.1-dev, to the cache or the folder a parameter "
        f"names), or "
        f"`HF_HUB_OFFLINE=0 hf download {source}` (the hub cache is used offline afterwards), or "
        f"`HF_HUB_OFFLINE=0 hf download {source} --local-dir DIR` and set {roles} to DIR"
    )


def check_model_folder(role: str, source: Any, cache: dict[str, Any]) -> list[Finding]:
    """Every component of a diffusers pipeline folder present, built on meta, and its weight keys matching."""
    if not source:
        return [Finding("WARN", "model", role, "not set")]
    folder = model_folder(source)
    if folder is None:
        return [
            Finding(
                "FAIL",
                "model",
                role,
                f"{source!r} is neither a local folder nor in the Hugging Face cache; " + download_advice(source),
            )
        ]
    index = folder / "model_index.json"
    if not index.is_file():
        return [Finding("FAIL", "model", role, f"{folder} has no model_index.json (not a diffusers pipeline folder)")]
    findings = []
    for name, entry in json.loads(index.read_text()).items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        label, sub = f"{role}: {name}", folder / name
        if not sub.is_dir():
            findings.append(Finding("FAIL", "model", label, f"component folder {sub} is missing"))
            continue
        try:
            model = _meta_model(entry[0], entry[1], sub)
            findings.append(
                _key_finding(label, sub, model, entry[0])
                if model is not None
                else Finding("OK", "model", label, f"{entry[1]} loads")
            )
            if name == "transformer" and model is not None:
                cache[str(folder.resolve())] = model
        except Exception as err:  # noqa: BLE001  (one line per broken component, never a crash of the report)
            where = "" if str(sub) in str(err) else f"{sub}: {type(err).__name__}: "  # name the path once
            findings.append(Finding("FAIL", "model", label, f"{where}{err}"))
    return findings


def check_adapter(project: Path, env: str, flux_folder: Any, cache: Mapping[str, Any]) -> list[Finding]:
    """The catalog's ``fluxir_adapter`` (if trained already) fits the restore Flux transformer."""
    from fluxir.models.adapter import check_compatible

    catalog = load_catalog(env, project)
    if "fluxir_adapter" not in catalog or not catalog.exists("fluxir_adapter"):
        return [
            Finding(
                "WARN",
                "adapter",
                "fluxir_adapter",
                "no trained adapter yet (train first; without one, restore.method=flux_controlnet or realesrgan)",
            )
        ]
    try:
        adapter = catalog.load("fluxir_adapter")
    except Exception as err:  # noqa: BLE001  (reported, not raised: the rest of the report still matters)
        return [Finding("FAIL", "adapter", "fluxir_adapter", f"{type(err).__name__}: {err}")]
    folder = model_folder(flux_folder) if flux_folder else None
    flux = cache.get(str(folder)) if folder is not None else None
    if flux is None:
        return [Finding("WARN", "adapter", "fluxir_adapter", "loads; no restore Flux transformer to compare with")]
    try:
        check_compatible(adapter, flux)
    except ValueError as err:
        return [Finding("FAIL", "adapter", "fluxir_adapter", str(err))]
    return [Finding("OK", "adapter", "fluxir_adapter", f"fits {flux_folder}")]


# ----------------------------------------------------------------------------- IQA, benchmarks, disk


def check_baselines(params: Mapping[str, Any]) -> list[Finding]:
    """The public restorers a run will use (``evaluate.methods``, ``restore.method``): weights present and fitting."""
    from fluxir.restoration.methods import PUBLIC_METHODS, public_config

    wanted = [*(_get(params, "evaluate", "methods", default=[]) or []), _get(params, "restore", "method")]
    findings = []
    for method in [m for m in PUBLIC_METHODS if m in wanted]:
        item = f"baselines.{method}"
        try:
            cfg = public_config(method, _get(params, "baselines", default={}))
            detail = _check_realesrgan(cfg) if method == "realesrgan" else _check_controlnet(cfg)
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
    model = _meta_model("diffusers", "FluxControlNetModel", folder)
    found = _key_finding("controlnet", folder, model, "diffusers")
    if found.status != "OK":
        raise ValueError(found.detail)
    base = model_folder(cfg.model)
    if base is None or not (base / "transformer" / "config.json").is_file():
        raise ValueError(
            f"baselines.flux_controlnet.model {cfg.model!r} has no transformer/config.json here: "
            "HF_HUB_OFFLINE=0 python -m fluxir.fetch --only flux"
        )
    wrong = config_mismatch(model.config, json.loads((base / "transformer" / "config.json").read_text()))
    if wrong:
        raise ValueError(f"{folder} does not fit the Flux transformer of {cfg.model!r}: {', '.join(wrong)}")
    return f"{found.detail}; fits {cfg.model}"


def check_iqa(params: Mapping[str, Any]) -> list[Finding]:
    """Every weight file of iqa.metrics and evaluate.metrics present (and OpenAI's CLIP, unless trusted)."""
    from fluxir import iqa
    from fluxir.iqa import weights as iqa_weights

    settings = params.get("iqa") or {}
    try:
        iqa.configure_weights(settings.get("weights_dir"), settings.get("trust_weight_files", False))
        groups = _get(params, "evaluate", "metrics", default={}) or {}
        specs = [*(settings.get("metrics") or []), *(s for g in groups.values() for s in (g or {}).values())]
        parsed = []  # selection and evaluation may use the same name with other settings: keep both
        for spec in map(iqa.MetricSpec.parse, specs):
            parsed += [] if spec in parsed else [spec]
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        return [Finding("FAIL", "iqa", "settings", str(err))]
    findings = []
    for spec in parsed:
        problems = iqa_weights.file_problems([spec])
        findings += [Finding("FAIL", "iqa", spec.name, f"{problem}; or `{FETCH_IQA}`") for problem in problems]
        if not problems:
            findings.append(_build_metric(spec))
    return findings


def _build_metric(spec: Any) -> Finding:
    """Build the metric on the CPU from its files: the same loaders, key checks included, as a run."""
    from fluxir import iqa
    from fluxir.iqa import weights as iqa_weights

    files = ", ".join(p.name for p in iqa.required_weight_files(spec)) or "no weight file"
    try:
        iqa.create_metrics([spec], "cpu")
    except Exception as err:  # noqa: BLE001  (reported, not raised: the rest of the report still matters)
        return Finding("FAIL", "iqa", spec.name, f"{type(err).__name__}: {err}")
    known = iqa_weights.plan_files(spec)[1]
    return Finding(
        "OK" if known else "WARN",
        "iqa",
        spec.name,
        f"{files}; builds on the CPU" + ("" if known else "; its files are not known here"),
    )


def _pair_count(spec: Any) -> int:
    from fluxir.evaluation.testsets import list_images, pair_key

    if spec.kind == "synthetic":
        return spec.num_images  # crops cut from the HQ images
    lq = {pair_key(p.stem, spec.strip_suffix) for p in list_images(spec.lq_dir)}
    if spec.kind == "lq_only":
        return len(lq)
    return len(lq & {pair_key(p.stem, spec.strip_suffix) for p in list_images(spec.hq_dir)})


def check_benchmarks(params: Mapping[str, Any]) -> list[Finding]:
    """Each evaluate.benchmarks entry: folders present with images, and how many pairs it gives."""
    from fluxir.evaluation.testsets import BenchmarkSpec, list_images

    evaluate = params.get("evaluate") or {}
    demo = bool(evaluate.get("demo_benchmarks"))
    findings = []
    for key, entry in (evaluate.get("benchmarks") or {}).items():
        try:
            spec = BenchmarkSpec.from_params(entry)
        except (ValueError, TypeError) as err:
            findings.append(Finding("FAIL", "benchmark", key, str(err)))
            continue
        empty = [str(Path(d).resolve()) for d in spec.source_dirs if not Path(d).is_dir() or not list_images(d)]
        if empty and demo:
            findings.append(
                Finding("WARN", "benchmark", key, f"{empty} empty: demo images will be written (demo_benchmarks)")
            )
        elif empty:
            findings.append(
                Finding(
                    "FAIL",
                    "benchmark",
                    key,
                    f"folder(s) {empty} missing or without images: `{FETCH_BENCHMARKS}` or see docs/evaluation.md",
                )
            )
        else:
            findings.append(_benchmark_finding(key, spec))
    return findings


def _benchmark_finding(key: str, spec: Any) -> Finding:
    """Pair count, and the images smaller than the crops the run takes (skipped by the run; none left: FAIL)."""
    from fluxir.evaluation.testsets import sources_too_small

    count = _pair_count(spec)
    what = f"{count} {'images' if spec.kind == 'lq_only' else 'pairs'} ({spec.kind})"
    small = {folder: (total, names) for folder, (total, names) in sources_too_small(spec).items() if names}
    if small:
        sizes = {"synthetic": ("hq_size",), "lq_only": ("lq_size",), "paired": ("hq_size", "lq_size")}[spec.kind]
        crops = " / ".join(f"evaluate.benchmarks.{key}.{name} {getattr(spec, name)}" for name in sizes)
        parts = [f"{len(names)} of {total} in {folder} (e.g. {names[:3]})" for folder, (total, names) in small.items()]
        none_left = any(len(names) == total for total, names in small.values())
        return Finding(
            "FAIL" if none_left else "WARN",
            "benchmark",
            key,
            f"{what}; images smaller than the crops ({crops}) are skipped by the run: {'; '.join(parts)}",
        )
    return Finding("OK" if count else "FAIL", "benchmark", key, what)


def estimate_fluxgen_bytes(params: Mapping[str, Any]) -> int:
    """Disk for fluxgen.num_images generated PNGs plus their HQ/LQ pairs (LQ = HQ / 4 per side)."""
    fluxgen = params.get("fluxgen") or {}
    crops = _get(params, "degrade", "config", "crop_sizes", default=None) or [
        [fluxgen.get("width", 1024), fluxgen.get("height", 768)]
    ]
    crop_px = sum(w * h for w, h in crops) / len(crops)
    per_image = fluxgen.get("width", 1024) * fluxgen.get("height", 768) + crop_px * (1 + 1 / 16)
    return int(int(fluxgen.get("num_images", 0)) * per_image * PNG_BYTES_PER_PIXEL)


def check_disk(params: Mapping[str, Any], project: Path) -> list[Finding]:
    data = project / "data"
    free = shutil.disk_usage(data if data.exists() else project).free
    need = estimate_fluxgen_bytes(params)
    num = _get(params, "fluxgen", "num_images", default=0)
    detail = (
        f"fluxgen.num_images={num} needs ~{need / 1e9:.2f} GB ({PNG_BYTES_PER_PIXEL} B/px PNG), "
        f"{free / 1e9:.1f} GB free at {data}"
    )
    status = "FAIL" if need > free else "WARN" if need > 0.8 * free else "OK"
    return [Finding(status, "disk", "data", detail)]


# ----------------------------------------------------------------------------- accelerator, versions


def train_memory_budget_gb(train: Mapping[str, Any], size: str = "1024x768") -> tuple[str, float]:
    """(what, GB per GPU) of the training settings at the largest bucket, from the memory model's table.

    The L_P variant is the table's whole-image, 512-crop or none row that bounds ``train.pixel_loss_crop`` from
    above; a batch size beyond the table adds the batch-1 step's activations per sample."""
    from importlib import resources

    table = json.loads((resources.files("fluxir") / "configs" / TRAIN_MEMORY).read_text())
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
    """Configured devices against the GPUs present and the documented memory budget."""
    import torch

    gpus = (
        [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    findings = []
    for key, (what, budget) in _budgets(params).items():
        device = str(_get(params, *key.split("."), default="auto"))
        if device == "cpu":
            findings.append(Finding("OK", "accelerator", key, "cpu (tiny or debugging runs only)"))
        elif not gpus:
            findings.append(
                Finding(
                    "FAIL" if device.startswith("cuda") else "WARN",
                    "accelerator",
                    key,
                    f"{device}: no CUDA GPU here; {what} needs ~{budget} GB per GPU (docs/full_scale.md)",
                )
            )
        else:
            small = [f"{g.name} {g.total_memory / 1e9:.0f} GB" for g in gpus if g.total_memory < 0.95 * budget * 1e9]
            findings.append(
                Finding(
                    "FAIL" if small else "OK",
                    "accelerator",
                    key,
                    f"{what} needs ~{budget} GB per GPU; "
                    + (
                        f"too small: {small}"
                        if small
                        else f"{len(gpus)} x {gpus[0].name} {gpus[0].total_memory / 1e9:.0f} GB"
                    ),
                )
            )
    return findings


STAGE_PROCESSES = {
    "fluxgen.num_processes": ("generate and score", "fluxgen.device"),
    "train.num_processes": ("train", "train.device"),
    "evaluate.num_processes": ("evaluate (restoration)", "evaluate.restore.device"),
    "restore.num_processes": ("restore", "restore.device"),
}


def check_processes(params: Mapping[str, Any], gpus: int | None = None) -> list[Finding]:
    """How many processes each stage will run (``<stage>.num_processes``, ``fluxir.launch``) and on which GPUs."""
    from fluxir.launch import resolve_num_processes, visible_gpus

    gpus = visible_gpus() if gpus is None else gpus
    findings = []
    for key, (stage, device_key) in STAGE_PROCESSES.items():
        setting = _get(params, *key.split("."), default="auto")
        try:
            count = resolve_num_processes(setting, key, gpus)
        except ValueError as err:
            findings.append(Finding("FAIL", "processes", key, str(err)))
            continue
        on_cpu = str(_get(params, *device_key.split("."), default="auto")) == "cpu" or not gpus
        where = "processes" if count > 1 else "process"
        if on_cpu:
            findings.append(Finding("OK", "processes", key, f"{stage}: {count} CPU {where} ({setting}), no GPU"))
        elif count > gpus:
            findings.append(
                Finding(
                    "FAIL",
                    "processes",
                    key,
                    f"{stage}: {count} {where} but {gpus} GPU(s) visible; set {key}=auto or at most {gpus}",
                )
            )
        else:
            findings.append(
                Finding(
                    "OK",
                    "processes",
                    key,
                    f"{stage}: {count} {where} ({setting}) on GPU(s) "
                    f"{', '.join(map(str, range(count)))} of {gpus} visible",
                )
            )
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
        findings.append(
            Finding(
                "OK" if fits else "FAIL",
                "package",
                req.name,
                f"{installed}" + ("" if fits else f" does not satisfy {req.specifier} (pyproject.toml)"),
            )
        )
    return findings


# ----------------------------------------------------------------------------- the report


def run_checks(project: Path, env: str, overrides: list[str] | None = None) -> list[Finding]:
    """All findings for a Kedro environment (``overrides`` as ``kedro run --params``)."""
    params = load_params(env, overrides or [], project)
    findings: list[Finding] = []
    cache: dict[str, Any] = {}
    checked: dict[str, tuple[str, str]] = {}  # folder -> (the role it was checked for, its worst status)
    for role, keys in _MODEL_ROLES.items():
        source = _get(params, *keys)
        if source is None:
            continue
        if str(source) in checked:
            first, status = checked[str(source)]
            findings.append(Finding(status, "model", role, f"same folder as {first} (see there)"))
            continue
        found = check_model_folder(role, source, cache)
        worst = next((s for s in ("FAIL", "WARN") if any(f.status == s for f in found)), "OK")
        checked[str(source)] = (role, worst)
        findings += found
    findings += check_adapter(project, env, _get(params, "restore", "model"), cache)
    findings += check_baselines(params)
    findings += check_iqa(params)
    findings += check_benchmarks(params)
    findings += check_disk(params, project)
    findings += check_accelerator(params)
    findings += check_processes(params)
    findings += check_versions(project)
    return findings


def format_report(findings: list[Finding]) -> str:
    width = max((len(f.item) for f in findings), default=4)
    lines = [f"{f.status:<4}  {f.area:<11}  {f.item:<{width}}  {f.detail}" for f in findings]
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "WARN" for f in findings)
    lines.append(
        f"{len(findings)} checks: {failed} FAIL, {warned} WARN"
        + (" -- fix every FAIL before a long run" if failed else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # A check is for the real run's configuration: base unless --env or the run file says otherwise.
    parser = cli_parser(
        "python -m fluxir.check", "Preflight check before a long run.", "fluxgen.num_images=350000", default_env="base"
    )
    args = parser.parse_args(argv)
    findings = run_checks(Path(args.project).resolve(), args.env, args.params)
    print(format_report(findings))
    return 1 if any(f.status == "FAIL" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
