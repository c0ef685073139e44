"""kedro-mlflow 2.0.3: switch the experiment of a run that has not started yet; close the run it reopened.

``KedroMlflowConfig._set_experiment`` is private; kedro-mlflow has no public call that creates (or
restores) the experiment named in ``config.tracking.experiment.name`` and makes it current.

Its ``before_node_run`` reopens the pipeline's run before every node (``mlflow.start_run(run_id=...,
nested=True)``), which pushes the run on mlflow's active-run stack once per node, and its
``after_pipeline_run`` ends it once: the run stays active in the process afterwards.
"""

from __future__ import annotations

from typing import Any

from fluxir.compat import require

require("kedro-mlflow", ">=2.0.3,<2.1", __name__)


def set_experiment(config: Any, name: str) -> None:
    """Make ``name`` the experiment of kedro-mlflow's ``config`` (a ``KedroMlflowConfig``), creating it if needed."""
    config.tracking.experiment.name = name
    config._set_experiment()


def close_reopened_run(run_id: str | None, keep_one: bool = False) -> None:
    """Pop every entry of ``run_id`` left on mlflow's active-run stack, its stored status unchanged; with
    ``keep_one`` (the run was open before the pipeline started) it stays active once, as it was."""
    import mlflow

    if run_id is None:
        return
    while (run := mlflow.active_run()) is not None and run.info.run_id == run_id:
        mlflow.end_run(status=mlflow.MlflowClient().get_run(run_id).info.status)
    if keep_one:
        mlflow.start_run(run_id=run_id)
