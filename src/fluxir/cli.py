"""The project's commands: ``kedro run`` with fluxir's ``--params`` (repeatable, merged over the ``-c`` run file's,
lists in YAML flow syntax: Kedro 1.7's splits at every comma and, given twice, keeps the last), ``kedro outputs``
and ``kedro mlflow-ui``. Kedro takes ``run`` from this module; it is Kedro's own with one option replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from fluxir.parameters.config import catalog_config, cli_parser, load_catalog, parse_overrides
from fluxir.runtime.tracking import RUN_FILE_META

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


def _option(param: click.Parameter) -> click.Parameter:
    if param.name == "params":
        return _params_option
    if param.name != "config" or not isinstance(param, click.Option):
        return param
    # Kedro's own callback for -c returns the last value it read from the file, not the path, so the path is
    # recorded (ctx.meta[RUN_FILE_META]) before it runs, for the command the run's MLflow tags name.
    kept, read_file = copy.copy(param), param.callback

    def keep_path(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[RUN_FILE_META] = value
        return read_file(ctx, param, value) if read_file else value

    kept.callback = keep_path
    return kept


run = click.Command(
    name="run",
    callback=_run,
    params=[_option(p) for p in kedro_run.params],
    help=kedro_run.help,
    short_help=kedro_run.short_help,
)
cli.add_command(run)


# ------------------------------------------------------------------------------------------------
# kedro outputs (``make demo`` ends with it) and kedro mlflow-ui (``make mlflow``): their options are argparse's,
# as every python -m command's (``kedro outputs --help``).

_PASS_ARGS = {"ignore_unknown_options": True, "help_option_names": []}
PRODUCED_ENTRIES = ("pairs_manifest", "fluxir_adapter", "evaluation_report_html")
PRODUCED = (  # (what, the pipeline that makes it, what else its command needs)
    ("pairs (HQ/LQ)", "fluxgen", ""),
    ("FluxIR adapter", "train", ""),
    ("evaluation report", "evaluate", ""),
    ("restored photos", "restore", " --params=restore.input_dir=<photos>"),
)


def produced(env: str, project: Path, overrides: list[Any] = ()) -> list[tuple[str, str, str]]:
    import pandas as pd

    from fluxir.compat import loaded_path
    from fluxir.io.store import portable_path  # relative to the working directory: the project's, below

    with contextlib.chdir(project):  # the catalog's paths are the project's
        catalog = load_catalog(env, project, overrides)
        manifest, adapter, report = (loaded_path(catalog.get(name)) for name in PRODUCED_ENTRIES)
        restored = Path(catalog_config(env, project, overrides)["restore_output"]["path"])
        pngs = sum(1 for _ in restored.rglob("*.png")) if restored.is_dir() else 0
        found = {}  # pipeline -> (what it made, where)
        if manifest is not None and manifest.is_file():
            pairs = pd.read_parquet(manifest)
            folder = Path(os.path.commonpath([*map(str, pairs["hq_path"]), *map(str, pairs["lq_path"])]))
            found["fluxgen"] = (f"{len(pairs)} pairs", f"{portable_path(folder)}/")
        if adapter is not None and adapter.is_dir():
            found["train"] = (f"version {adapter.parent.name}", f"{portable_path(adapter)}/")
        if report is not None and report.is_file():
            found["evaluate"] = ("Table 1 (HTML)", portable_path(report))
        if pngs:
            found["restore"] = (f"{pngs} PNGs", f"{portable_path(restored)}/")
        store = project / "mlflow.db"
        rows = [
            (what, *found.get(pipeline, ("none yet", f"kedro run --env {env} --pipelines={pipeline}{extra}")))
            for what, pipeline, extra in PRODUCED
        ]
        runs = "every run" if store.is_file() else "none yet"
        return [*rows, ("MLflow runs", runs, f"{portable_path(store)}: make mlflow prints each runs-table address")]


def table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"  {what:<{widths[0]}}  {count:<{widths[1]}}  {where}" for what, count, where in rows)


@cli.command(context_settings=_PASS_ARGS)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def outputs(argv: tuple[str, ...]) -> None:
    """What the runs of an env produced and where (the latest version of each versioned catalog entry), or what to
    run."""
    args = cli_parser("kedro outputs", outputs.help, "restore.output_dir=restored").parse_args(list(argv))
    project = Path(args.project).resolve()
    print(f"What the runs of env {args.env} produced, and where (under {project}):")
    print(table(produced(args.env, project, args.params)))


def runs_table_address(host: str, port: int, experiment_id: str) -> str:
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def experiments(store: Path) -> list[tuple[str, str]]:
    """(name, id) of the store's active experiments that hold runs, by name."""
    if not store.is_file():
        return []
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    found = [(e.name, e.experiment_id) for e in client.search_experiments()]
    return sorted((name, eid) for name, eid in found if client.search_runs([eid], max_results=1))


def addresses_text(store: Path, host: str, port: int) -> str:
    found = experiments(store)
    if not found:
        return (
            f"MLflow UI on http://{host}:{port}: no runs in {store} yet (make demo or kedro run writes them); "
            "an experiment's runs table is then at " + runs_table_address(host, port, "<id>")
        )
    width = max(len(name) for name, _ in found)
    lines = [f"MLflow UI on http://{host}:{port} ({store}); the runs table of each experiment:"]
    lines += [f"  {name:<{width}}  {runs_table_address(host, port, eid)}" for name, eid in found]
    return "\n".join(lines)


@cli.command("mlflow-ui", context_settings=_PASS_ARGS)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def mlflow_ui(argv: tuple[str, ...]) -> None:
    """MLflow's UI on the project's SQLite store (Ctrl-C stops it), after the address of each experiment's runs
    table: MLflow 3.17's UI opens an experiment on its GenAI overview whatever its ``mlflow.experimentKind`` tag."""
    parser = argparse.ArgumentParser(prog="kedro mlflow-ui", description=mlflow_ui.help)
    parser.add_argument("--store", default="mlflow.db", help="the SQLite tracking store (conf/base/mlflow.yml's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(list(argv))
    store = Path(args.store).resolve()
    print(addresses_text(store, args.host, args.port), flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}"]
    os.execv(sys.executable, [*command, "--host", args.host, "--port", str(args.port)])
