"""``python -m fluxir.training`` / ``accelerate launch -m fluxir.training``: train outside ``kedro run``.

Reads the same Kedro configuration and catalog as the ``train`` pipeline, runs ``fluxir.training.loop.train``
on every process of the launch, and (rank 0 only) logs to MLflow and saves the adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from accelerate import PartialState
from kedro.config import MissingConfigException

from fluxir.config import cli_parser, config_loader, load_catalog, load_params
from fluxir.datasets.durable_parquet import write_parquet
from fluxir.models.adapter import FluxIRAdapter, save_adapter
from fluxir.models.flux import accelerate_cpu
from fluxir.training.checkpoints import weights_digest
from fluxir.training.config import TrainConfig, TrainFolders
from fluxir.training.loop import configure_cuda_allocator, train
from fluxir.validation import check_params


def main(argv: list[str] | None = None) -> None:
    """Train the FluxIR adapter on one or many processes (``accelerate launch -m fluxir.training``)."""
    configure_cuda_allocator()  # before anything touches CUDA

    parser = cli_parser("python -m fluxir.training", main.__doc__, "train.max_steps=50")
    parser.add_argument("--manifest", default=None, help="pairs parquet (default: the catalog's latest pairs_manifest)")
    parser.add_argument(
        "--output", default=None, help="adapter folder (default: a new version of catalog fluxir_adapter)"
    )
    parser.add_argument(
        "--history", default=None, help="write the per-step history (the train pipeline's train_history) here"
    )
    parser.add_argument("--report", default=None, help="write per-step weight digests to <report>.rank<r>.json")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--prompt-cache",
        default=None,
        help="folder of cached prompt embeddings (default: the catalog's prompt_embeddings path)",
    )
    args = parser.parse_args(argv)
    manifest_path, output, history_path, report_path, prompt_cache = (
        Path(p).resolve() if p else None
        for p in (args.manifest, args.output, args.history, args.report, args.prompt_cache)
    )

    os.chdir(args.project)  # relative paths of conf/ and the catalog are the project's
    params = load_params(args.env, args.params, ".")
    check_params(params, ["train"], "python -m fluxir.training")
    cfg = TrainConfig.from_params(params["train"])
    state = PartialState(cpu=accelerate_cpu(cfg.device))
    catalog = load_catalog(args.env, ".", args.params)  # train_checkpoints / _latent_cache read runtime params
    manifest = pd.read_parquet(manifest_path) if manifest_path else catalog.load("pairs_manifest")

    report: list[dict[str, Any]] = []

    def record(step: int, adapter: FluxIRAdapter, info: dict[str, Any]) -> None:
        report.append({"step": step, "digest": weights_digest(adapter), **info})

    # A `kedro run` that launched this job passes its run: rank 0 logs into it and leaves it open for Kedro to end.
    parent_run = os.environ.get("MLFLOW_RUN_ID")
    mlflow = None
    if state.is_main_process and not args.no_mlflow:  # only rank 0 ever talks to MLflow
        import mlflow

        from fluxir.tracking import tag_experiment

        try:
            settings = config_loader(args.env)["mlflow"]  # kedro-mlflow's mlflow.yml, as `kedro run` reads it
        except MissingConfigException:  # no mlflow.yml: MLflow's own defaults
            settings = {}
        uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.get("server", {}).get("mlflow_tracking_uri")
        if uri:
            mlflow.set_tracking_uri(uri)
        experiment = settings.get("tracking", {}).get("experiment", {})
        if parent_run:
            mlflow.start_run(run_id=parent_run)
        else:
            mlflow.set_experiment(experiment.get("name") or "fluxir")
            mlflow.start_run(run_name="train-cli", tags={"fluxir.entry": "python -m fluxir.training"})
        tag_experiment(
            mlflow.active_run().info.experiment_id, (experiment.get("create_experiment_kwargs") or {}).get("tags") or {}
        )
        mlflow.set_tag("fluxir.num_processes", str(state.num_processes))
    status = "FAILED"
    try:
        result = train(
            cfg,
            manifest,
            folders=TrainFolders(catalog.load("train_checkpoints"), catalog.load("train_latent_cache")),
            progress=state.is_local_main_process,
            step_callback=record if report_path else None,
            prompt_cache=prompt_cache or catalog.load("prompt_embeddings"),
        )
        status = "RUNNING" if parent_run else "FINISHED"
    finally:
        if mlflow is not None:
            mlflow.end_run(status=status)
    if report_path:
        Path(f"{report_path}.rank{state.process_index}.json").write_text(
            json.dumps({"resumed_from": result.resumed_from, "steps": report})
        )
    if state.is_main_process:
        if output:
            save_adapter(result.adapter, output)
        else:
            catalog.save("fluxir_adapter", result.adapter)
        if history_path:
            write_parquet(history_path, result.history)  # as the catalog's train_history: atomic, fsynced
        last = result.history.iloc[-1].to_dict() if len(result.history) else {}
        print(
            json.dumps(
                {
                    "adapter": str(output or "catalog:fluxir_adapter"),
                    "run_dir": str(result.run_dir),
                    "resumed_from": result.resumed_from,
                    "final_step": int(last.get("step", result.resumed_from)),
                    "final_loss": last.get("loss"),
                    "processes": state.num_processes,
                }
            )
        )
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
