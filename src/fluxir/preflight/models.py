"""Preflight of the models: each component built on the meta device, its safetensors header keys compared with the
architecture (no tensor loaded); the trained adapter against the Flux it will drive; the content filter."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fluxir.fetch.hub import local_snapshot
from fluxir.parameters.config import load_catalog
from fluxir.preflight import Finding, lookup

# The files of a diffusers pipeline repository a run reads (FLUX.1-dev also holds ~24 GB of single-file weights).
DIFFUSERS_LAYOUT = '"model_index.json" "scheduler/*" "text_encoder*/*" "tokenizer*/*" "transformer/*" "vae/*"'


def safetensors_keys(files: Iterable[Path]) -> set[str]:
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
    if index := sorted(folder.glob("*.safetensors.index.json")):
        shards = set(json.loads(index[0].read_text())["weight_map"].values())
        if missing := [s for s in sorted(shards) if not (folder / s).is_file()]:
            raise FileNotFoundError(f"{folder}: shard(s) {missing} named in {index[0].name} are missing")
        return [folder / s for s in sorted(shards)]
    return sorted(folder.glob("*.safetensors"))


def meta_model(library: str, class_name: str, folder: Path) -> Any:
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


def key_finding(name: str, folder: Path, model: Any, library: str) -> Finding:
    files = _weight_files(folder)
    if not files:
        if bins := sorted(p.name for p in folder.glob("*.bin")):
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
    detail = f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
    return Finding(status, "model", name, f"{folder}: keys differ from {type(model).__name__}: {detail}")


def model_folder(source: Any) -> Path | None:
    """The folder a run loads for a model parameter: a local folder, or a hub id's cached snapshot (None: neither)."""
    folder = Path(str(source)).expanduser()
    if folder.is_dir():
        return folder.resolve()
    return local_snapshot(str(source)) if str(source).count("/") == 1 else None


def download_advice(source: Any) -> str:
    """docs/full_scale.md section 1."""
    return (
        f"runs are offline: download it once with a token of an account that accepted its licence "
        f"(`export HF_TOKEN=hf_...`, or `hf auth login`, older clients `huggingface-cli login`): "
        f"`HF_HUB_OFFLINE=0 python -m fluxir.fetch --only flux` (FLUX.1-dev, to the cache or the folder a parameter "
        f"names), or `HF_HUB_OFFLINE=0 hf download {source} --include {DIFFUSERS_LAYOUT}` (the diffusers layout only; "
        f"the hub cache is used offline afterwards; add `--local-dir DIR` for a folder and set `flux_model: DIR` in "
        f"conf/local/globals.yml, which every Flux parameter reads)"
    )


def check_model_folder(role: str, source: Any, cache: dict[str, Any]) -> list[Finding]:
    if not source:
        return [Finding("WARN", "model", role, "not set")]
    folder = model_folder(source)
    if folder is None:
        detail = f"{source!r} is neither a local folder nor in the Hugging Face cache; " + download_advice(source)
        return [Finding("FAIL", "model", role, detail)]
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
            model = meta_model(entry[0], entry[1], sub)
            findings.append(
                key_finding(label, sub, model, entry[0])
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
    from fluxir.models.adapter_config import check_compatible

    catalog = load_catalog(env, project)
    if "fluxir_adapter" not in catalog or not catalog.exists("fluxir_adapter"):
        detail = "no trained adapter yet (train first; without one, restore.method=flux_controlnet or realesrgan)"
        return [Finding("WARN", "adapter", "fluxir_adapter", detail)]
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


def check_content_filter(params: Mapping[str, Any], project: Path) -> list[Finding]:
    """``fluxgen.content_filter``: off -> a WARN naming the licence clause that then applies; on -> the classifier's
    folder holds the files the loaders read and an ``nsfw`` label."""
    from fluxir.fetch.manifest import FILTER_FILES
    from fluxir.fluxgen.content_filter import NSFW_LABEL, REVIEW_DUTY

    group = lookup(params, "fluxgen", "content_filter")
    item = "fluxgen.content_filter"
    if not isinstance(group, Mapping):
        return [Finding("FAIL", "model", item, "missing: conf/base/parameters_fluxgen.yml defines it")]
    if group.get("enabled") is False:
        return [Finding("WARN", "model", item, REVIEW_DUTY)]
    source = group.get("model")
    local = project / str(source)
    folder = local.resolve() if source and local.is_dir() else model_folder(source) if source else None
    fetch = "`HF_HUB_OFFLINE=0 python -m fluxir.fetch --only filter` (to the cache or the folder the parameter names)"
    if folder is None:
        detail = f"{source!r} is neither a local folder nor in the Hugging Face cache; download it: {fetch}"
        return [Finding("FAIL", "model", item, detail)]
    if missing := [name for name in FILTER_FILES if not (folder / name).is_file()]:
        return [Finding("FAIL", "model", item, f"{folder} lacks {missing}; download them: {fetch}")]
    try:
        labels = json.loads((folder / "config.json").read_text()).get("id2label") or {}
        safetensors_keys([folder / "model.safetensors"])
    except (ValueError, OSError) as err:
        return [Finding("FAIL", "model", item, f"{folder}: {err}; download it again: {fetch}")]
    if NSFW_LABEL not in {str(v).lower() for v in labels.values()}:
        detail = (
            f"{folder}: labels {sorted(labels.values())} have no {NSFW_LABEL!r}: use a classifier in the format of "
            "Falconsai/nsfw_image_detection (id2label {0: normal, 1: nsfw})"
        )
        return [Finding("FAIL", "model", item, detail)]
    detail = f"{folder}: labels {sorted(labels.values())}, flags nsfw > {group.get('threshold')}"
    return [Finding("OK", "model", item, detail)]
