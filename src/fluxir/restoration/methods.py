"""The restore methods, in one registry: ``METHODS`` {name: entry}.

``restore.method`` (restore pipeline, web app) and ``evaluate.methods`` (evaluate pipeline) name them:

- ``fluxir``: ``fluxir.restoration.sampler.Restorer``, Flux + the trained adapter (the catalog's ``fluxir_adapter``);
- ``flux_controlnet``: ``fluxir.restoration.controlnet`` (public weights, settings ``baselines.flux_controlnet``);
- ``realesrgan``: ``fluxir.restoration.realesrgan`` (public weights, settings ``baselines.realesrgan``);
- ``bicubic`` (evaluation only, no restorer): PIL bicubic.

An entry knows its settings, how to load its restorer, what it costs per image (``plan``, ``warm_up``), its
fingerprint and one line describing it. Every restorer has ``restore(lq, progress=False, on_step=None) -> (H, W,
3) uint8`` and a ``config`` (the ``RestoreConfig``, or an ``OutputGeometry`` for a public one) whose ``scale`` /
``target_size`` / ``color_fix`` set the output. A ``RestorerSpec`` is everything one restorer is built from,
checked before its weights load (``restorer_spec``). A fourth restorer: its module and one entry here.
Heavy modules (torch, diffusers) are imported only when an entry is used.
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
    """What the runs need of a restore method; one subclass per method, one instance each in ``METHODS``."""

    name = ""
    title = ""
    needs_adapter = False  # restores with the trained adapter (the catalog's fluxir_adapter)
    load_fields: tuple[str, ...] = ()  # RestoreConfig fields that need the restorer reloaded (others apply to it)

    def settings(self, baselines: Mapping[str, Any]) -> Any:
        """Its own settings beside ``restore.*`` (a public method's ``baselines.<name>``); None: it has none."""
        return None

    def output(self, cfg: Any) -> Any:
        """What the restorer reads its output size and colour fix from."""
        return cfg

    def load(self, spec: RestorerSpec) -> Any:
        raise NotImplementedError

    def configure(self, restorer: Any, spec: RestorerSpec) -> None:
        """Give a loaded restorer the settings of ``spec`` that need no reload."""
        restorer.config = self.output(spec.config)

    def plan(self, height: int, width: int, cfg: Any, settings: Any) -> Any:
        """The ``RestoreWork`` of an (height, width) input, from the sizes alone (no model needed)."""
        raise NotImplementedError

    def bound(self, cfg: Any, settings: Any) -> tuple[float, str, str]:
        """(megapixels, parameter, why) of the largest output allowed: ``restore.max_output_megapixels`` (none
        where ``cfg`` is an evaluation's ``OutputGeometry``: the benchmark sets the size)."""
        return getattr(cfg, "max_output_megapixels", math.inf), "restore.max_output_megapixels", ""

    def warm_up(self, restorer: Any, work: Any) -> float:
        """Seconds per unit of ``work``, timed on the loaded ``restorer`` (``fluxir.restoration.work``)."""
        raise NotImplementedError

    def provenance(self, spec: RestorerSpec) -> dict[str, Any]:
        """What every output names besides the method."""
        return {}

    def summary(self, spec: RestorerSpec) -> dict[str, Any]:
        """Fields of a restore run's summary besides the method."""
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
        from fluxir.restoration.work import fluxir_work

        return fluxir_work(height, width, cfg)

    def warm_up(self, restorer: Any, work: Any) -> float:
        from fluxir.restoration.work import fluxir_warm_up

        return fluxir_warm_up(restorer, work)

    def provenance(self, spec: RestorerSpec) -> dict[str, Any]:
        """Flux's id and revision and the adapter's fingerprint (a hash of its weights)."""
        from fluxir.io.hashing import hash_tensors
        from fluxir.io.provenance import model_revision

        fields: dict[str, Any] = {
            "Model": spec.model,
            "Model-Revision": model_revision(spec.model) if spec.model else None,
        }
        if spec.adapter is not None and hasattr(spec.adapter, "state_dict"):
            fields["Adapter-Fingerprint"] = hash_tensors(spec.adapter.state_dict()).hexdigest()[:16]
        return fields


class PublicMethod(Method):
    """A restorer with published weights, settings ``baselines.<name>``; its module has the ``config_class``,
    ``load``, ``plan_work``, ``warm_up_rate``, ``fingerprint`` and ``describe``."""

    module = ""
    config_class = ""

    def _module(self) -> Any:
        return importlib.import_module(self.module)

    def settings(self, baselines: Mapping[str, Any]) -> Any:
        section = baselines.get(self.name) if isinstance(baselines, Mapping) else None
        if section is None:
            raise ValueError(f"parameters baselines.{self.name} are missing (conf/base/parameters_baselines.yml)")
        return getattr(self._module(), self.config_class).from_params(dict(section))

    def output(self, cfg: Any) -> Any:
        from fluxir.restoration.restore_config import OutputGeometry

        return OutputGeometry(scale=cfg.scale, target_size=cfg.target_size, color_fix=cfg.color_fix)

    def load(self, spec: RestorerSpec) -> Any:
        return self._module().load(spec.settings, self.output(spec.config))

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
        """The fingerprint of its weights."""
        return {"Restorer-Weights": spec.fingerprint}

    def summary(self, spec: RestorerSpec) -> dict[str, Any]:
        return {"method_settings": self.describe(spec.settings), "color_fix": self.output(spec.config).color_fix}


class RealESRGAN(PublicMethod):
    name = "realesrgan"
    title = "Real-ESRGAN x4plus"
    module = "fluxir.restoration.realesrgan"
    config_class = "RealESRGANConfig"

    def output(self, cfg: Any) -> Any:
        """Without a colour fix: Real-ESRGAN's published inference has none."""
        return dataclasses.replace(super().output(cfg), color_fix="none")


class FluxControlNet(PublicMethod):
    name = "flux_controlnet"
    title = "Flux ControlNet upscaler"
    module = "fluxir.restoration.controlnet"
    config_class = "FluxControlNetConfig"

    def bound(self, cfg: Any, settings: Any) -> tuple[float, str, str]:
        """The smaller of ``restore.max_output_megapixels`` and its own: it does not tile."""
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
    """The registry's entry ``name``; ValueError naming ``parameter`` for any other value."""
    if name not in METHODS:
        raise ValueError(f"{parameter} must be one of {RESTORE_METHODS}, got {name!r}")
    return METHODS[name]


def uses_adapter(methods: Any) -> bool:
    """Whether one of ``methods`` (names) restores with the trained adapter."""
    return any(m in METHODS and METHODS[m].needs_adapter for m in methods)


def check_methods(methods: Any) -> list[str]:
    """``evaluate.methods`` as a list: distinct names from ``EVALUATE_METHODS``, at least one."""
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
        raise ValueError(f"evaluate.methods must be a non-empty list of {EVALUATE_METHODS}, got {methods!r}")
    for name in methods:
        if name not in EVALUATE_METHODS:
            raise ValueError(f"each of evaluate.methods must be one of {EVALUATE_METHODS}, got {name!r}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"evaluate.methods lists a method twice: {list(methods)}")
    return list(methods)


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
        from fluxir.restoration.work import check_output_size

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
    """The spec of restore method ``name`` with ``config`` (``restore.*``) and its ``baselines.<name>`` settings.
    ``device``: this process's accelerate device, used where the method's device is ``auto`` (each process of a
    multi-process run on its own GPU). FluxIR takes a trained ``adapter`` (None: plain Flux; a ``MissingAdapter``
    fails, saying what to run); the others take none. A public method's weights are checked here: a missing file
    fails now, naming the parameter."""
    from fluxir.datasets.adapter_dataset import require_adapter
    from fluxir.models.loading import resolve_device

    entry = method_named(name, parameter)
    adapter = require_adapter(adapter, f"{parameter}: {name}") if entry.needs_adapter else None
    settings = entry.settings(baselines or {})
    if settings is not None:
        settings = dataclasses.replace(settings, device=resolve_device(settings.device, device))
        return RestorerSpec(entry, config, settings, fingerprint=entry.fingerprint(settings))
    return RestorerSpec(entry, config, None, model, adapter, prompt_cache)
