"""Parameters: loading them (and the catalog) outside ``kedro run``, ``--params`` overrides and run files, the argument
parser every ``python -m fluxir...`` command starts from, and ``Config``, the one way a config checks its values.
``settings.py`` takes ``CONFIG_LOADER_ARGS`` from here: library code never imports it (it imports the hooks)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from kedro.config import OmegaConfigLoader

logger = logging.getLogger(__name__)

# The one environment every command reads when given no --env: Kedro's own default run env, i.e. conf/base with
# the user's conf/local overlay on top (conf/local is honoured whenever it exists).
DEFAULT_ENV = "local"

CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": DEFAULT_ENV,
    # Environments (tiny, local) override single keys of a parameter group, not the whole group.
    "merge_strategy": {"parameters": "soft"},
    # kedro-mlflow's settings file, the pattern kedro-mlflow itself adds: readable by every loader, in a session or not
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]},
}


def config_loader(env: str, project: str | Path = ".", **kwargs: Any) -> OmegaConfigLoader:
    """The project's ``OmegaConfigLoader`` for environment ``env``, as ``kedro run --env`` builds it."""
    conf = Path(project) / "conf"
    if not conf.is_dir():
        raise FileNotFoundError(
            f"no Kedro conf folder at {conf.resolve()}: run from the project root or pass --project"
        )
    return OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": env}, **kwargs)


def load_params(env: str, overrides: Iterable[str | Mapping[str, Any]], project: str | Path = ".") -> dict[str, Any]:
    """``parameters`` of a Kedro environment with ``--params`` overrides (in command-line order), merged as ``kedro
    run`` merges them: a value replaces one key and keeps its siblings."""
    return config_loader(env, project, runtime_params=parse_overrides(overrides))["parameters"]


def split_overrides(text: str) -> list[str]:
    """``"a=1,b.c=[[512,512],[768,768]]"`` -> ``["a=1", "b.c=[[512,512],[768,768]]"]``: a comma separates two
    overrides only outside brackets, braces and quotes (Kedro's own ``--params`` splits at every comma)."""
    items, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth or quote:
        raise ValueError(
            f"--params {text!r}: unbalanced brackets or quotes (lists: 'key=[a, b]', in quotes for the shell)"
        )
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_overrides(groups: Iterable[str | Mapping[str, Any]]) -> dict[str, Any]:
    """One nested dict from ``--params`` values given in order: each is ``key.sub=value,...`` (values are YAML, as
    in Kedro) or a mapping (a run file's ``params``). A later one wins for the keys it sets and keeps the others
    (``--params a=1 --params b=2`` sets both; plain Kedro would keep only ``b``)."""
    from omegaconf import OmegaConf

    merged = OmegaConf.create({})
    for group in groups:
        if isinstance(group, Mapping):
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(group)))
            continue
        items = split_overrides(group)
        if bad := [item for item in items if not item.partition("=")[0].strip() or "=" not in item]:
            raise ValueError(f"--params item(s) {bad} are not of the form key.sub=value")
        merged = OmegaConf.merge(
            merged, OmegaConf.from_dotlist([f"{k.strip()}={v}" for k, _, v in (item.partition("=") for item in items)])
        )
    return OmegaConf.to_container(merged)


def run_file_options(path: str | Path | None) -> dict[str, Any]:
    """The ``run:`` section of a Kedro run file (``kedro run -c FILE``), ``{}`` without a file."""
    if path is None:
        return {}
    text = Path(path).read_text()
    options = (yaml.safe_load(text) or {}).get("run")
    if not isinstance(options, dict):
        raise ValueError(f"{path}: a run file holds a `run:` section with kedro run's options (env, params, ...)")  # noqa: TRY004
    return options


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (with ``prefix`` before every key); empty dicts stay values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def catalog_config(
    env: str, project: str | Path = ".", overrides: Iterable[str | Mapping[str, Any]] = ()
) -> dict[str, dict[str, Any]]:
    """The catalog entries of an environment with ``--params`` ``overrides`` as runtime params (``restore_input``
    reads ``${runtime_params:restore.input_dir}``), relative paths taken from ``project``."""
    entries = config_loader(env, project, runtime_params=parse_overrides(overrides))["catalog"]
    paths = ("filepath", "path", "hq_path", "lq_path")  # dataset arguments that are project paths
    return {
        name: {**entry, **{key: str(Path(project) / entry[key]) for key in paths if entry.get(key)}}
        for name, entry in entries.items()
        if not name.startswith("_")
    }


def load_catalog(env: str, project: str | Path = ".", overrides: Iterable[str | Mapping[str, Any]] = ()) -> Any:
    """The Kedro ``DataCatalog`` of an environment outside a Kedro session (no hooks, no MLflow run): the one way
    the command lines, the app and the preflight check build it; ``load(name)`` gives a versioned dataset's latest
    version."""
    from kedro.io import DataCatalog

    return DataCatalog.from_config(catalog_config(env, project, overrides))


