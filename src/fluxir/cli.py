"""The project's commands: ``kedro run`` with fluxir's ``--params`` (repeatable, merged over the ``-c`` run file's,
lists in YAML flow syntax: Kedro 1.7's splits at every comma and, given twice, keeps the last), ``kedro outputs``
and ``kedro mlflow-ui``. Kedro takes ``run`` from this module; it is Kedro's own with one option replaced.
"""

from __future__ import annotations

import copy
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from fluxir.parameters.config import parse_overrides
from fluxir.runtime.tracking import RUN_FILE_META, mlflow_ui, show_outputs

PARAMS_HELP = (
    "Parameter overrides key.sub=value,... (values are YAML; lists and dicts in flow syntax, quoted for the "
    "shell: 'degrade.config.crop_sizes=[[512,512],[768,768]]'). Repeatable: later ones win per key, and all "
    "are merged over the params of a -c run file."
)


@click.group(name="fluxir")
def cli() -> None:
    """fluxir's project commands."""


def _run(cli_params: tuple[str, ...], **options: Any) -> Any:
    # The run file's params arrive as the default of Kedro's option name; this option has another name so
    # that click does not hand them to it, and both are merged here.
    from_file = (click.get_current_context().default_map or {}).get("params")
    try:
        options["params"] = parse_overrides([from_file, *cli_params] if from_file else cli_params)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--params") from error
    return kedro_run.callback(**options)


_params_option = click.Option(["--params", "cli_params"], multiple=True, type=click.UNPROCESSED, help=PARAMS_HELP)


# Kedro's own callback for -c returns the last value it read from the file, not the path, so the path is recorded
# (ctx.meta[RUN_FILE_META]) before it runs, for the command the run's MLflow tags name.
def _run_file_option(option: click.Option) -> click.Option:
    kept = copy.copy(option)
    read_file = option.callback

    def keep_path(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[RUN_FILE_META] = value
        return read_file(ctx, param, value) if read_file else value

    kept.callback = keep_path
    return kept


def _option(param: click.Parameter) -> click.Parameter:
    if param.name == "params":
        return _params_option
    if param.name == "config" and isinstance(param, click.Option):
        return _run_file_option(param)
    return param


run = click.Command(
    name="run",
    callback=_run,
    params=[_option(p) for p in kedro_run.params],
    help=kedro_run.help,
    short_help=kedro_run.short_help,
)
cli.add_command(run)


# `make demo` and `make mlflow`: their options are fluxir.runtime.tracking's (`kedro outputs --help`).
_PASS_ARGS = {"ignore_unknown_options": True, "help_option_names": []}


@cli.command(context_settings=_PASS_ARGS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def outputs(args: tuple[str, ...]) -> None:
    """What the runs of an env produced, and where."""
    show_outputs(list(args))


@cli.command("mlflow-ui", context_settings=_PASS_ARGS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def mlflow_ui_command(args: tuple[str, ...]) -> None:
    """MLflow's UI on the project's store, after the address of each experiment's runs table."""
    mlflow_ui(list(args))
