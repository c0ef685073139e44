"""MLflow helpers shared by the Kedro hooks (``hooks.py``), the pipelines' metric nodes, the training loop
(``training/loop.py``) and the run of a ``python -m`` command (``command_run``).

mlflow is imported inside the functions that talk to it: ``mlflow_key`` serves modules that must stay light.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# MLflow accepts letters, digits, ``_ - . /``, spaces and (except on Windows) ``:`` in metric and param keys.
_REFUSED_IN_KEYS = re.compile(r"[^\w.\- /]")


def mlflow_key(name: str) -> str:
    """The MLflow metric/param key for ``name``: the one mapping every key built from a metric name goes through.

    ``+`` becomes ``plus`` (``clipiqa+_vitL14_512`` -> ``clipiqaplus_vitL14_512``, so pyiqa's ``+`` variants
    stay apart from the plain metrics) and every other character MLflow refuses on some platform (``:`` included,
    which Windows refuses) becomes ``_``; everything else is kept.
    """
    return _REFUSED_IN_KEYS.sub("_", str(name).replace("+", "plus"))


def mlflow_metric_values(values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{key: {"value": v, "step": 0}}`` (kedro-mlflow's metrics history format) with every key through
    ``mlflow_key``; two names that map to one key are an error, not a silent overwrite."""
    out: dict[str, dict[str, float]] = {}
    for name, value in values.items():
        key = mlflow_key(name)
        if key in out:
            raise ValueError(f"two metrics map to the MLflow key {key!r} (one of them is {name!r}); rename one")
        out[key] = {"value": float(value), "step": 0}
    return out


def log_new_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Log to the active MLflow run the ``params`` it does not hold yet; returns what was logged.

    MLflow refuses to log a parameter twice with another value, and kedro-mlflow already logs every
    ``params:*`` a node reads, so only new keys go out. Keys go through ``mlflow_key``; values are cut to
    MLflow's length limit.
    """
    import mlflow
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    present = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    keyed = {mlflow_key(k): v for k, v in params.items()}
    new = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in keyed.items() if k not in present}
    if new:
        mlflow.log_params(new)
    return new


def tag_experiment(experiment_id: str, tags: Mapping[str, Any]) -> dict[str, str]:
    """Give experiment ``experiment_id`` those of ``tags`` it has no value for; returns what was set.

    mlflow.yml's ``create_experiment_kwargs.tags`` reach only experiments created from now on; this brings an
    older experiment to the same kind (``mlflow.experimentKind``) without overriding a user's own value.
    """
    import mlflow

    client = mlflow.MlflowClient()
    present = client.get_experiment(experiment_id).tags
    new = {str(k): str(v) for k, v in tags.items() if k not in present}
    for key, value in new.items():
        client.set_experiment_tag(experiment_id, key, value)
    return new


@contextmanager
def command_run(env: str, project: str | Path, run_name: str, tags: Mapping[str, str]) -> Iterator[None]:
    """The MLflow run of a ``python -m`` command for the block, set up from the env's ``mlflow.yml`` as
    kedro-mlflow reads it (``KedroMlflowConfig``: tracking URI, experiment, its tags).

    A ``kedro run`` that launched the command passes its run (``MLFLOW_RUN_ID``): the block logs into it and
    leaves it open for Kedro to end. Otherwise a new run ``run_name`` with ``tags`` is started in the
    experiment and ended FINISHED, or FAILED when the block raises. ``MLFLOW_TRACKING_URI`` wins over the file.
    """
    import mlflow
    from kedro.config import MissingConfigException
    from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig

    from fluxir.parameters.config import config_loader

    try:
        settings = config_loader(env, project)["mlflow"]
    except MissingConfigException:  # no mlflow.yml: kedro-mlflow's defaults
        settings = {}
    config = KedroMlflowConfig.model_validate(settings)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.server.mlflow_tracking_uri
    if uri:
        mlflow.set_tracking_uri(uri)
    parent_run = os.environ.get("MLFLOW_RUN_ID")
    if parent_run:
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
