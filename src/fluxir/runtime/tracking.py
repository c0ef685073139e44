"""MLflow around a run: metric and parameter keys, the command line that reruns a run, the MLflow run of a
``python -m`` command. mlflow is imported inside functions: every Kedro command imports this module (the hooks)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fluxir.parameters.config import config_loader, default_env, flatten_dict, parse_overrides

# MLflow accepts letters, digits, ``_ - . /``, spaces and (except on Windows) ``:`` in metric and param keys.
_REFUSED_IN_KEYS = re.compile(r"[^\w.\- /]")


def mlflow_key(name: str) -> str:
    """The MLflow metric/param key for ``name``: ``+`` becomes ``plus`` (``clipiqa+_vitL14_512`` ->
    ``clipiqaplus_vitL14_512``, apart from the plain metric) and every character MLflow refuses on some platform
    (``:`` on Windows) becomes ``_``."""
    return _REFUSED_IN_KEYS.sub("_", str(name).replace("+", "plus"))


def mlflow_metric_values(values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{key: {"value": v, "step": 0}}`` (kedro-mlflow's metrics history format), keys through ``mlflow_key``;
    two names that map to one key are an error, not a silent overwrite."""
    out: dict[str, dict[str, float]] = {}
    for name, value in values.items():
        key = mlflow_key(name)
        if key in out:
            raise ValueError(f"two metrics map to the MLflow key {key!r} (one of them is {name!r}); rename one")
        out[key] = {"value": float(value), "step": 0}
    return out


def log_new_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Log to the active MLflow run the ``params`` it does not hold yet (MLflow refuses a second value, and
    kedro-mlflow already logs every ``params:*`` a node reads); returns what was logged."""
    import mlflow
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    present = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    keyed = {mlflow_key(k): v for k, v in params.items()}
    new = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in keyed.items() if k not in present}
    if new:
        mlflow.log_params(new)
    return new


def tag_experiment(experiment_id: str, tags: Mapping[str, Any]) -> dict[str, str]:
    """Give experiment ``experiment_id`` those of ``tags`` it has no value for (mlflow.yml's
    ``create_experiment_kwargs.tags`` reach only new experiments); returns what was set."""
    import mlflow

    client = mlflow.MlflowClient()
    present = client.get_experiment(experiment_id).tags
    new = {str(k): str(v) for k, v in tags.items() if k not in present}
    for key, value in new.items():
        client.set_experiment_tag(experiment_id, key, value)
    return new


@contextmanager
def command_run(env: str, project: str | Path, run_name: str, tags: Mapping[str, str]) -> Iterator[None]:
    """The MLflow run of a ``python -m`` command for the block, set up from the env's ``mlflow.yml`` as kedro-mlflow
    reads it. A ``kedro run`` that launched the command passes its run (``MLFLOW_RUN_ID``), left open for Kedro to end;
    otherwise a new run ``run_name`` is started and ended FINISHED, or FAILED when the block raises."""
    import mlflow
    from kedro.config import MissingConfigException
    from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig

    try:
        settings = config_loader(env, project)["mlflow"]
    except MissingConfigException:  # no mlflow.yml: kedro-mlflow's defaults
        settings = {}
    config = KedroMlflowConfig.model_validate(settings)
    if uri := os.environ.get("MLFLOW_TRACKING_URI") or config.server.mlflow_tracking_uri:
        mlflow.set_tracking_uri(uri)
    if parent_run := os.environ.get("MLFLOW_RUN_ID"):
        mlflow.start_run(run_id=parent_run)
    else:
        mlflow.set_experiment(config.tracking.experiment.name)
        mlflow.start_run(run_name=run_name, tags=dict(tags))
    tag_experiment(
        mlflow.active_run().info.experiment_id, config.tracking.experiment.create_experiment_kwargs.tags or {}
    )
    status = "FAILED"
    try:
        yield
        status = "RUNNING" if parent_run else "FINISHED"
    finally:
        mlflow.end_run(status=status)


# ------------------------------------------------------------------------------------------------
# The kedro run command line that reruns a run (tags fluxir.command and kedro_command)

DEFAULT_PIPELINE = "__default__"
RUN_FILE_META = "fluxir.run_file"  # where fluxir.cli's `kedro run` keeps the path of its -c run file
# kedro run's list options as run_params keys, in the order a command shows them (option: the key with dashes)
_LIST_OPTIONS = ("tags", "node_names", "from_nodes", "to_nodes", "from_inputs", "to_outputs", "namespaces")


def params_value(value: Any) -> str:
    """``value`` as ``--params`` text that parses back to it: plain where that round-trips (``data/photos``,
    ``0.5``), else JSON, which is YAML flow syntax (``[[512, 512]]``, ``"1"``)."""
    texts = [value] if isinstance(value, str) else []
    texts.append(json.dumps(value))
    for text in texts:
        try:
            if parse_overrides([{"k": None}, f"k={text}"])["k"] == value:
                return text
        except ValueError:
            continue
    return json.dumps(str(value))


def rerun_command(run_params: dict[str, Any], cli_options: dict[str, Any] | None = None) -> str:
    """A ``kedro run`` command line that reruns the run of ``run_params``. ``cli_options``: those of the ``kedro run``
    being run (click's), whose ``-c`` run file and ``--params`` as typed are kept; without them the runtime params
    are written out."""
    import shlex

    cli_options = cli_options or {}
    args = ["kedro", "run", f"--env={run_params.get('env') or default_env()}"]
    if cli_options.get("conf_source"):
        args.append(f"--conf-source={cli_options['conf_source']}")
    if cli_options.get("config"):
        args.append(f"--config={cli_options['config']}")
    if pipelines := [p for p in (run_params.get("pipeline_names") or []) if p != DEFAULT_PIPELINE]:
        args.append(f"--pipelines={','.join(pipelines)}")
    for key in _LIST_OPTIONS:
        if values := run_params.get(key):
            option = "--nodes" if key == "node_names" else "--" + key.replace("_", "-")
            args.append(f"{option}={','.join(str(v) for v in values)}")
    if run_params.get("load_versions"):
        args.append("--load-versions=" + ",".join(f"{k}:{v}" for k, v in run_params["load_versions"].items()))
    if cli_options.get("runner"):  # run_params hold no usable runner name
        args.append(f"--runner={cli_options['runner']}")
    if cli_options.get("runner_params"):
        args.append("--runner-params=" + ",".join(f"{k}={v}" for k, v in cli_options["runner_params"].items()))
    if cli_options.get("is_async"):
        args.append("--async")
    if run_params.get("only_missing_outputs"):
        args.append("--only-missing-outputs")
    if "cli_params" in cli_options:
        args += [f"--params={typed}" for typed in cli_options["cli_params"]]
    else:
        args += [
            f"--params={k}={params_value(v)}" for k, v in flatten_dict(run_params.get("runtime_params") or {}).items()
        ]
    return shlex.join(args)


def kedro_run_options() -> dict[str, Any]:
    """The options of the ``kedro run`` command this process is running, or ``{}`` (a session started from Python)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None or context.command.name != "run":
        return {}
    return {**context.params, "config": context.meta.get(RUN_FILE_META)}
