"""The project's Kedro hooks: check the parameters before anything runs; name, tag and end kedro-mlflow's run; log
what a run used and saved (docs/tracking.md); hand a node's child job the run's ``--env`` and ``--params``.
mlflow is imported inside the hooks: ``settings.py`` imports this module on every Kedro command."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from fluxir.compat import loaded_path, saved_path, set_experiment
from fluxir.parameters.config import default_env, flatten_dict
from fluxir.runtime.launch import ENV_VAR, PARAMS_VAR, PROJECT_VAR
from fluxir.runtime.tracking import DEFAULT_PIPELINE, kedro_run_options, log_new_params, rerun_command, tag_experiment

logger = logging.getLogger(__name__)


def pipeline_label(pipeline_names: Any) -> str:
    """``fluxgen`` for one pipeline, ``fluxgen+train`` for several, ``__default__`` for none."""
    if not pipeline_names:
        return DEFAULT_PIPELINE
    if isinstance(pipeline_names, str):
        return pipeline_names
    return "+".join(str(name) for name in pipeline_names)


def experiment_name(pipeline_names: Any, base: str = "fluxir") -> str:
    """The MLflow experiment of a run: ``<base>-<pipeline>`` for one named pipeline, else ``<base>``;
    ``FLUXIR_MLFLOW_EXPERIMENT`` (if set and not empty) wins over both."""
    if forced := os.environ.get("FLUXIR_MLFLOW_EXPERIMENT", "").strip():
        return forced
    if isinstance(pipeline_names, str):
        pipeline_names = [pipeline_names]
    names = [name for name in (pipeline_names or []) if name != DEFAULT_PIPELINE]
    if len(names) == 1 and len(pipeline_names) == 1:
        return f"{base}-{names[0]}"
    return base


def git_commit(project_path: str | os.PathLike) -> tuple[str | None, bool | None]:
    """(commit sha, tracked files changed?) of the checkout holding ``project_path``; (None, None) outside a
    checkout or without git. ``FLUXIR_GIT_COMMIT`` wins (containers and CI copies without ``.git``)."""
    if forced := os.environ.get("FLUXIR_GIT_COMMIT", "").strip():
        return forced, None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=project_path, capture_output=True, text=True, timeout=30, check=True
        ).stdout

    try:
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


class ParameterCheckHook:
    """Check every parameter the pipeline about to run reads (and the catalog folders of its stages) in the
    outermost ``before_pipeline_run`` wrapper: one ``ConfigError`` stops the run with nothing written (no MLflow
    run, no dataset version)."""

    def __init__(self) -> None:
        self._context: Any = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._context = context

    @hook_impl(wrapper=True, tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> Any:
        from fluxir.parameters.validation import groups_read, problems_for, raise_problems

        if self._context is not None:
            groups = groups_read(pipeline.inputs())
            raise_problems(
                problems_for(self._context.params, groups, self._context.config_loader["catalog"]),
                f"kedro run --pipeline={pipeline_label(run_params.get('pipeline_names'))}",
            )
        return (yield)


def _store_lock(project_path: str | os.PathLike) -> Any:
    from fluxir.io.store import exclusive_lock

    return exclusive_lock(Path(project_path) / "mlflow.db.lock", "the MLflow store")


class MlflowRunHook:
    """kedro-mlflow's run in the experiment of its pipeline, named ``<pipeline>-<kedro run id>``, tagged with the Kedro
    run, the command that reruns it (``fluxir.command``) and the git commit. kedro-mlflow creates the SQLite store's
    schema and the experiment when the context is created, and two first runs doing that together fail (``table ...
    already exists``): both steps run under ``<project>/mlflow.db.lock``."""

    def __init__(self) -> None:
        self._context: Any = None
        self._started_run: str | None = None

    @hook_impl(wrapper=True, tryfirst=True)
    def after_context_created(self, context: Any) -> Any:
        self._context = context
        with _store_lock(context.project_path):
            return (yield)

    @hook_impl(wrapper=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> Any:
        # Wraps kedro-mlflow's before_pipeline_run: choose the experiment and name before it starts the run,
        # tag the run once it is active.
        import mlflow

        outer = mlflow.active_run()
        with _store_lock(self._project_path(run_params)):
            self._choose_experiment(run_params)
            result = yield
        started = mlflow.active_run()
        self._started_run = started.info.run_id if started is not None and outer is None else None
        self._tag_run(run_params)
        return result

    @hook_impl(wrapper=True)
    def after_pipeline_run(self) -> Any:
        result = yield
        self._end_started_run("FINISHED")
        return result

    @hook_impl(wrapper=True)
    def on_pipeline_error(self) -> Any:
        result = yield
        self._end_started_run("FAILED")
        return result

    def _project_path(self, run_params: dict[str, Any]) -> Any:
        return run_params.get("project_path") or (self._context.project_path if self._context else ".")

    def _end_started_run(self, status: str) -> None:
        # kedro-mlflow reopens its run before every node and MLflow 3 stacks each reopening: its one ``end_run``
        # leaves the run active, so a second run in this process would log into it, and at exit MLflow would end a
        # failed run as FINISHED. A run active before the session (an orchestrator's) is left alone.
        import mlflow

        run_id, self._started_run = self._started_run, None
        while run_id is not None and (active := mlflow.active_run()) is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)

    def _choose_experiment(self, run_params: dict[str, Any]) -> None:
        import mlflow

        config = getattr(self._context, "mlflow", None)  # set by kedro-mlflow's after_context_created
        if config is None or mlflow.active_run() is not None:
            return  # kedro-mlflow absent, or a run started outside Kedro (an orchestrator's): leave it alone
        names = run_params.get("pipeline_names") or [DEFAULT_PIPELINE]
        if any(name in config.tracking.disable_tracking.pipelines for name in names):
            return
        base = config.tracking.experiment.name
        name = experiment_name(names, base=base)
        if name != base:
            try:
                set_experiment(config, name)
            except Exception:  # a tracking problem must not stop a run
                logger.warning("could not use MLflow experiment %r; logging to %r", name, base, exc_info=True)
                set_experiment(config, base)
        if config.tracking.run.name is None and config.tracking.run.id is None:
            config.tracking.run.name = f"{pipeline_label(names)}-{run_params.get('run_id') or ''}"

    def _tag_run(self, run_params: dict[str, Any]) -> None:
        import mlflow

        if (run := mlflow.active_run()) is None:
            return
        run_id = run_params.get("run_id") or ""
        command = rerun_command(run_params, kedro_run_options())
        tags = {
            "fluxir.command": command,
            "kedro_command": command,  # kedro-mlflow's tag, which drops --env and --params
            "kedro.run_id": run_id,
            "kedro.session_id": run_id,
            "kedro.pipeline": pipeline_label(run_params.get("pipeline_names")),
            "kedro.env": run_params.get("env") or "",
            "kedro.version": run_params.get("kedro_version") or "",
        }
        sha, dirty = git_commit(self._project_path(run_params))
        tags["git.commit"] = sha or "unknown"
        if sha:
            tags["mlflow.source.git.commit"] = sha
        if dirty is not None:
            tags["git.dirty"] = str(dirty).lower()
        mlflow.set_tags(tags)
        config = getattr(self._context, "mlflow", None)
        if config is not None:
            tag_experiment(run.info.experiment_id, config.tracking.experiment.create_experiment_kwargs.tags or {})
        experiment = mlflow.get_experiment(run.info.experiment_id).name
        logger.info("MLflow run %s (%s) in experiment %s", run.info.run_name, run.info.run_id, experiment)


class LaunchContextHook:
    """``--env``, ``--params`` and project root of the running ``kedro run`` for child jobs."""

    def __init__(self) -> None:
        self._previous: dict[str, str | None] | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._previous = {var: os.environ.get(var) for var in (ENV_VAR, PARAMS_VAR, PROJECT_VAR)}
        os.environ[ENV_VAR] = run_params.get("env") or default_env()
        os.environ[PARAMS_VAR] = json.dumps(dict(run_params.get("runtime_params") or {}), default=str)
        os.environ[PROJECT_VAR] = str(Path(run_params.get("project_path") or ".").resolve())

    @hook_impl
    def after_pipeline_run(self) -> None:
        previous, self._previous = self._previous or {}, None
        for var, value in previous.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value

    on_pipeline_error = after_pipeline_run  # the same hook implementation under the error hook's name


class MlflowDatasetsHook:
    """What a run's datasets tell its MLflow run: the FluxIR adapter it used as parameters
    ``fluxir_adapter.{version,fingerprint,...}`` (runs of two adapters told apart in MLflow's run table); datasets of
    kedro-viz layer ``reporting`` under ``reporting/``, of layer ``models`` under ``models/<name>/`` with their
    ``config.json`` values as parameters (``FLUXIR_MLFLOW_LOG_MODEL_WEIGHTS=false``: the JSON files only)."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._catalog: Any = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._params = context.params

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node: Any) -> None:
        from fluxir.datasets import FluxIRAdapterDataset, MissingAdapter

        dataset = self._catalog.get(dataset_name) if self._catalog is not None else None
        if not isinstance(dataset, FluxIRAdapterDataset) or isinstance(data, MissingAdapter):
            return
        import mlflow

        from fluxir.evaluation.restore import adapter_provenance
        from fluxir.restoration.methods import uses_adapter

        used = True  # False: a node whose method does not use the adapter loads it in vain
        if "evaluate_config" in node.inputs:
            used = uses_adapter((self._params.get("evaluate") or {}).get("methods", []))
        elif "params:restore" in node.inputs:
            used = uses_adapter([(self._params.get("restore") or {}).get("method")])
        if not used or mlflow.active_run() is None:
            return
        versioned = getattr(dataset, "_version", None) is not None
        provenance = adapter_provenance(data, loaded_path(dataset), versioned)
        if logged := log_new_params({f"{dataset_name}.{key}": value for key, value in provenance.items()}):
            logger.info("adapter of this run: %s", ", ".join(f"{k}={v}" for k, v in logged.items()))

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        import mlflow

        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name) if hasattr(self._catalog, "get") else None
        if dataset is None or type(dataset).__module__.startswith("kedro_mlflow"):
            return  # kedro-mlflow's own datasets log themselves
        layer = ((getattr(dataset, "metadata", None) or {}).get("kedro-viz") or {}).get("layer")
        path = saved_path(dataset) if layer in ("reporting", "models") else None
        if layer == "reporting" and path is not None and path.is_file():
            mlflow.log_artifact(str(path), artifact_path="reporting")
            logger.info("logged %s to MLflow run %s", path, mlflow.active_run().info.run_id)
        elif layer == "models" and path is not None and path.exists():
            log_model_folder(dataset_name, path)


def log_model_folder(dataset_name: str, path: Path) -> None:
    import mlflow

    artifact_path = f"models/{dataset_name}"
    with_weights = os.environ.get("FLUXIR_MLFLOW_LOG_MODEL_WEIGHTS", "true").strip().lower() not in {"0", "false", "no"}
    root, files = (path, sorted(p for p in path.rglob("*") if p.is_file())) if path.is_dir() else (path.parent, [path])
    for file in files:
        if with_weights or file.suffix == ".json":
            sub = file.parent.relative_to(root).as_posix()
            mlflow.log_artifact(str(file), artifact_path=artifact_path if sub == "." else f"{artifact_path}/{sub}")
    if (config := path / "config.json").is_file():
        log_new_params(flatten_dict({dataset_name: json.loads(config.read_text())}))
    mlflow.set_tags({f"{dataset_name}.path": str(path), f"{dataset_name}.weights_logged": str(with_weights).lower()})
    logger.info("logged model %s (%s) to MLflow run %s", dataset_name, path, mlflow.active_run().info.run_id)
