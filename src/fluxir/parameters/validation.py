"""Check every parameter a run will read before its first node: all problems at once, nothing written.

A node checks its own parameters only when it runs, so a typo in ``select.percentile`` would surface after
days of generation. ``validate_<stage>(params)`` builds the stage's config objects from the whole
``parameters`` mapping exactly as its node and ``python -m`` entry point do and returns the problems as
messages (empty: fine). ``problems_for_run`` picks the stages a pipeline reads (by its ``params:`` inputs);
``fluxir.runtime.hooks.ParameterCheckHook`` calls it before kedro-mlflow starts a run, the entry points call
``raise_problems`` themselves.

Each stage check is first its config class (the one source of truth), then the rule table of that class
on the raw values, so a group with three bad values reports all three rather than the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fluxir.parameters.rules import ConfigError, Rule, field_problems, is_int


class ParameterError(ValueError):
    """Bad parameters found before a run started; the message lists every one."""


def _problems(
    build: Callable[[], Any], rules: Iterable[Rule] = (), values: Mapping[str, Any] | None = None, prefix: str = ""
) -> list[str]:
    """Messages of ``build()`` failing plus every rule ``values`` break (only when ``build`` failed: the
    config class may normalise values the raw rules would reject, e.g. YAML's ``1e-5`` string)."""
    try:
        build()
        return []
    except ConfigError as err:
        found = list(err.problems)
    except (ValueError, TypeError, FileNotFoundError) as err:
        found = [str(err)]
    if isinstance(values, Mapping):
        found += [m for m in field_problems(values, rules, prefix) if m not in found]
    return found


def _group(params: Mapping[str, Any], name: str) -> tuple[Mapping[str, Any] | None, list[str]]:
    group = params.get(name)
    if not isinstance(group, Mapping):
        return None, [f"parameter group {name!r} is missing or not a mapping (conf/base/parameters_*.yml defines it)"]
    return group, []


def _config_problems(
    params: Mapping[str, Any], name: str, from_params: Callable[[dict[str, Any]], Any], rules: Iterable[Rule]
) -> list[str]:
    """The group ``name`` built by its config class's ``from_params``, checked with the class's ``rules``."""
    group, missing = _group(params, name)
    if missing:
        return missing
    return _problems(lambda: from_params(dict(group)), rules, group, f"{name}.")


def validate_fluxgen(params: Mapping[str, Any]) -> list[str]:
    """``fluxgen.*``: ``GenerationConfig``, and ``fluxgen.content_filter``: ``ContentFilterConfig``."""
    from fluxir.fluxgen.content_filter import FILTER_RULES, ContentFilterConfig
    from fluxir.fluxgen.generate import GENERATION_RULES, GenerationConfig

    found = _config_problems(params, "fluxgen", GenerationConfig.from_params, GENERATION_RULES)
    group = params.get("fluxgen")
    if isinstance(group, Mapping):
        content_filter = group.get("content_filter")
        if not isinstance(content_filter, Mapping):
            found.append(
                "parameter group 'fluxgen.content_filter' is missing or not a mapping "
                "(conf/base/parameters_fluxgen.yml defines it)"
            )
        else:
            found += _problems(
                lambda: ContentFilterConfig.from_params(dict(content_filter)),
                FILTER_RULES,
                content_filter,
                "fluxgen.content_filter.",
            )
    return found


def validate_iqa(params: Mapping[str, Any]) -> list[str]:
    """``iqa.*`` as FluxGen scoring reads them: metric specs (known to pyiqa, no-reference, weights present),
    batch / part sizes and loader workers."""
    from fluxir import iqa as iqa_lib
    from fluxir.fluxgen.score import SCORING_RULES

    group, missing = _group(params, "iqa")
    if missing:
        return missing
    found = field_problems(group, SCORING_RULES, "iqa.")
    metrics = group.get("metrics")
    if isinstance(metrics, (str, Mapping)):
        metrics = [metrics]
    if not metrics:
        found.append("iqa.metrics names no metric (the paper: [clipiqa+_vitL14_512, maniqa-pipal, musiq])")
    specs: list[Any] = []
    for spec in metrics or []:
        try:
            specs.append(iqa_lib.MetricSpec.parse(spec))
        except (ValueError, TypeError) as err:
            found.append(f"iqa.metrics: {err}")
    not_nr = [s.name for s in specs if s.metric_mode != "NR"]
    if not_nr:
        found.append(
            f"iqa.metrics {not_nr} are full-reference; FluxGen selection needs no-reference metrics (musiq, piqe, ...)"
        )
    elif specs and len(specs) == len(metrics):
        try:
            iqa_lib.configure_weights(group.get("weights_dir"), group.get("trust_weight_files", False))
            iqa_lib.check_weights(specs)
        except (ValueError, TypeError, OSError) as err:
            found.append(str(err))
    return found


def validate_select(params: Mapping[str, Any]) -> list[str]:
    """``select.percentile``."""
    from fluxir.fluxgen.select import check_percentile

    group, missing = _group(params, "select")
    if missing:
        return missing
    return _problems(lambda: check_percentile(group.get("percentile")))


def validate_degrade(params: Mapping[str, Any]) -> list[str]:
    """``degrade.*``: ``DegradationConfig``, workers, rank / world size, seed."""
    from fluxir.fluxgen.degrade import DegradationConfig
    from fluxir.fluxgen.pairs import ids_for_rank, resolve_workers, share

    group, missing = _group(params, "degrade")
    if missing:
        return missing
    found = _problems(lambda: DegradationConfig.from_dict(group.get("config") or {}))
    found = [m if m.startswith("degrade") else f"degrade.config: {m}" for m in found]
    found += _problems(lambda: resolve_workers(group.get("workers")))
    found += _problems(lambda: ids_for_rank([], *share(group, {})))  # a launcher's share is checked when it runs
    if not is_int(group.get("seed")):
        found.append(f"degrade.seed must be an integer, got {group.get('seed')!r}")
    return found


def validate_train(params: Mapping[str, Any]) -> list[str]:
    """``train.*``: ``TrainConfig``."""
    from fluxir.training.config import TRAIN_RULES, TrainConfig

    return _config_problems(params, "train", TrainConfig.from_params, TRAIN_RULES)


def restore_settings_problems(restore: Mapping[str, Any]) -> list[str]:
    """``restore.*`` minus the file parameters: ``RestoreConfig`` (the app checks its settings with this)."""
    from fluxir.restoration.files import FILE_PARAMS, FOLDER_PARAMS, split_params
    from fluxir.restoration.restore_config import RESTORE_RULES

    config_values = {k: v for k, v in restore.items() if k not in FILE_PARAMS + FOLDER_PARAMS}
    return _problems(lambda: split_params(dict(restore)), RESTORE_RULES, config_values, "restore.")


def baselines_problems(baselines: Any) -> list[str]:
    """``baselines.*`` (the public restorers' settings): ``RealESRGANConfig`` and ``FluxControlNetConfig``, every
    bad value of both (the app checks its ``baselines`` with this)."""
    from fluxir.restoration.controlnet import CONTROLNET_RULES, FluxControlNetConfig
    from fluxir.restoration.realesrgan import REALESRGAN_RULES, RealESRGANConfig

    if not isinstance(baselines, Mapping):
        return ["parameter group 'baselines' is missing or not a mapping (conf/base/parameters_baselines.yml)"]
    found: list[str] = []
    for method, config_class, rules in (
        ("realesrgan", RealESRGANConfig, REALESRGAN_RULES),
        ("flux_controlnet", FluxControlNetConfig, CONTROLNET_RULES),
    ):
        section = baselines.get(method)
        if not isinstance(section, Mapping):
            found.append(f"baselines.{method} is missing or not a mapping (conf/base/parameters_baselines.yml)")
            continue
        found += _problems(
            lambda c=config_class, s=section: c.from_params(dict(s)), rules, section, f"baselines.{method}."
        )
    return found


def validate_baselines(params: Mapping[str, Any]) -> list[str]:
    """``baselines.*``: the settings of Real-ESRGAN and the Flux ControlNet (``baselines_problems``)."""
    return baselines_problems(params.get("baselines"))


def public_weights_problems(params: Mapping[str, Any], methods: Iterable[str]) -> list[str]:
    """A missing Real-ESRGAN weight file when ``methods`` use it (the settings themselves: ``validate_baselines``;
    the ControlNet may be a hub id, found in the cache only when it loads)."""
    from fluxir.restoration.realesrgan import RealESRGANConfig, weights_file

    if "realesrgan" not in methods:
        return []
    section = params.get("baselines", {}).get("realesrgan") if isinstance(params.get("baselines"), Mapping) else None
    try:
        weights_file(RealESRGANConfig.from_params(dict(section or {})))
    except ValueError as err:
        message = str(err)
        return [message] if message.startswith("baselines.realesrgan.weights:") else []  # bad settings: reported once
    return []


def validate_restore(params: Mapping[str, Any]) -> list[str]:
    """``restore.*``: ``RestoreConfig`` and the method (a public one's weight file)."""
    from fluxir.restoration.methods import RESTORE_METHODS

    group, missing = _group(params, "restore")
    if missing:
        return missing
    found = restore_settings_problems(group)
    if group.get("method") not in RESTORE_METHODS:
        found.append(f"restore.method must be one of {RESTORE_METHODS}, got {group.get('method')!r}")
    else:
        found += public_weights_problems(params, [group["method"]])
    return found


def restore_folder_problems(catalog: Mapping[str, Any]) -> list[str]:
    """The catalog's ``restore_input``: a path given (``--params restore.input_dir=...``) that exists."""
    from fluxir.restoration.files import SET_INPUT

    path = (catalog.get("restore_input") or {}).get("path")
    if not path:
        return [f"catalog entry restore_input has no path: nothing to restore; {SET_INPUT}"]
    if not Path(path).exists():
        return [f"catalog entry restore_input: {str(path)!r} does not exist; {SET_INPUT}"]
    return []


def evaluate_rules() -> tuple[Rule, ...]:
    """The rule table of ``evaluate.*``'s plain values (the group has no config class; its nodes take them one
    by one)."""
    from fluxir.evaluation.report import CONVENTION_DEFINITIONS
    from fluxir.restoration.methods import EVALUATE_METHODS

    return (
        Rule("methods", "distinct_choices", EVALUATE_METHODS, note=" (restored and scored in this run)"),
        Rule("convention", "choice", tuple(CONVENTION_DEFINITIONS), note=" (the PSNR / SSIM channel convention)"),
        Rule("crop_border", "nonneg_int", note=" (pixels cut from each side before PSNR / SSIM / LPIPS)"),
        Rule("num_processes", "auto_or_positive_int", note=" (auto: one process per visible GPU)"),
        Rule("grid_images", "positive_int", note=" (images per dataset in the grids)"),
    )


def validate_evaluate(params: Mapping[str, Any]) -> list[str]:
    """``evaluate.*``: the plain values (``evaluate_rules``), every ``BenchmarkSpec``, the metric groups,
    ``evaluate.restore`` (``RestoreConfig``) and the weight file of Real-ESRGAN when it is one of the methods."""
    from fluxir.evaluation.restore import evaluation_restore_config
    from fluxir.evaluation.scoring import parse_metric_groups
    from fluxir.evaluation.testsets import BenchmarkSpec
    from fluxir.restoration.colorfix import COLOR_FIX_METHODS

    group, missing = _group(params, "evaluate")
    if missing:
        return missing
    rules = evaluate_rules()
    found = [m for rule in rules if (m := rule.problem(group.get(rule.field), "evaluate."))]
    if not any(m.startswith("evaluate.methods ") for m in found):
        found += public_weights_problems(params, group["methods"])
    scale = group.get("scale")
    if not is_int(scale, 1):
        found.append(f"evaluate.scale must be a positive integer, got {scale!r}")
    for key, entry in (group.get("benchmarks") or {}).items():
        try:
            spec = BenchmarkSpec.from_params(entry)
        except (ValueError, TypeError) as err:
            found.append(f"evaluate.benchmarks.{key}: {err}")
            continue
        if is_int(scale, 1) and spec.scale is not None and spec.scale != scale:
            found.append(f"evaluate.benchmarks.{key}: hq_size/lq_size = {spec.scale} but evaluate.scale is {scale}")
    found += _problems(lambda: parse_metric_groups(group.get("metrics")))
    if group.get("color_fix") not in COLOR_FIX_METHODS:
        found.append(f"evaluate.color_fix must be one of {tuple(COLOR_FIX_METHODS)}, got {group.get('color_fix')!r}")
    elif is_int(scale, 1):
        found += _problems(lambda: evaluation_restore_config(group.get("restore") or {}, scale, group["color_fix"]))
    return found


def benchmark_folder_problems(params: Mapping[str, Any], catalog: Mapping[str, Any]) -> list[str]:
    """Every ``evaluate.benchmarks.<key>`` has its catalog entry ``<key>_benchmark`` with the folders its kind
    reads (whether they hold images is the run's concern: a benchmark without files is skipped)."""
    from fluxir.evaluation.testsets import FOLDERS_ENTRY, BenchmarkSpec

    group = params.get("evaluate")
    found = []
    for key, settings in ((group or {}).get("benchmarks") or {}).items() if isinstance(group, Mapping) else ():
        entry = FOLDERS_ENTRY.format(key=key)
        if not isinstance(catalog.get(entry), Mapping):
            found.append(f"evaluate.benchmarks.{key} has no catalog entry {entry} (conf/base/catalog_evaluate.yml)")
            continue
        folders = {side: catalog[entry].get(f"{side}_path") for side in ("hq", "lq")}
        try:
            spec = BenchmarkSpec.from_params(settings)
        except (ValueError, TypeError):
            continue  # a bad setting: validate_evaluate reports it
        try:
            dataclasses.replace(spec, hq_dir=folders["hq"], lq_dir=folders["lq"]).check_folders(entry)
        except ValueError as err:
            found.append(f"evaluate.benchmarks.{key}: {err}")
    return found


def validate_export(params: Mapping[str, Any]) -> list[str]:
    """``export.*``: format, shard size, switches, repo id when pushing (the licence is checked by the nodes)."""
    from fluxir.export.settings import export_problems

    group, missing = _group(params, "export")
    if missing:
        return missing
    return export_problems(group)


# Top-level parameter group -> its check. A pipeline reading any ``params:<group>...`` gets that group checked.
VALIDATORS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "fluxgen": validate_fluxgen,
    "iqa": validate_iqa,
    "select": validate_select,
    "degrade": validate_degrade,
    "train": validate_train,
    "restore": validate_restore,
    "evaluate": validate_evaluate,
    "baselines": validate_baselines,
    "export": validate_export,
}


