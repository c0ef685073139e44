"""Kedro parameters for the scripts launched outside ``kedro run`` (``accelerate launch -m fluxir.<x>``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def load_params(env: str, overrides: list[str], project: str | Path = ".") -> dict[str, Any]:
    """``parameters`` of a Kedro environment with ``key.sub=value`` overrides, as ``kedro run --params``.

    ``overrides`` items may themselves be comma-separated (``a.b=1,c=2``), like ``kedro run --params``.
    """
    import yaml
    from kedro.config import OmegaConfigLoader

    from fluxir.settings import CONFIG_LOADER_ARGS

    conf = Path(project) / "conf"
    if not conf.is_dir():
        raise FileNotFoundError(f"no Kedro conf folder at {conf.resolve()}: run from the project root or pass --project")
    params = OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": env})["parameters"]
    for item in (p for group in overrides for p in group.split(",") if p):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return params


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (with ``prefix`` before every key); empty dicts stay values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def reject_unknown_keys(params: Mapping[str, Any], config_class: type, what: str) -> None:
    """Raise ValueError naming every key of ``params`` that is not a field of the dataclass ``config_class``.

    ``what`` names the group in the message, e.g. ``"fluxgen parameter(s)"``.
    """
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")


def load_catalog(env: str, project: str | Path = ".") -> Any:
    """The Kedro ``DataCatalog`` of an environment, for scripts run outside ``kedro run`` from the project root
    (catalog paths are relative to it); ``load(name)`` gives a versioned dataset's latest version."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from fluxir.settings import CONFIG_LOADER_ARGS

    conf = Path(project) / "conf"
    if not conf.is_dir():
        raise FileNotFoundError(f"no Kedro conf folder at {conf.resolve()}: run from the project root or pass --project")
    return DataCatalog.from_config(OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": env})["catalog"])
