"""Check every parameter a run will read before its first node: all problems at once, nothing written (a node
checks its own only when it runs, so a typo in ``select.percentile`` would surface after days of generation). Each
group is checked by building its config class, then by the checks that need files (model folders, weights, inputs).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fluxir.parameters.config import ConfigError, raise_problems


def config_classes() -> dict[str, type]:
    from fluxir.evaluation.config import EvaluateConfig
    from fluxir.fluxgen.content_filter import ContentFilterConfig
    from fluxir.fluxgen.generate import GenerationConfig
    from fluxir.fluxgen.pairs import PairsStageConfig
    from fluxir.fluxgen.score import IqaConfig
    from fluxir.restoration.controlnet import FluxControlNetConfig
    from fluxir.restoration.realesrgan import RealESRGANConfig
    from fluxir.training.config import TrainConfig

    return {
        "fluxgen": GenerationConfig,
        "fluxgen.content_filter": ContentFilterConfig,
        "iqa": IqaConfig,
        "degrade": PairsStageConfig,
        "train": TrainConfig,
        "evaluate": EvaluateConfig,
        "baselines.realesrgan": RealESRGANConfig,
        "baselines.flux_controlnet": FluxControlNetConfig,
    }


def _get(params: Any, path: str) -> Any:
    for key in path.split("."):
        params = params.get(key) if isinstance(params, Mapping) else None
    return params


def built(params: Mapping[str, Any], group: str) -> tuple[Any, list[str]]:
    try:
        return config_classes()[group].from_params(_get(params, group)), []
    except ConfigError as err:
        return None, err.problems


def _problems(check: Callable[[], Any]) -> list[str]:
    try:
        check()
    except ConfigError as err:
        return err.problems
    except (ValueError, TypeError, OSError) as err:
        return [str(err)]
    return []


def local_model_problems(name: str, source: Any) -> list[str]:
    hub_id = isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists()
    if not isinstance(source, str) or hub_id or Path(source).expanduser().is_dir():
        return []
    return [  # the loader's words (models.loading.resolve_source), said before anything is written
        f"{name}: model source {source!r} is neither an existing local folder nor a hub id of the form 'owner/name' "
        f"(e.g. 'black-forest-labs/FLUX.1-dev'): point {name} at the model (`python -m fluxir.preflight` says "
        "which are on this machine)"
    ]


def validate_fluxgen(params: Mapping[str, Any]) -> list[str]:
    config, found = built(params, "fluxgen")
    found += built(params, "fluxgen.content_filter")[1]
    if config is not None:
        found += local_model_problems("fluxgen.model", config.model)
    return found


def validate_iqa(params: Mapping[str, Any]) -> list[str]:
    from fluxir import iqa as iqa_lib

    config, found = built(params, "iqa")
    if config is not None:
        found += _problems(lambda: iqa_lib.configure_weights(config.weights_dir, config.trust_weight_files))
        found += [] if found else _problems(lambda: iqa_lib.check_weights(config.specs()))
    return found


def validate_select(params: Mapping[str, Any]) -> list[str]:
    from fluxir.fluxgen.score import check_percentile

    return _problems(lambda: check_percentile(_get(params, "select.percentile")))


def restore_settings_problems(restore: Mapping[str, Any]) -> list[str]:
    """``restore.*`` minus the file parameters (the app checks its settings with this)."""
    from fluxir.restoration.files import split_params

    return _problems(lambda: split_params(dict(restore)))


def baselines_problems(baselines: Any) -> list[str]:
    """``baselines.*``, the public restorers' settings (the app checks its ``baselines`` with this)."""
    if not isinstance(baselines, Mapping):
        return ["parameter group 'baselines' is missing or not a mapping (conf/base/parameters_baselines.yml)"]
    params = {"baselines": baselines}
    return built(params, "baselines.realesrgan")[1] + built(params, "baselines.flux_controlnet")[1]


def public_weights_problems(params: Mapping[str, Any], methods: Iterable[str]) -> list[str]:
    """A missing Real-ESRGAN weight file when ``methods`` use it (the ControlNet may be a hub id, found only when it
    loads)."""
    from fluxir.restoration.realesrgan import weights_file

    config = built(params, "baselines.realesrgan")[0] if "realesrgan" in methods else None
    return [] if config is None else _problems(lambda: weights_file(config))  # bad settings: reported by baselines


def validate_restore(params: Mapping[str, Any]) -> list[str]:
    from fluxir.restoration.methods import RESTORE_METHODS

    group = params.get("restore")
    if not isinstance(group, Mapping):
        return ["parameter group 'restore' is missing or not a mapping (conf/base/parameters_*.yml defines it)"]
    found = restore_settings_problems(group)
    if group.get("method") not in RESTORE_METHODS:
        found.append(f"restore.method must be one of {RESTORE_METHODS}, got {group.get('method')!r}")
    else:
        found += public_weights_problems(params, [group["method"]])
    return found


