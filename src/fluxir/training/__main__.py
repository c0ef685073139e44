"""``python -m fluxir.training [latents]`` / ``accelerate launch -m fluxir.training [latents]``: the ``train``
pipeline's two steps outside ``kedro run``, with the same configuration and catalog; rank 0 logs and saves."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import mlflow
import pandas as pd

from fluxir.datasets import write_parquet
from fluxir.models.adapter import save_adapter
from fluxir.parameters.config import load_catalog
from fluxir.runtime.entry import Input, StageCommand, load_stage, print_json, process_state, shard, stage_parser
from fluxir.runtime.tracking import command_run
from fluxir.training.config import TrainConfig, TrainFolders
from fluxir.training.latents import precompute_latents
from fluxir.training.loop import configure_cuda_allocator, train

PROG = "python -m fluxir.training"
PAIRS = Input("--manifest", pd.read_parquet, "pairs parquet (default: the catalog's latest pairs_manifest)")
LATENT_CACHE = Input(None, Path)  # the catalog's folder (runtime param train.latent_cache_dir)


LATENTS = StageCommand(
    f"{PROG} latents",
    "Fill the latent cache of the training pairs on one or many processes.",
    "train.latent_cache_dir=/fast/latents",
    "train",
    TrainConfig.from_params,
    {"pairs_manifest": PAIRS, "train_latent_cache": LATENT_CACHE},
    lambda cfg, inputs, state: precompute_latents(
        cfg, inputs["pairs_manifest"], *shard(state), cache_dir=inputs["train_latent_cache"]
    ),
)


def main(argv: list[str] | None = None) -> None:
    """Train the FluxIR adapter on one or many processes (``accelerate launch -m fluxir.training``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["latents"]:
        LATENTS.main(argv[1:])
        return
    configure_cuda_allocator()  # before anything touches CUDA

    inputs = {
        "pairs_manifest": PAIRS,
        "prompt_embeddings": Input("--prompt-cache", Path, "cached prompt embeddings (default: the catalog's)"),
        "train_checkpoints": Input(None, Path),  # the catalog's folders (runtime params train.checkpoint_dir, ...)
        "train_latent_cache": LATENT_CACHE,
    }
    parser = stage_parser(
        PROG, f"{main.__doc__} `{PROG} latents` fills the latent cache.", "train.max_steps=50", inputs
    )
    parser.add_argument("--output", help="adapter folder (default: a new version of catalog fluxir_adapter)")
    parser.add_argument("--history", help="write the per-step history (the pipeline's train_history) here")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    args.manifest, output, history_path, args.prompt_cache = (
        Path(p).resolve() if p else None for p in (args.manifest, args.output, args.history, args.prompt_cache)
    )
    os.chdir(args.project)  # the training settings' relative folders (checkpoints, latent cache) are the project's
    args.project = "."
    params, loaded = load_stage(args, PROG, ["train"], inputs)
    cfg = TrainConfig.from_params(params["train"])
    cfg.check_epoch_budget(len(loaded["pairs_manifest"]))  # before MLflow or any model
    state = process_state(cfg.device)

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
            prompt_cache=loaded["prompt_embeddings"],
        )
    if state.is_main_process:
        if output:
            save_adapter(result.adapter, output)
        else:
            load_catalog(args.env, args.project).save("fluxir_adapter", result.adapter)
        if history_path:
            write_parquet(history_path, result.history)  # as the catalog's train_history: atomic, fsynced
        last = result.history.iloc[-1].to_dict() if len(result.history) else {}
        print_json(
            {
                "adapter": str(output or "catalog:fluxir_adapter"),
                "run_dir": str(result.run_dir),
                "resumed_from": result.resumed_from,
                "final_step": int(last.get("step", result.resumed_from)),
                "final_loss": last.get("loss"),
                "processes": state.num_processes,
            }
        )
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
