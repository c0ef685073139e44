"""``python -m fluxir.evaluation`` / ``accelerate launch -m fluxir.evaluation``: restore the benchmarks outside
``kedro run`` (``restore.restore_methods``), process ``r`` of ``w`` every ``w``-th image on its own GPU, into the
catalog's ``eval_outputs``; ``kedro run --pipeline=evaluate`` afterwards reuses them, scores and reports.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
from accelerate.utils import gather_object

from fluxir.evaluation.config import EvaluateConfig
from fluxir.evaluation.restore import restore_methods
from fluxir.io.atomic import write_json_atomic
from fluxir.models.adapter import load_adapter
from fluxir.parameters.config import load_catalog
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
    config = EvaluateConfig.from_params(params["evaluate"])
    methods = replace(config, methods=args.methods.split(",")).methods if args.methods else config.methods
    adapter = None
    if "fluxir" in methods and args.adapter:
        adapter = load_adapter(args.adapter)
    elif "fluxir" in methods:
        adapter = load_catalog(args.env, args.project, args.params).load("fluxir_adapter")
    state = process_state(config.restore["device"])
    outputs = restore_methods(
        loaded["benchmark_manifest"],
        methods,
        config,
        loaded["eval_outputs"],
        adapter,
        params["baselines"],
        state.process_index,
        state.num_processes,
        state.device,
    )
    seconds = {share.method: share.seconds for share in outputs}
    every = gather_object([seconds])  # rank order
    if args.seconds and state.is_main_process:
        write_json_atomic(Path(args.seconds), {m: [x for share in every for x in share[m]] for m in seconds})
    finish(state, {"restored": {method: len(s) for method, s in seconds.items()}})


if __name__ == "__main__":
    main()
