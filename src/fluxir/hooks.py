"""Project hooks: every file saved to the reporting layer is also logged to the active MLflow run.

Versioned files in ``data/08_reporting`` keep each run's plots and reports on disk; MLflow gets the same
file as an artifact, so both the UI and the folder show them, without a second dataset per figure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class ReportingArtifactsHook:
    """Log each dataset saved with kedro-viz layer ``reporting`` to MLflow (under ``reporting/``)."""

    def __init__(self) -> None:
        self._catalog: Any = None

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        import mlflow

        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name) if hasattr(self._catalog, "get") else None
        layer = ((getattr(dataset, "metadata", None) or {}).get("kedro-viz") or {}).get("layer")
        if layer != "reporting":
            return
        path = _saved_path(dataset)
        if path is not None and path.is_file():
            mlflow.log_artifact(str(path), artifact_path="reporting")
            logger.info("logged %s to MLflow run %s", path, mlflow.active_run().info.run_id)


def _saved_path(dataset: Any) -> Path | None:
    """The file a (possibly versioned) file dataset just wrote, or None for non-file datasets."""
    if getattr(dataset, "_version", None) is not None:
        # _get_save_path() refuses once the file exists; the versioned path of this run's save version is it.
        return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)) if filepath is not None else None