def lost_processes_warning(environ: Mapping[str, str] = os.environ) -> str | None:
    """The warning for an ``accelerate launch`` that asked for several processes and started one, else None:
    ``--cpu`` (or no ``--multi_gpu``) takes accelerate's single-process launcher, which still sets ``MASTER_PORT``
    but no ``WORLD_SIZE``."""
    launched = "ACCELERATE_MIXED_PRECISION" in environ and "MASTER_PORT" in environ
    if not launched or "WORLD_SIZE" in environ:
        return None
    return (
        "accelerate launch asked for several processes but started ONE (accelerate's single-process launcher: "
        "--cpu, or no --multi_gpu); for N processes use `accelerate launch --multi_gpu --num_processes N ...` "
        "(on a machine without GPUs these are CPU processes; on a GPU machine set the stage's device to cpu, "
        "e.g. --params iqa.device=cpu)"
    )


def default_env(from_run_file: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The env of a command given no ``--env``, as ``kedro run`` chooses it."""
    return from_run_file or environ.get("KEDRO_ENV") or DEFAULT_ENV


class _CliParser(argparse.ArgumentParser):
    """Reads ``-c`` run files as ``kedro run -c`` does: the file's ``env`` and ``params`` are defaults that the
    command line overrides (``--params`` merged over the file's ``params``, key by key)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        try:
            options = run_file_options(parsed.config)
        except (OSError, ValueError) as error:
            self.error(str(error))
        if parsed.env is None:
            parsed.env = default_env(options.get("env"))
        parsed.params = [options["params"], *parsed.params] if options.get("params") else parsed.params
        if warning := lost_processes_warning():
            logger.warning("%s: %s", self.prog, warning)
        return parsed


def cli_parser(prog: str, description: str | None, params_example: str) -> argparse.ArgumentParser:
    """The argument parser every ``python -m fluxir...`` command starts from; ``args.params`` is a list for
    ``load_params``."""
    parser = _CliParser(prog=prog, description=description)
    parser.add_argument(
        "--env",
        help=f"Kedro configuration environment (default {DEFAULT_ENV}, as for kedro run: conf/base plus your "
        "conf/local; tiny: the tiny random-weight models; base: conf/base alone)",
    )
    parser.add_argument(
        "--params",
        action="append",
        default=[],
        help=f"override, e.g. {params_example}; lists in YAML flow syntax, in quotes: "
        "'degrade.config.crop_sizes=[[512,512]]'; repeatable, later ones win per key",
    )
    parser.add_argument(
        "-c", "--config", help="a kedro run file (YAML with a `run:` section); its env and params are defaults"
    )
    parser.add_argument("--project", default=".", help="Kedro project root (holds conf/)")
    return parser


# ------------------------------------------------------------------------------------------------
# How a config checks its values: the check kinds several configs use are written once here; a check one config
# alone needs is a predicate in its rules or plain Python in ``joint_problems``.


def is_int(value: Any, minimum: int | None = None) -> bool:
    """``value`` is an integer (numpy's too; not a bool: YAML ``true`` is an int to Python), >= ``minimum`` if given."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_number(value: Any) -> bool:
    """An int or float, not a bool (comparisons reject NaN wherever a rule compares)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_interval(value: Any, interval: str) -> bool:
    # interval as in mathematics: "(0, 1]", "[0, 1)"
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return is_number(value) and above and below


# kind -> (test(value, extra), wording(extra)) of "<field> must be <wording>": the kinds several configs use
CHECKS: dict[str, tuple[Callable[[Any, Any], bool], Callable[[Any], str]]] = {
    "positive_int": (lambda v, _: is_int(v, 1), lambda _: "a positive integer"),
    "nonneg_int": (lambda v, _: is_int(v, 0), lambda _: "an integer >= 0"),
    "integer": (lambda v, _: is_int(v), lambda _: "an integer"),
    "multiple_of": (lambda v, m: is_int(v, m) and v % m == 0, lambda m: f"a positive multiple of {m}"),
    "positive_number": (lambda v, _: is_number(v) and v > 0, lambda _: "a number > 0"),
    "number_at_least": (lambda v, low: is_number(v) and v >= low, lambda low: f"a number >= {low}"),
    "interval": (_in_interval, lambda interval: f"a number in {interval}"),
    "choice": (lambda v, options: v in options, lambda options: f"one of {tuple(options)}"),
    "text": (lambda v, _: isinstance(v, str) and bool(v.strip()), lambda _: "a non-empty string"),
}


@dataclass(frozen=True)
class Rule:
    """One row of a config's rules: ``field`` must pass ``CHECKS[kind]`` with ``extra``, or ``kind(value)`` when
    ``kind`` is a predicate (a check one config alone needs; ``must`` then says what it wants). ``must`` replaces the
    kind's wording (to cite the paper or give the reason); ``note`` follows the value in the message."""

    field: str
    kind: str | Callable[[Any], bool]
    extra: Any = None
    nullable: bool = False
    must: str | None = None
    note: str | Callable[[Any], str] = ""

    def __post_init__(self) -> None:
        if callable(self.kind) and self.must is None:
            raise ValueError(f"Rule {self.field!r}: a predicate needs `must`, the wording of what it accepts")
        if not callable(self.kind) and self.kind not in CHECKS:
            raise ValueError(f"Rule {self.field!r}: unknown kind {self.kind!r}; known: {sorted(CHECKS)}")

    def problem(self, value: Any, prefix: str) -> str | None:
        test, wording = (lambda v, _: self.kind(v), None) if callable(self.kind) else CHECKS[self.kind]
        if (value is None and self.nullable) or (value is not None and test(value, self.extra)):
            return None
        must = self.must or wording(self.extra) + (" or null" if self.nullable else "")
        note = self.note(value) if callable(self.note) else self.note
        return f"{prefix}{self.field} must be {must}, got {value!r}{note}"


def field_problems(values: Any, rules: Iterable[Rule], prefix: str) -> list[str]:
    """Every "<prefix><field> must be ..., got <value>" message of ``values`` (a dataclass, or a mapping checked
    only on the keys it has)."""
    if isinstance(values, Mapping):
        return [m for rule in rules if rule.field in values and (m := rule.problem(values[rule.field], prefix))]
    return [m for rule in rules if (m := rule.problem(getattr(values, rule.field), prefix))]


def check_fields(values: Any, rules: Iterable[Rule], prefix: str) -> None:
    """Raise ``ConfigError`` listing every message of ``field_problems`` (for values that are no config's field)."""
    raise_problems(field_problems(values, rules, prefix))


class ConfigError(ValueError):
    """Bad parameter values; ``problems`` holds one message per value. With ``where`` (the run or command about
    to start) the message lists them as the run's refusal: nothing was run or written."""

    def __init__(self, problems: Iterable[str], where: str | None = None) -> None:
        self.problems = list(problems)
        if where is None:
            super().__init__("; ".join(self.problems))
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} parameter problem(s) found before {where} started (nothing was run or written):"
            f"\n{lines}\n"
            "Fix them in conf/<env>/parameters_*.yml (folders: conf/<env>/catalog_*.yml) or with --params and run "
            "again."
        )


