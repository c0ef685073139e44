"""``EvaluateConfig``: the parameters ``evaluate.*`` (conf/base/parameters_evaluate.yml documents each), checked
once on construction; the evaluate nodes take it built from ``params:evaluate``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fluxir.iqa import CONVENTION_DEFINITIONS, MetricSpec
from fluxir.parameters.config import Config, Rule, is_int
from fluxir.restoration.methods import EVALUATE_METHODS
from fluxir.restoration.restore_config import COLOR_FIX_METHODS


@dataclass
class EvaluateConfig(Config):
    """Parameters ``evaluate.*``: their values (defaults included) live in conf/base/parameters_evaluate.yml."""

    num_processes: int | str  # restoring the benchmarks; auto: one process per visible GPU
    tiny_models: bool  # the report says it proves the machinery only
    scale: int  # restored = HQ size = scale x LQ size
    methods: list[str]  # restored and scored in this run
    grid_images: int  # images per dataset in the LQ / restored / HQ grids
    convention: str  # the PSNR / SSIM channel convention
    crop_border: int  # pixels cut from each side before PSNR / SSIM / LPIPS
    color_fix: str  # for fluxir and flux_controlnet
    metrics: dict[str, Any]  # {full_reference: {label: spec}, no_reference: {label: spec}}
    restore: dict[str, Any]  # fluxir's RestoreConfig values plus its model
    benchmarks: dict[str, Any]  # {key: BenchmarkSpec values}

    PREFIX = "evaluate."
    RULES = (
        Rule(
            "methods",
            lambda v: (
                isinstance(v, (list, tuple))
                and bool(v)
                and all(isinstance(x, str) and x in EVALUATE_METHODS for x in v)
                and len(set(v)) == len(v)
            ),
            must=f"a non-empty list of distinct names from {EVALUATE_METHODS}",
            note=" (restored and scored in this run)",
        ),
        Rule("convention", "choice", tuple(CONVENTION_DEFINITIONS), note=" (the PSNR / SSIM channel convention)"),
        Rule("crop_border", "nonneg_int", note=" (pixels cut from each side before PSNR / SSIM / LPIPS)"),
        Rule(
            "num_processes",
            lambda v: v == "auto" or is_int(v, 1),
            must="'auto' or an integer >= 1",
            note=" (auto: one process per visible GPU)",
        ),
        Rule("grid_images", "positive_int", note=" (images per dataset in the grids)"),
        Rule("scale", "positive_int"),
        Rule("color_fix", "choice", tuple(COLOR_FIX_METHODS)),
    )

    def joint_problems(self, failed: set[str]) -> list[str]:
        """Every benchmark's settings (and its scale against ``scale``), the metric groups, ``restore``."""
        from fluxir.evaluation.testsets import BenchmarkSpec

        found = []
        scale_ok = "scale" not in failed
        for key, entry in (self.benchmarks or {}).items():
            try:
                spec = BenchmarkSpec.from_params(entry)
            except (ValueError, TypeError) as err:
                found.append(f"evaluate.benchmarks.{key}: {err}")
                continue
            if scale_ok and spec.scale is not None and spec.scale != self.scale:
                found.append(
                    f"evaluate.benchmarks.{key}: hq_size/lq_size = {spec.scale} but evaluate.scale is {self.scale}"
                )
        try:
            parse_metric_groups(self.metrics)
        except (ValueError, TypeError) as err:
            found.append(str(err))
        if scale_ok and "color_fix" not in failed:
            try:
                self.restore_config()
            except (ValueError, TypeError) as err:
                found.append(str(err))
        return found

    def restore_config(self) -> tuple[str, Any]:
        """(model, ``RestoreConfig``) of ``evaluate.restore`` with this config's scale and colour fix."""
        from fluxir.restoration.restore_config import RestoreConfig

        params = dict(self.restore or {})
        if "model" not in params:
            raise ValueError(
                "evaluate.restore.model is missing: the Flux pipeline (hub id or local folder) the adapter controls"
            )
        model = params.pop("model")
        if "color_fix" in params:  # evaluation's colour fix is its own; a second one here would be silently overridden
            raise ValueError("evaluate.restore.color_fix is not read: evaluation uses evaluate.color_fix; remove it")
        if params.setdefault("scale", self.scale) != self.scale:
            raise ValueError(
                f"evaluate.restore.scale {params['scale']!r} differs from evaluate.scale {self.scale!r}; "
                "set only evaluate.scale"
            )
        return model, RestoreConfig.from_params({**params, "color_fix": self.color_fix})


def parse_metric_groups(metrics: Mapping[str, Any]) -> dict[str, dict[str, MetricSpec]]:
    """``evaluate.metrics`` as ``{"full_reference": {label: MetricSpec}, "no_reference": {label: MetricSpec}}``."""
    if not isinstance(metrics, Mapping) or set(metrics) - {"full_reference", "no_reference"}:
        raise ValueError(
            "evaluate.metrics must be {full_reference: {LABEL: pyiqa spec}, no_reference: {LABEL: spec}}, "
            f"got {metrics!r}"
        )
    groups = {
        g: {str(label): MetricSpec.parse(spec) for label, spec in (metrics.get(g) or {}).items()}
        for g in ("full_reference", "no_reference")
    }
    if both := set(groups["full_reference"]) & set(groups["no_reference"]):
        raise ValueError(f"metric labels {sorted(both)} are used twice (full_reference and no_reference)")
    for group, mode in (("full_reference", "FR"), ("no_reference", "NR")):
        if wrong := [f"{label}: {s.name}" for label, s in groups[group].items() if s.metric_mode != mode]:
            raise ValueError(f"evaluate.metrics.{group} holds metrics of the other kind: {wrong}")
    if not groups["full_reference"] and not groups["no_reference"]:
        raise ValueError("evaluate.metrics names no metric")
    return groups
