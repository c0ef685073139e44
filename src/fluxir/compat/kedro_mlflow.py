"""kedro-mlflow 2.0.3: switch the experiment of a run that has not started yet.

``KedroMlflowConfig._set_experiment`` is private; kedro-mlflow has no public call that creates (or
restores) the experiment named in ``config.tracking.experiment.name`` and makes it current.
"""

from __future__ import annotations

from typing import Any

from fluxir.compat import require

require("kedro-mlflow", ">=2.0.3,<2.1", __name__)


def set_experiment(config: Any, name: str) -> None:
    """Make ``name`` the experiment of kedro-mlflow's ``config`` (a ``KedroMlflowConfig``), creating it if needed."""
    config.tracking.experiment.name = name
    config._set_experiment()
