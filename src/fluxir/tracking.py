"""MLflow helpers shared by the Kedro hooks (``hooks.py``) and the training loop (``training.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH


def log_new_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Log to the active MLflow run the ``params`` it does not hold yet; returns what was logged.

    MLflow refuses to log a parameter twice with another value, and kedro-mlflow already logs every
    ``params:*`` a node reads, so only new keys go out. Values are cut to MLflow's length limit.
    """
    present = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    new = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items() if k not in present}
    if new:
        mlflow.log_params(new)
    return new
