"""VAE latents of every training pair, encoded once before training: sharded over processes, resumable.

Training's first epoch would otherwise encode on the critical path (per pair: two PNG decodes, two
sha256s, a bicubic upsample, a VAE encode and a cache write on every rank). This step fills the same
``LatentCache`` training reads (``fluxir.training.data``: the VAE's Gaussian parameters keyed by the
pair's sha256s, size, ``lq_scale`` and the VAE's identity) with only the VAE loaded. Process ``r`` of
``w`` encodes the pairs ``i % w == r`` (in image_id order); each entry is written atomically, so a killed
run keeps what it finished and the rerun encodes only the rest. With every entry cached, training opens
no image (the sizes come from ``pairs_manifest``).

    python -m fluxir.training.latents --env base
    accelerate launch --multi_gpu --num_processes 8 -m fluxir.training.latents --env base

``kedro run --pipeline=train`` runs the same step as its first node, ``precompute_latents`` (on
``train.num_processes`` processes: more than one launches this module as a child job).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fluxir.models.devices import resolve_device
from fluxir.models.loading import load_vae
from fluxir.training.config import TrainConfig
from fluxir.training.data import LatentCache, PairTable, encode_missing_latents, vae_identity

logger = logging.getLogger(__name__)


def precompute_latents(
    params: dict[str, Any] | TrainConfig,
    manifest: pd.DataFrame,
    process_index: int = 0,
    num_processes: int = 1,
    process_device: Any = None,
    progress: bool = True,
    *,
    cache_dir: str | Path,
) -> dict[str, Any]:
    """Encode this process's pairs of ``manifest`` that are not in ``cache_dir`` (the catalog's
    ``train_latent_cache``) yet.

    Returns what it did: pairs of this process, encoded now, found cached, the cache folder and VAE identity.
    """
    cfg = params if isinstance(params, TrainConfig) else TrainConfig.from_params(params)
    if not cfg.cache_latents:
        logger.info("train.cache_latents is false: no latent cache to fill (training encodes every step)")
        return {"pairs": 0, "encoded": 0, "cached": 0, "cache_dir": None, "vae_identity": None}
    pairs = PairTable.from_manifest(manifest, cfg.lq_scale)
    vae = load_vae(cfg.model, cfg.dtype, resolve_device(cfg.device, process_device)).requires_grad_(False).eval()
    cache = LatentCache(cache_dir, vae_identity(vae))
    counts = encode_missing_latents(vae, cache, pairs, process_index, num_processes, progress)
    logger.info(
        "latents[%d/%d]: %d pairs, %d encoded now, %d already cached in %s",
        process_index,
        num_processes,
        counts["pairs"],
        counts["encoded"],
        counts["cached"],
        cache.root,
    )
    return {**counts, "cache_dir": str(cache.root), "vae_identity": cache.vae_id}


def merge_counts(shares: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of the ranks' ``precompute_latents`` results (in rank order): counts summed, folder and VAE
    identity as the ranks share them."""
    merged = {key: shares[0][key] for key in ("cache_dir", "vae_identity")}
    return {**{key: sum(s[key] for s in shares) for key in ("pairs", "encoded", "cached")}, **merged}


def main(argv: list[str] | None = None) -> None:
    """Fill the latent cache of the training pairs on one or many processes (``accelerate launch -m ...``)."""
    from accelerate import PartialState

    from fluxir.models.devices import accelerate_cpu
    from fluxir.parameters.config import cli_parser, stage_command_inputs
    from fluxir.parameters.validation import check_params

    parser = cli_parser("python -m fluxir.training.latents", main.__doc__, "train.latent_cache_dir=/fast/latents")
    # (train.latent_cache_dir is the runtime param the catalog entry train_latent_cache reads)
    parser.add_argument("--manifest", default=None, help="pairs parquet (default: the catalog's latest pairs_manifest)")
    parser.add_argument("--report", default=None, help="write this process's counts to <report>.rank<r>.json")
    args = parser.parse_args(argv)
    inputs = {"pairs_manifest": (args.manifest, pd.read_parquet), "train_latent_cache": (None, Path)}
    cfg, loaded = stage_command_inputs(args, parser.prog, "train", check_params, TrainConfig.from_params, inputs)
    manifest = loaded["pairs_manifest"]
    state = PartialState(cpu=accelerate_cpu(cfg.device))
    done = precompute_latents(
        cfg,
        manifest,
        state.process_index,
        state.num_processes,
        state.device,
        progress=state.is_local_main_process,
        cache_dir=loaded["train_latent_cache"],
    )
    if args.report:
        Path(f"{args.report}.rank{state.process_index}.json").write_text(json.dumps(done))
    state.wait_for_everyone()
    print(json.dumps({**done, "process_index": state.process_index, "processes": state.num_processes}))


if __name__ == "__main__":
    main()
