"""The restore methods, in one registry: ``METHODS`` {name: entry}, named by ``restore.method`` and
``evaluate.methods`` (plus ``bicubic``, evaluation only). Every restorer has ``restore(lq, progress=False,
on_step=None) -> (H, W, 3) uint8`` and a ``config`` whose ``scale`` / ``target_size`` / ``color_fix`` set the output.
A fourth restorer is its module and one entry here; heavy modules load only when an entry is used.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Method:
    """What the runs need of a restore method: its settings, how to load, plan, time, fingerprint and describe it.
    Each entry has ``load(spec)``, ``plan(height, width, cfg, settings)`` (the ``RestoreWork`` of an input, from the
    sizes alone) and ``warm_up(restorer, work)`` (seconds per unit of work, timed on the loaded restorer)."""

    name = ""
    title = ""
    needs_adapter = False  # restores with the trained adapter (the catalog's fluxir_adapter)
    load_fields: tuple[str, ...] = ()  # RestoreConfig fields that need the restorer reloaded (others apply to it)

    def settings(self, baselines: Mapping[str, Any]) -> Any:
        """Its own settings beside ``restore.*`` (a public method's ``baselines.<name>``); None: it has none."""
        return None

    def output(self, cfg: Any) -> Any:
        return cfg

    def configure(self, restorer: Any, spec: RestorerSpec) -> None:
        """Give a loaded restorer the settings of ``spec`` that need no reload."""
        restorer.config = self.output(spec.config)

    def bound(self, cfg: Any, settings: Any) -> tuple[float, str, str]:
        """(megapixels, parameter, why) of the largest output allowed (none for an evaluation's ``OutputGeometry``)."""
        return getattr(cfg, "max_output_megapixels", math.inf), "restore.max_output_megapixels", ""

    def provenance(self, spec: RestorerSpec) -> dict[str, Any]:
        """What every output names besides the method."""
        return {}

    def summary(self, spec: RestorerSpec) -> dict[str, Any]:
        return {}


class FluxIR(Method):
    """Flux + the trained adapter, with the ``restore.*`` settings (``RestoreConfig``)."""

    name = "fluxir"
    title = "FluxIR"
    needs_adapter = True
    load_fields = ("dtype", "device", "offload", "quantize", "max_sequence_length")

    def load(self, spec: RestorerSpec) -> Any:
        from fluxir.restoration.sampler import Restorer

        return Restorer.from_source(spec.model, spec.adapter, spec.config, spec.prompt_cache)

    def plan(self, height: int, width: int, cfg: Any, settings: Any) -> Any:
        """Diffusion tiles x steps."""
        from fluxir.restoration.restore_config import MULTIPLE, RestoreWork, output_size, round_up
        from fluxir.restoration.sampler import tile_spans

        out_h, out_w = output_size(height, width, cfg)
        token_tile = cfg.tile_size and cfg.tile_size // MULTIPLE
        rows = tile_spans(round_up(out_h) // MULTIPLE, token_tile, cfg.tile_overlap // MULTIPLE)
        cols = tile_spans(round_up(out_w) // MULTIPLE, token_tile, cfg.tile_overlap // MULTIPLE)
        unit = ((rows[0][1] - rows[0][0]) * MULTIPLE, (cols[0][1] - cols[0][0]) * MULTIPLE)
        tiles = len(rows) * len(cols)
        text = f"{tiles} tile(s) x {cfg.steps} steps"
        return RestoreWork((width, height), (out_w, out_h), tiles, cfg.steps, unit, "tile-step", text)

    def warm_up(self, restorer: Any, work: Any) -> float:
        """Seconds per tile-step, timed between two Euler steps on one tile of ``work``'s shape."""
        from fluxir.restoration.restore_config import time_two_steps

        return time_two_steps(restorer, work, steps=2, start_t=1.0)

    def provenance(self, spec: RestorerSpec) -> dict[str, Any]:
        """Flux's id and revision and the adapter's fingerprint (a hash of its weights)."""
        from fluxir.io.provenance import hash_tensors, model_revision

        fields: dict[str, Any] = {
            "Model": spec.model,
            "Model-Revision": model_revision(spec.model) if spec.model else None,
        }
        if spec.adapter is not None and hasattr(spec.adapter, "state_dict"):
            fields["Adapter-Fingerprint"] = hash_tensors(spec.adapter.state_dict()).hexdigest()[:16]
        return fields


class PublicMethod(Method):
    """A restorer with published weights, settings ``baselines.<name>``; its module has the ``config_class``,
    the ``restorer_class`` (built from those settings and an ``OutputGeometry``), ``plan_work``, ``warm_up_rate``,
    ``fingerprint`` and ``describe``."""

    module = config_class = restorer_class = ""

    def _module(self) -> Any:
        return importlib.import_module(self.module)

    def settings(self, baselines: Mapping[str, Any]) -> Any:  # a missing group: from_params names it
        return getattr(self._module(), self.config_class).from_params(baselines.get(self.name))

    def output(self, cfg: Any) -> Any:
        from fluxir.restoration.restore_config import OutputGeometry

        return OutputGeometry(scale=cfg.scale, target_size=cfg.target_size, color_fix=cfg.color_fix)

    def load(self, spec: RestorerSpec) -> Any:
        return getattr(self._module(), self.restorer_class)(spec.settings, self.output(spec.config))

    def configure(self, restorer: Any, spec: RestorerSpec) -> None:
        restorer.config, restorer.cfg = self.output(spec.config), spec.settings

    def plan(self, height: int, width: int, cfg: Any, settings: Any) -> Any:
        return self._module().plan_work(height, width, cfg, settings)

    def warm_up(self, restorer: Any, work: Any) -> float:
        return self._module().warm_up_rate(restorer, work)

    def fingerprint(self, settings: Any) -> str:
        """12 hex naming the weights it loads (checked before anything is loaded)."""
        return self._module().fingerprint(settings)

    def describe(self, settings: Any) -> str:
        """One line on its weights and settings (report, restore summary, app)."""
        return self._module().describe(settings)

    def provenance(self, spec: RestorerSpec) -> dict[str, Any]:
        return {"Restorer-Weights": spec.fingerprint}

    def summary(self, spec: RestorerSpec) -> dict[str, Any]:
        return {"method_settings": self.describe(spec.settings), "color_fix": self.output(spec.config).color_fix}


class RealESRGAN(PublicMethod):
    name = "realesrgan"
    title = "Real-ESRGAN x4plus"
    module = "fluxir.restoration.realesrgan"
    config_class, restorer_class = "RealESRGANConfig", "RealESRGANRestorer"

    def output(self, cfg: Any) -> Any:  # no colour fix: Real-ESRGAN's published inference has none
        return dataclasses.replace(super().output(cfg), color_fix="none")


class FluxControlNet(PublicMethod):
    name = "flux_controlnet"
    title = "Flux ControlNet upscaler"
    module = "fluxir.restoration.controlnet"
    config_class, restorer_class = "FluxControlNetConfig", "ControlNetRestorer"

    def bound(self, cfg: Any, settings: Any) -> tuple[float, str, str]:
        general = super().bound(cfg, settings)
        if settings.max_output_megapixels >= general[0]:
            return general
        why = " (the Flux ControlNet restores the whole image at once, without tiles: memory and time grow with it)"
        return settings.max_output_megapixels, "baselines.flux_controlnet.max_output_megapixels", why


METHODS: dict[str, Method] = {m.name: m for m in (FluxIR(), FluxControlNet(), RealESRGAN())}
RESTORE_METHODS = tuple(METHODS)
PUBLIC_METHODS = tuple(name for name, m in METHODS.items() if not m.needs_adapter)  # no training needed
EVALUATE_METHODS = ("fluxir", "bicubic", "flux_controlnet", "realesrgan")
TITLES = {**{name: m.title for name, m in METHODS.items()}, "bicubic": "Bicubic"}


def method_named(name: Any, parameter: str = "restore.method") -> Method:
    if name not in METHODS:
        raise ValueError(f"{parameter} must be one of {RESTORE_METHODS}, got {name!r}")
    return METHODS[name]


def uses_adapter(methods: Any) -> bool:
    """Whether one of ``methods`` (names) restores with the trained adapter."""
    return any(m in METHODS and METHODS[m].needs_adapter for m in methods)


@dataclass
class RestorerSpec:
    """Everything one restorer is built from, checked before its weights load."""

    method: Method
    config: Any  # the RestoreConfig: output size and colour fix (and FluxIR's sampler)
    settings: Any = None  # a public method's baselines.<name> config, its device resolved; FluxIR: None
    model: str | None = None  # FluxIR: the Flux pipeline (hub id or folder)
    adapter: Any = None  # FluxIR: the adapter (None: plain Flux)
    prompt_cache: str | Path | None = None  # FluxIR: the catalog's prompt_embeddings folder
    fingerprint: str | None = None  # a public method's weights (Method.fingerprint), computed once

    def load(self) -> Any:
        return self.method.load(self)

    def work(self, height: int, width: int, name: str) -> Any:
        """The ``RestoreWork`` of an (height, width) input; ValueError when its output is too large."""
        from fluxir.restoration.restore_config import check_output_size

        work = self.method.plan(height, width, self.config, self.settings)
        return check_output_size(work, self.config, name, self.method.bound(self.config, self.settings))

    def provenance(self) -> Any:
        """The PNG text chunks of every image it writes: the AI disclosure, the method and what identifies it."""
        from fluxir.io.provenance import png_text, restored_fields

        return png_text(restored_fields(self.method.name, **self.method.provenance(self)))


def restorer_spec(
    name: Any,
    config: Any,
    baselines: Mapping[str, Any] | None = None,
    model: str | None = None,
    adapter: Any = None,
    prompt_cache: str | Path | None = None,
    device: Any = None,
    parameter: str = "restore.method",
) -> RestorerSpec:
    """The spec of method ``name`` with ``config`` (``restore.*``) and its ``baselines.<name>`` settings, on ``device``
    where the method's device is ``auto``. A ``MissingAdapter`` or a public method's missing weights fail now."""
    from fluxir.datasets import require_adapter
    from fluxir.models.loading import resolve_device

    entry = method_named(name, parameter)
    adapter = require_adapter(adapter, f"{parameter}: {name}") if entry.needs_adapter else None
    settings = entry.settings(baselines or {})
    if settings is not None:
        settings = dataclasses.replace(settings, device=resolve_device(settings.device, device))
        return RestorerSpec(entry, config, settings, fingerprint=entry.fingerprint(settings))
    return RestorerSpec(entry, config, None, model, adapter, prompt_cache)