# Groups checked only when one of these is read: evaluation reads iqa.weights_dir / iqa.device but scores with
# its own evaluate.metrics, so FluxGen's iqa.metrics (and their weights) are no concern of an evaluate run.
CHECKED_WHEN_READ = {"iqa": ("iqa", "iqa.metrics")}


def groups_read(dataset_names: Iterable[str]) -> list[str]:
    """The parameter groups of ``VALIDATORS`` that datasets named ``params:<group>[.<key>]`` read, in table order."""
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
    "restore": lambda params, catalog: restore_folder_problems(catalog),
    "evaluate": lambda params, catalog: benchmark_folder_problems(params, catalog),
}


def problems_for(
    params: Mapping[str, Any], groups: Iterable[str], catalog: Mapping[str, Any] | None = None
) -> list[str]:
    """Every problem of the named parameter groups, in order; with the ``catalog`` entries, also of the folders
    those stages read (``FOLDER_VALIDATORS``)."""
    found = []
    for group in groups:
        found += VALIDATORS[group](params)
        if catalog is not None and group in FOLDER_VALIDATORS:
            found += FOLDER_VALIDATORS[group](params, catalog)
    return found


def raise_problems(problems: list[str], where: str = "this run") -> None:
    """Raise one ``ParameterError`` listing every problem (nothing happens when there is none)."""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ParameterError(
            f"{len(problems)} parameter problem(s) found before {where} started (nothing was run or written):"
            f"\n{lines}\n"
            "Fix them in conf/<env>/parameters_*.yml (folders: conf/<env>/catalog_*.yml) or with --params and run "
            "again."
        )


def check_params(
    params: Mapping[str, Any], groups: Iterable[str], where: str, catalog: Mapping[str, Any] | None = None
) -> None:
    """``raise_problems(problems_for(params, groups, catalog), where)``: the one call of every ``python -m`` entry
    point."""
    raise_problems(problems_for(params, groups, catalog), where)
