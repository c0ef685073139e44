"""Parameters: the Kedro config loader's settings, loading parameters and the catalog outside ``kedro run``,
``--params`` overrides and run files, and the argument parser every ``python -m fluxir...`` command starts from.

``settings.py`` takes ``CONFIG_LOADER_ARGS`` from here, so library code never imports the Kedro
settings module (which imports the hooks). How a config class checks the values it is built from is
``fluxir.parameters.rules``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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
    """``parameters`` of a Kedro environment with ``--params`` overrides, merged as ``kedro run`` merges them.

    ``overrides`` are ``--params`` values in command-line order (see ``parse_overrides``); the config loader
    gets them as Kedro's runtime parameters, so a value replaces one key and keeps its siblings.
    """
    return config_loader(env, project, runtime_params=parse_overrides(overrides))["parameters"]


def split_overrides(text: str) -> list[str]:
    """``"a=1,b.c=[[512,512],[768,768]]"`` -> ``["a=1", "b.c=[[512,512],[768,768]]"]``.

    A comma separates two overrides only outside brackets, braces and quotes, so lists and dicts are written
    in YAML flow syntax (``fluxgen.prompts=['a photo, at night', a portrait]``); Kedro's own ``--params``
    splits at every comma.
    """
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
    """One nested dict from ``--params`` values given in order: each is ``key.sub=value,...`` (values are
    YAML, as in Kedro: ``[[512, 512]]`` is a list, ``1e-5`` a float) or a mapping (a run file's ``params``).

    A later ``--params`` wins for the keys it sets and keeps the others (``--params a=1 --params b=2`` sets
    both; plain Kedro would keep only ``b``).
    """
    from omegaconf import OmegaConf

    merged = OmegaConf.create({})
    for group in groups:
        if isinstance(group, Mapping):
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(group)))
            continue
        items = split_overrides(group)
        bad = [item for item in items if not item.partition("=")[0].strip() or "=" not in item]
        if bad:
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


CATALOG_PATH_KEYS = ("filepath", "path", "hq_path", "lq_path")  # dataset arguments that are project paths


def catalog_config(
    env: str, project: str | Path = ".", overrides: Iterable[str | Mapping[str, Any]] = ()
) -> dict[str, dict[str, Any]]:
    """The catalog entries of an environment with ``--params`` ``overrides`` as runtime params (entries such as
    ``restore_input`` read ``${runtime_params:restore.input_dir}``), relative paths taken from ``project``."""
    root = Path(project)
    entries = config_loader(env, project, runtime_params=parse_overrides(overrides))["catalog"]
    return {
        name: {**entry, **{key: str(root / entry[key]) for key in CATALOG_PATH_KEYS if entry.get(key)}}
        for name, entry in entries.items()
        if not name.startswith("_")
    }


def load_catalog(env: str, project: str | Path = ".", overrides: Iterable[str | Mapping[str, Any]] = ()) -> Any:
    """The Kedro ``DataCatalog`` of an environment outside a Kedro session (no hooks, no MLflow run): the one way
    the command lines and the preflight check build it. Relative paths are taken from ``project`` (as ``kedro
    run`` there does); ``overrides`` are the command's ``--params`` (``kedro run`` passes them to the catalog as
    runtime params too); ``load(name)`` gives a versioned dataset's latest version."""
    from kedro.io import DataCatalog

    return DataCatalog.from_config(catalog_config(env, project, overrides))


def lost_processes_warning(environ: Mapping[str, str] = os.environ) -> str | None:
    """The warning for an ``accelerate launch`` that asked for several processes and started one, else None.

    ``--cpu`` (or ``--num_processes N`` without ``--multi_gpu``) takes accelerate's single-process launcher,
    which still sets ``MASTER_PORT`` for N processes but starts one without ``WORLD_SIZE``.
    """
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
    """The env of a command given no ``--env``, chosen as ``kedro run`` chooses it: a run file's ``env``, else
    ``KEDRO_ENV``, else ``DEFAULT_ENV``."""
    return from_run_file or environ.get("KEDRO_ENV") or DEFAULT_ENV


ENV_HELP = (
    f"Kedro configuration environment (default {DEFAULT_ENV}, as for kedro run: conf/base plus your conf/local; "
    "tiny: the tiny random-weight models; base: conf/base alone)"
)


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
    """The argument parser every ``python -m fluxir...`` command starts from: ``--env``, ``--params``,
    ``-c/--config`` (a ``kedro run -c`` run file), ``--project``; ``args.params`` is a list for ``load_params``."""
    parser = _CliParser(prog=prog, description=description)
    parser.add_argument("--env", default=None, help=ENV_HELP)
    parser.add_argument(
        "--params",
        action="append",
        default=[],
        help=f"override, e.g. {params_example}; lists in YAML flow syntax, in quotes: "
        "'degrade.config.crop_sizes=[[512,512]]'; repeatable, later ones win per key",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        help="a kedro run file (YAML with a `run:` section); its env and params are defaults",
    )
    parser.add_argument("--project", default=".", help="Kedro project root (holds conf/)")
    return parser
