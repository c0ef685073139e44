"""Parameters: the Kedro config loader's settings, loading outside ``kedro run``, and checking values.

``settings.py`` takes ``CONFIG_LOADER_ARGS`` from here, so library code never imports the Kedro
settings module (which imports the hooks). Every config class (``GenerationConfig``,
``DegradationConfig``, ``TrainConfig``, ``RestoreConfig``, ``BenchmarkSpec``, ``FluxIRConfig``) checks
its fields with one table of ``Rule`` rows and ``check_fields``, so "a positive integer, not a bool"
is written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kedro.config import OmegaConfigLoader

CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments (tiny, local) override single keys of a parameter group, not the whole group.
    "merge_strategy": {"parameters": "soft"},
}


def config_loader(env: str, project: str | Path = ".", **kwargs: Any) -> OmegaConfigLoader:
    """The project's ``OmegaConfigLoader`` for environment ``env``, as ``kedro run --env`` builds it."""
    conf = Path(project) / "conf"
    if not conf.is_dir():
        raise FileNotFoundError(f"no Kedro conf folder at {conf.resolve()}: run from the project root or pass --project")
    return OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": env}, **kwargs)


def load_params(env: str, overrides: list[str], project: str | Path = ".") -> dict[str, Any]:
    """``parameters`` of a Kedro environment with ``key.sub=value`` overrides, as ``kedro run --params``.

    ``overrides`` items may themselves be comma-separated (``a.b=1,c=2``), like ``kedro run --params``.
    """
    params = config_loader(env, project)["parameters"]
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


# ----------------------------------------------------------------------------------------------------
# One table-driven validator


def is_int(value: Any, minimum: int | None = None) -> bool:
    """``value`` is an integer (numpy's too; not a bool: YAML ``true`` is an int to Python), >= ``minimum`` if given."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# kind -> (test(value, extra), wording(extra)) of "<field> must be <wording>"
CHECKS: dict[str, tuple[Callable[[Any, Any], bool], Callable[[Any], str]]] = {
    "positive_int": (lambda v, _: is_int(v) and v >= 1, lambda _: "a positive integer"),
    "nonneg_int": (lambda v, _: is_int(v) and v >= 0, lambda _: "an integer >= 0"),
    "int_at_least": (lambda v, low: is_int(v) and v >= low, lambda low: f"an integer >= {low}"),
    "integer": (lambda v, _: is_int(v), lambda _: "an integer"),
    "multiple_of": (lambda v, m: is_int(v) and v >= m and v % m == 0, lambda m: f"a positive multiple of {m}"),
    "positive_number": (lambda v, _: _is_number(v) and v > 0, lambda _: "a number > 0"),
    "number_at_least": (lambda v, low: _is_number(v) and v >= low, lambda low: f"a number >= {low}"),
    "number_in": (lambda v, r: _is_number(v) and r[0] <= v < r[1], lambda r: f"a number in [{r[0]}, {r[1]})"),
    "probability": (lambda v, _: _is_number(v) and 0 <= v <= 1, lambda _: "a probability in [0, 1]"),
    "choice": (lambda v, options: v in options, lambda options: f"one of {tuple(options)}"),
}


@dataclass(frozen=True)
class Rule:
    """One row of a config class's table: ``field`` must pass ``CHECKS[kind]`` with ``extra``.

    ``nullable``: None is allowed too. ``must`` replaces the kind's wording (to cite the paper or give
    the reason); ``note`` follows the value in the message: a string, or a function of the value.
    """

    field: str
    kind: str
    extra: Any = None
    nullable: bool = False
    must: str | None = None
    note: str | Callable[[Any], str] = ""

    def __post_init__(self) -> None:
        if self.kind not in CHECKS:
            raise ValueError(f"Rule {self.field!r}: unknown kind {self.kind!r}; known: {sorted(CHECKS)}")

    def problem(self, value: Any, prefix: str) -> str | None:
        """The error message for ``value``, or None when it passes."""
        test, wording = CHECKS[self.kind]
        if (value is None and self.nullable) or (value is not None and test(value, self.extra)):
            return None
        must = self.must or wording(self.extra) + (" or null" if self.nullable else "")
        note = self.note(value) if callable(self.note) else self.note
        return f"{prefix}{self.field} must be {must}, got {value!r}{note}"


def check_fields(values: Any, rules: Iterable[Rule], prefix: str) -> None:
    """Raise ValueError "<prefix><field> must be ..., got <value>" for the first field breaking its rule.

    ``values`` is a dataclass instance or a mapping; ``prefix`` names the group, e.g. ``"train."``.
    """
    get = values.get if isinstance(values, Mapping) else lambda name: getattr(values, name)
    for rule in rules:
        message = rule.problem(get(rule.field), prefix)
        if message:
            raise ValueError(message)


def load_catalog(env: str, project: str | Path = ".") -> Any:
    """The Kedro ``DataCatalog`` of an environment, for scripts run outside ``kedro run`` from the project root
    (catalog paths are relative to it); ``load(name)`` gives a versioned dataset's latest version."""
    from kedro.io import DataCatalog

    return DataCatalog.from_config(config_loader(env, project)["catalog"])


def cli_parser(prog: str, description: str | None, params_example: str) -> argparse.ArgumentParser:
    """The argument parser every ``python -m fluxir...`` command starts from: ``--env``, ``--params``, ``--project``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--env", default="local", help="Kedro configuration environment (base, tiny, local)")
    parser.add_argument("--params", action="append", default=[],
                        help=f"override, e.g. {params_example} (repeatable; comma-separated like kedro run --params)")
    parser.add_argument("--project", default=".", help="Kedro project root (holds conf/)")
    return parser
