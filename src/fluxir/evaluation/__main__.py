"""``python -m fluxir.evaluation`` / ``accelerate launch -m fluxir.evaluation``: restore the benchmarks outside
``kedro run``.

Restores the LQ images of the evaluate pipeline's ``benchmark_manifest`` with every restorer of
``evaluate.methods`` that runs here (or ``--methods``): FluxIR with ``evaluate.restore.*`` and the catalog's
``fluxir_adapter`` (``fluxir.evaluation.restore.restore_missing``), the public restorers with
``baselines.*`` (``restore_public_missing``), into the catalog's ``eval_outputs``. Outputs are keyed by
method, weights, settings and input, so ``kedro run --pipeline=evaluate`` afterwards reuses them and scores
and reports. Under ``accelerate launch`` process ``r`` of ``w`` restores every ``w``-th image on its own GPU;
the outputs are the same as from one process.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from accelerate.utils import gather_object

from fluxir.evaluation.restore import restore_missing, restore_public_missing
from fluxir.io.atomic import write_json_atomic
from fluxir.models.adapter import load_adapter
from fluxir.models.loading import resolve_device
from fluxir.parameters.config import load_catalog
from fluxir.restoration.methods import PUBLIC_METHODS, check_methods
from fluxir.runtime.entry import Input, finish, load_stage, process_state, stage_parser

PROG = "python -m fluxir.evaluation"


def main(argv: list[str] | None = None) -> None:
    """Restore the benchmark images on one or many processes."""
    inputs = {
        "eval_outputs": Input(None, Path),  # the evaluate pipeline's folder of every method's outputs
        "benchmark_manifest": Input(
            "--manifest", pd.read_parquet, "benchmark manifest parquet (default: the catalog's)"
        ),
    }
    parser = stage_parser(PROG, main.__doc__, "evaluate.restore.steps=20", inputs)
    parser.add_argument("--adapter", default=None, help="adapter folder (default: the catalog's latest fluxir_adapter)")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated restorers (fluxir, realesrgan, flux_controlnet; default: those of evaluate.methods)",
    )
    parser.add_argument(
        "--seconds", default=None, help="write {method: seconds per image restored now} of all processes here (JSON)"
    )
    args = parser.parse_args(argv)

    params, loaded = load_stage(args, PROG, ["evaluate"], inputs)
    evaluate = params["evaluate"]
    methods = check_methods(args.methods.split(",") if args.methods else evaluate["methods"])
    public = [m for m in methods if m in PUBLIC_METHODS]
    outputs, manifest = loaded["eval_outputs"], loaded["benchmark_manifest"]
    restore = evaluate["restore"]
    state = process_state(restore["device"])
    seconds: dict[str, list[float]] = {}
    if "fluxir" in methods:
        adapter = (
            load_adapter(args.adapter)
            if args.adapter
            else load_catalog(args.env, args.project, args.params).load("fluxir_adapter")
        )
        share = restore_missing(
            manifest,
            adapter,
            restore,
            outputs,
            evaluate["scale"],
            evaluate["color_fix"],
            state.process_index,
            state.num_processes,
            device=resolve_device(restore["device"], state.device),
        )
        seconds["fluxir"] = share.seconds
    if public:
        shares = restore_public_missing(
            manifest,
            public,
            params["baselines"],
            outputs,
            evaluate["scale"],
            evaluate["color_fix"],
            state.process_index,
            state.num_processes,
            state.device,
        )
        seconds |= {share.method: share.seconds for share in shares}
    every = gather_object([seconds])  # rank order
    if args.seconds and state.is_main_process:
        write_json_atomic(Path(args.seconds), {m: [x for share in every for x in share[m]] for m in seconds})
    finish(state, {"restored": {method: len(s) for method, s in seconds.items()}})


if __name__ == "__main__":
    main()
