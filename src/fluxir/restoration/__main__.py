"""``python -m fluxir.restoration`` / ``accelerate launch -m fluxir.restoration``: restore a folder outside ``kedro
run``, with the restore pipeline's parameters and catalog; each process restores its share on its own GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from accelerate.utils import gather_object

from fluxir.io.atomic import write_json_atomic
from fluxir.models.adapter import load_adapter
from fluxir.models.loading import resolve_device
from fluxir.parameters.config import catalog_config, load_catalog
from fluxir.restoration.files import plan_folder, restore_share, split_params, summarise_shares
from fluxir.restoration.methods import restorer_spec, uses_adapter
from fluxir.runtime.entry import finish, load_stage, print_json, process_state, stage_parser

PROG = "python -m fluxir.restoration"


def main(argv: list[str] | None = None) -> None:
    """Restore the catalog's ``restore_input`` into ``restore_output`` (``--params restore.input_dir=photos,
    restore.output_dir=restored`` sets them) on one or many processes."""
    parser = stage_parser(PROG, main.__doc__, "restore.input_dir=photos")
    parser.add_argument(
        "--plan", default=None, help="restore plan parquet (default: plan the catalog's restore_input now)"
    )
    parser.add_argument("--adapter", default=None, help="adapter folder (default: the catalog's latest fluxir_adapter)")
    parser.add_argument(
        "--summary", default=None, help="write the summary and the failures of all processes here (JSON)"
    )
    args = parser.parse_args(argv)

    # Without --plan the input folder is read here: the catalog's restore_input is checked with the parameters.
    folders = None if args.plan else catalog_config(args.env, args.project, args.params)
    params, _ = load_stage(args, PROG, ["restore", "baselines"], folders=folders)
    job, cfg = split_params(params["restore"])
    state = process_state(cfg.device)
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device, state.device))  # this process's GPU
    catalog = load_catalog(args.env, args.project, args.params)  # restore_input / _output read the runtime params
    job = dataclasses.replace(job, input_dir=catalog.load("restore_input"), output_dir=catalog.load("restore_output"))
    if args.plan:
        plan = pd.read_parquet(args.plan)
    else:
        plan = pd.DataFrame(plan_folder(job.input_dir, job.output_dir, job.overwrite))
    adapter = load_adapter(args.adapter) if args.adapter else None
    if adapter is None and uses_adapter([job.method]):  # a public restorer (restore.method) needs none
        adapter = catalog.load("fluxir_adapter")
    prompts = catalog.load("prompt_embeddings")  # the empty prompt, encoded once
    spec = restorer_spec(job.method, cfg, params["baselines"], job.model, adapter, prompts, state.device)
    share = restore_share(plan, job, spec, state.process_index, state.num_processes)
    shares = gather_object([share])  # every process's, in rank order
    if state.is_main_process:
        failures, summary = summarise_shares(plan, shares, job, cfg)
        if args.summary:
            write_json_atomic(Path(args.summary), {"failures": failures, "summary": summary}, default=str)
        print_json({k: v for k, v in summary.items() if k != "images"})
    finish(state, {"restored": len(share.results), "failed": len(share.failures)})


if __name__ == "__main__":
    main()