def raise_problems(problems: list[str], where: str | None = None) -> None:
    if problems:
        raise ConfigError(problems, where)


class Config:
    """The base of every config dataclass: ``Cls.from_params(mapping)`` builds one from its parameter group (unknown and
    missing keys refused, naming the valid ones); construction checks every value once and raises one ``ConfigError``
    listing every problem. A subclass sets ``PREFIX`` (the group in messages, e.g. ``"train."``) and ``RULES``; it
    overrides ``joint_problems`` for checks of several fields and ``prepare`` for what YAML gives in another form."""

    PREFIX: ClassVar[str] = ""
    RULES: ClassVar[tuple[Rule, ...]] = ()
    NOT_FIELDS: ClassVar[tuple[str, ...]] = ()  # keys of the group that other code reads (sub-groups, folders)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        group = cls.PREFIX.rstrip(".") or cls.__name__
        if not isinstance(params, Mapping):
            raise ConfigError(
                [f"parameter group {group!r} is missing or not a mapping (conf/base/parameters_*.yml defines it)"]
            )
        fields = [f for f in dataclasses.fields(cls) if f.init]
        known = sorted(f.name for f in fields)
        skipped = {*cls.NOT_FIELDS, *({"num_processes"} - set(known))}  # runtime.launch's setting: read by the node
        params = {k: v for k, v in params.items() if k not in skipped}
        problems = []
        if unknown := sorted(set(params) - set(known)):
            problems.append(f"unknown {group} parameter(s) {unknown}; known: {known}")
        required = [f.name for f in fields if f.default is MISSING and f.default_factory is MISSING]
        if missing := [name for name in required if name not in params]:
            problems.append(f"{group} lacks {missing}: conf/base's parameters files set every key")
        raise_problems(problems)
        return cls(**cls.prepare(params))

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def __post_init__(self) -> None:
        raise_problems(self.problems())

    def problems(self) -> list[str]:
        found = [(rule.field, m) for rule in self.RULES if (m := rule.problem(getattr(self, rule.field), self.PREFIX))]
        return [m for _, m in found] + self.joint_problems({field for field, _ in found})

    def joint_problems(self, failed: set[str]) -> list[str]:
        """Checks of several fields together; ``failed`` names the fields whose rules failed (reported already)."""
        return []