def validate_evaluate(params: Mapping[str, Any]) -> list[str]:
    config, found = built(params, "evaluate")
    if config is not None:
        found += public_weights_problems(params, config.methods)
    return found


def validate_export(params: Mapping[str, Any]) -> list[str]:
    """``export.*`` (the licence is checked by the nodes)."""
    from fluxir.export.build import export_problems

    group = params.get("export")
    if not isinstance(group, Mapping):
        return ["parameter group 'export' is missing or not a mapping (conf/base/parameters_*.yml defines it)"]
    return export_problems(group)


def restore_folder_problems(params: Mapping[str, Any], catalog: Mapping[str, Any]) -> list[str]:
    from fluxir.restoration.files import SET_INPUT

    path = (catalog.get("restore_input") or {}).get("path")
    if not path:
        return [f"catalog entry restore_input has no path: nothing to restore; {SET_INPUT}"]
    if not Path(path).exists():
        return [f"catalog entry restore_input: {str(path)!r} does not exist; {SET_INPUT}"]
    return []


def benchmark_folder_problems(params: Mapping[str, Any], catalog: Mapping[str, Any]) -> list[str]:
    """Every ``evaluate.benchmarks.<key>`` has its catalog entry with the folders its kind reads (a benchmark
    without files is skipped by the run)."""
    from fluxir.evaluation.testsets import FOLDERS_ENTRY, BenchmarkSpec

    found = []
    for key, settings in (_get(params, "evaluate.benchmarks") or {}).items():
        entry = FOLDERS_ENTRY.format(key=key)
        if not isinstance(catalog.get(entry), Mapping):
            found.append(f"evaluate.benchmarks.{key} has no catalog entry {entry} (conf/base/catalog_evaluate.yml)")
            continue
        try:
            spec = BenchmarkSpec.from_params(settings)
        except (ValueError, TypeError):
            continue  # a bad setting: validate_evaluate reports it
        folders = {f"{side}_dir": catalog[entry].get(f"{side}_path") for side in ("hq", "lq")}
        try:
            dataclasses.replace(spec, **folders).check_folders(entry)
        except ValueError as err:
            found.append(f"evaluate.benchmarks.{key}: {err}")
    return found


# Top-level parameter group -> its check. A pipeline reading any ``params:<group>...`` gets that group checked.
VALIDATORS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "fluxgen": validate_fluxgen,
    "iqa": validate_iqa,
    "select": validate_select,
    "degrade": lambda params: built(params, "degrade")[1],
    "train": lambda params: built(params, "train")[1],
    "restore": validate_restore,
    "evaluate": validate_evaluate,
    "baselines": lambda params: baselines_problems(params.get("baselines")),
    "export": validate_export,
}


# Groups checked only when one of these is read: evaluation reads iqa.weights_dir / iqa.device but scores with
# its own evaluate.metrics, so FluxGen's iqa.metrics (and their weights) are no concern of an evaluate run.
CHECKED_WHEN_READ = {"iqa": ("iqa", "iqa.metrics")}


def groups_read(dataset_names: Iterable[str]) -> list[str]:
    """The groups of ``VALIDATORS`` that datasets named ``params:<group>[.<key>]`` read, in table order."""
    keys = {name.removeprefix("params:") for name in dataset_names if name.startswith("params:")}
    read = {key.split(".", 1)[0] for key in keys}
    return [
        group
        for group in VALIDATORS
        if group in read and (group not in CHECKED_WHEN_READ or keys & set(CHECKED_WHEN_READ[group]))
    ]


# Group -> the check of the catalog folders its stage reads, given the parameters and the catalog's entries as
# the config loader gives them (runtime params resolved).
FOLDER_VALIDATORS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]] = {
    "restore": restore_folder_problems,
    "evaluate": benchmark_folder_problems,
}


def problems_for(
    params: Mapping[str, Any], groups: Iterable[str], catalog: Mapping[str, Any] | None = None
) -> list[str]:
    """Every problem of the named groups, in order; with the ``catalog`` entries, also of the folders they read."""
    found = []
    for group in groups:
        found += VALIDATORS[group](params)
        if catalog is not None and group in FOLDER_VALIDATORS:
            found += FOLDER_VALIDATORS[group](params, catalog)
    return found


def check_params(
    params: Mapping[str, Any], groups: Iterable[str], where: str, catalog: Mapping[str, Any] | None = None
) -> None:
    raise_problems(problems_for(params, groups, catalog), where)
