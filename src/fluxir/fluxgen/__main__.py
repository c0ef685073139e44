"""``python -m fluxir.fluxgen generate|score|content_filter|pairs``: FluxGen's stages outside ``kedro run``, reading
the same configuration and catalog and writing where the nodes do (a later ``kedro run`` reuses everything).

``generate``, ``score`` and ``content_filter`` run on every process of ``accelerate launch -m fluxir.fluxgen <stage>``;
``pairs`` takes its share from the launcher (SLURM, torchrun) or ``degrade.rank``/``degrade.world_size``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.fluxgen.content_filter import REVIEW_DUTY, ContentFilterConfig, run_filter
from fluxir.fluxgen.generate import GenerationConfig, run_generation
from fluxir.fluxgen.pairs import PairsStageConfig, degrade_selection, rank_and_world
from fluxir.fluxgen.score import IqaConfig, run_scoring
from fluxir.io.store import ImageStore
from fluxir.runtime.entry import Input, StageCommand, load_stage, print_json, run_subcommand, shard, stage_parser

PROG = "python -m fluxir.fluxgen"
MANIFEST = Input("--manifest", pd.read_parquet, "generated-images parquet (default: the catalog's latest)")


def _generate(cfg: GenerationConfig, inputs: dict[str, Any], state: Any) -> dict[str, Any]:
    store, done = run_generation(
        cfg, inputs["fluxgen_image_store"], *shard(state), prompt_cache=inputs["prompt_embeddings"]
    )
    return {"store": str(store.root), "generated": len(done)}


def _score(cfg: IqaConfig, inputs: dict[str, Any], state: Any) -> dict[str, Any]:
    parts, scored = run_scoring(cfg, inputs["generated_images"], inputs["iqa_parts"], *shard(state))
    return {"parts": str(parts), "scored": scored}


def _content_filter_config(fluxgen: dict[str, Any]) -> ContentFilterConfig:
    cfg = ContentFilterConfig.from_params(fluxgen["content_filter"])
    if not cfg.enabled:
        raise SystemExit(f"{PROG} content_filter: {REVIEW_DUTY} Nothing to score.")
    return cfg


def _content_filter(cfg: ContentFilterConfig, inputs: dict[str, Any], state: Any) -> dict[str, Any]:
    parts, scored = run_filter(cfg, inputs["generated_images"], inputs["nsfw_parts"], *shard(state))
    return {"parts": str(parts), "scored": scored}


STAGES = {
    "generate": StageCommand(
        f"{PROG} generate",
        "Generate FluxGen images on one or many processes.",
        "fluxgen.num_images=50",
        "fluxgen",
        GenerationConfig.from_params,
        {
            "fluxgen_image_store": Input(
                "--store", lambda path: ImageStore(Path(path)), "image store root (default: the catalog's)"
            ),
            "prompt_embeddings": Input("--prompt-cache", Path, "cached prompt embeddings (default: the catalog's)"),
        },
        _generate,
    ),
    "score": StageCommand(
        f"{PROG} score",
        "Score FluxGen images with the IQA metrics on one or many processes.",
        "iqa.batch_size=16",
        "iqa",
        IqaConfig.from_params,
        {
            "generated_images": MANIFEST,
            "iqa_parts": Input("--parts", Path, "score parts root (default: the catalog's)"),
        },
        _score,
    ),
    "content_filter": StageCommand(
        f"{PROG} content_filter",
        "Score FluxGen images with the content filter on one or many processes.",
        "fluxgen.content_filter.batch_size=32",
        "fluxgen",
        _content_filter_config,
        {
            "generated_images": MANIFEST,
            "nsfw_parts": Input("--parts", Path, "score parts root (default: the catalog's)"),
        },
        _content_filter,
    ),
}


def pairs(argv: list[str] | None = None) -> None:
    """Degrade this process's share of the kept images (the launcher's, or ``degrade.rank`` of
    ``degrade.world_size``) on every core."""

    prog = f"{PROG} pairs"
    inputs = {
        "iqa_selection": Input("--selection", pd.read_parquet, "IQA selection parquet (default: the catalog's latest)"),
        "pair_store": Input("--store", lambda path: ImageStore(Path(path)), "pair store root (default: the catalog's)"),
    }
    args = stage_parser(prog, pairs.__doc__, "degrade.workers=16", inputs).parse_args(argv)
    params, loaded = load_stage(args, prog, ["degrade"], inputs)
    cfg = PairsStageConfig.from_params(params["degrade"])
    rank, world_size = rank_and_world({"rank": cfg.rank, "world_size": cfg.world_size}, os.environ)
    stores, _, made = degrade_selection(
        loaded["iqa_selection"], loaded["pair_store"], cfg, rank=rank, world_size=world_size
    )
    print_json({"pairs": str(stores.lq.root.parent), "made": len(made), "rank": rank, "world_size": world_size})


def main(argv: list[str] | None = None) -> None:
    run_subcommand(PROG, {**{name: stage.main for name, stage in STAGES.items()}, "pairs": pairs}, argv)


if __name__ == "__main__":
    main()
