"""Which restorer a run uses: FluxIR (Flux + the trained adapter) or one of the public restorers.

``restore.method`` (restore pipeline, web app) and ``evaluate.methods`` (evaluate pipeline) name them:

- ``fluxir``: ``fluxir.restoration.sampler.Restorer`` with the catalog's ``fluxir_adapter``;
- ``flux_controlnet``: ``fluxir.restoration.controlnet`` (public weights, settings ``baselines.flux_controlnet``);
- ``realesrgan``: ``fluxir.restoration.realesrgan`` (public weights, settings ``baselines.realesrgan``);
- ``bicubic`` (evaluation only): PIL bicubic.

Every restorer has ``restore(lq, progress=False, on_step=None) -> (H, W, 3) uint8`` and a ``config``
(a ``RestoreConfig``, or an ``OutputGeometry`` for the public ones) whose ``scale`` / ``target_size`` /
``color_fix`` set the output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESTORE_METHODS = ("fluxir", "flux_controlnet", "realesrgan")
PUBLIC_METHODS = ("flux_controlnet", "realesrgan")  # restorers with published weights, no training needed
EVALUATE_METHODS = ("fluxir", "bicubic", "flux_controlnet", "realesrgan")
TITLES = {
    "fluxir": "FluxIR",
    "bicubic": "Bicubic",
    "realesrgan": "Real-ESRGAN x4plus",
    "flux_controlnet": "Flux ControlNet upscaler",
}


def check_method(method: Any, allowed: tuple[str, ...], parameter: str) -> str:
    """``method`` if it is one of ``allowed``, else ValueError naming ``parameter``."""
    if method not in allowed:
        raise ValueError(f"{parameter} must be one of {allowed}, got {method!r}")
    return method


def check_methods(methods: Any) -> list[str]:
    """``evaluate.methods`` as a list: distinct names from ``EVALUATE_METHODS``, at least one."""
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
        raise ValueError(f"evaluate.methods must be a non-empty list of {EVALUATE_METHODS}, got {methods!r}")
    for method in methods:
        check_method(method, EVALUATE_METHODS, "each of evaluate.methods")
    if len(set(methods)) != len(methods):
        raise ValueError(f"evaluate.methods lists a method twice: {list(methods)}")
    return list(methods)


def public_config(method: str, baselines: Mapping[str, Any]) -> Any:
    """The validated settings of a public restorer from the ``baselines`` parameters."""
    from fluxir.restoration.controlnet import FluxControlNetConfig
    from fluxir.restoration.realesrgan import RealESRGANConfig

    check_method(method, PUBLIC_METHODS, "method")
    section = baselines.get(method) if isinstance(baselines, Mapping) else None
    if section is None:
        raise ValueError(f"parameters baselines.{method} are missing (conf/base/parameters_baselines.yml)")
    config_class = FluxControlNetConfig if method == "flux_controlnet" else RealESRGANConfig
    return config_class.from_params(dict(section))


def output_geometry(method: str, scale: Any, target_size: Any, color_fix: str) -> Any:
    """The ``OutputGeometry`` a public restorer reads its output size and colour fix from. Real-ESRGAN gets no
    colour fix (its published inference has none); the Flux ControlNet gets FluxIR's."""
    from fluxir.restoration.restore_config import OutputGeometry

    fix = "none" if method == "realesrgan" else color_fix
    return OutputGeometry(scale=scale, target_size=target_size, color_fix=fix)


def build_public(method: str, cfg: Any, geometry: Any) -> Any:
    """Load a public restorer (``cfg`` from ``public_config``); ``geometry``: a RestoreConfig for the output."""
    if method == "flux_controlnet":
        from fluxir.restoration.controlnet import ControlNetRestorer

        return ControlNetRestorer.from_config(cfg, geometry)
    from fluxir.restoration.realesrgan import RealESRGANRestorer

    return RealESRGANRestorer(cfg, geometry)


def public_fingerprint(method: str, cfg: Any) -> str:
    """12 hex naming the weights a public restorer would load (checked before anything is loaded)."""
    from fluxir.restoration import controlnet, realesrgan

    return (controlnet if method == "flux_controlnet" else realesrgan).fingerprint(cfg)


def describe_public(method: str, cfg: Any) -> str:
    """One line on a public restorer's weights and settings (report, restore summary, app)."""
    from fluxir.restoration import controlnet, realesrgan

    return (controlnet if method == "flux_controlnet" else realesrgan).describe(cfg)


@dataclass(frozen=True)
class PublicFactory:
    """Builds a public restorer when first called; ``settings`` also size its work before it loads
    (``fluxir.restoration.work.check_output_size``)."""

    method: str
    settings: Any
    geometry: Any

    def __call__(self) -> Any:
        return build_public(self.method, self.settings, self.geometry)


def public_restorer_for(
    files: Mapping[str, Any], cfg: Any, adapter: Any, baselines: Mapping[str, Any], process_device: Any = None
) -> tuple[Any, Any, dict[str, Any]]:
    """What the restore pipeline needs for ``restore.method``: (restorer factory or None for FluxIR, the adapter,
    summary fields). FluxIR requires a trained adapter; a public method checks its weights here, before any
    photo is read, and takes the output size and colour fix from ``cfg`` (the ``restore.*`` RestoreConfig).
    ``process_device``: this process's accelerate device, used where the method's device is ``auto`` (each rank
    of a multi-process restore on its own GPU)."""
    from fluxir.datasets.adapter_dataset import require_adapter
    from fluxir.models.devices import resolve_device

    method = check_method(files["method"], RESTORE_METHODS, "restore.method")
    if method == "fluxir":
        return None, require_adapter(adapter, "restore.method: fluxir"), {"method": method}
    settings = public_config(method, baselines)
    settings = dataclasses.replace(settings, device=resolve_device(settings.device, process_device))
    public_fingerprint(method, settings)  # a missing weight file fails now, naming the parameter
    geometry = output_geometry(method, cfg.scale, cfg.target_size, cfg.color_fix)
    summary = {"method": method, "method_settings": describe_public(method, settings), "color_fix": geometry.color_fix}
    return PublicFactory(method, settings, geometry), None, summary
