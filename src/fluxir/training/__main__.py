"""``python -m fluxir.training`` / ``accelerate launch -m fluxir.training``: train outside ``kedro run``.

Reads the same Kedro configuration and catalog as the ``train`` pipeline, runs ``fluxir.training.loop.train``
on every process of the launch, and (rank 0 only) logs to MLflow and saves the adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from accelerate import PartialState

from fluxir.datasets.durable_parquet import write_parquet
from fluxir.models.adapter import FluxIRAdapter, save_adapter
from fluxir.models.devices import accelerate_cpu
from fluxir.parameters.config import cli_parser, load_catalog, stage_command_inputs
from fluxir.parameters.validation import check_params
from fluxir.runtime.tracking import command_run
from fluxir.training.checkpoints import weights_digest
from fluxir.training.config import TrainConfig, TrainFolders
from fluxir.training.loop import configure_cuda_allocator, train


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
    os.chdir(args.project)  # the training settings' relative folders (checkpoints, latent cache) are the project's
    args.project = "."

    inputs = {
        "pairs_manifest": (manifest_path, pd.read_parquet),
        "prompt_embeddings": (prompt_cache, Path),
        "train_checkpoints": (None, Path),  # the catalog's folders (runtime params train.checkpoint_dir, ...)
        "train_latent_cache": (None, Path),
    }
    cfg, loaded = stage_command_inputs(args, parser.prog, "train", check_params, TrainConfig.from_params, inputs)
    cfg.check_epoch_budget(len(loaded["pairs_manifest"]))  # before MLflow or any model
    state = PartialState(cpu=accelerate_cpu(cfg.device))

    report: list[dict[str, Any]] = []

    def record(step: int, adapter: FluxIRAdapter, info: dict[str, Any]) -> None:
        report.append({"step": step, "digest": weights_digest(adapter), **info})

    # Only rank 0 ever talks to MLflow (into the launching `kedro run`'s run, when there is one).
    tracked = state.is_main_process and not args.no_mlflow
    run_name, tags = "train-cli", {"fluxir.entry": parser.prog}
    with command_run(args.env, args.project, run_name, tags) if tracked else contextlib.nullcontext():
        if tracked:
            mlflow.set_tag("fluxir.num_processes", str(state.num_processes))
        result = train(
            cfg,
            loaded["pairs_manifest"],
            folders=TrainFolders(loaded["train_checkpoints"], loaded["train_latent_cache"]),
            progress=state.is_local_main_process,
            step_callback=record if report_path else None,
            prompt_cache=loaded["prompt_embeddings"],
        )
    if report_path:
        Path(f"{report_path}.rank{state.process_index}.json").write_text(
            json.dumps({"resumed_from": result.resumed_from, "steps": report})
        )
    if state.is_main_process:
        if output:
            save_adapter(result.adapter, output)
        else:
            load_catalog(args.env, args.project).save("fluxir_adapter", result.adapter)
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
