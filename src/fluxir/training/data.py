"""FluxIR training data (paper Sec. 3.3, 4.1): the pairs, their aspect buckets, the data order and the VAE latents.

Each global batch comes from one aspect bucket (paper: 1024x768, 768x768, 512x768), and the global batch of step
s is a function of (seed, s), so a resumed run sees exactly the data an uninterrupted one would. The VAE encoder's
Gaussian (mean, logvar) of HQ and the LQ condition is cached on disk; each step draws its own sample from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fluxir.io.atomic import atomic_file
from fluxir.io.images import read_image
from fluxir.io.provenance import hash_json, hash_tensors, sha256_file
from fluxir.models.controlled_flux import lq_condition
from fluxir.models.flux import denormalise_latents, normalise_latents
from fluxir.models.loading import autocast_off

MANIFEST_COLUMNS = (
    *("image_id", "hq_path", "lq_path", "hq_sha256", "lq_sha256"),
    *("width", "height", "lq_width", "lq_height"),  # recorded by the degradation: no process opens an image
)


@dataclass
class PairTable:
    """The training pairs, sorted by image_id."""

    rows: pd.DataFrame  # manifest columns
    lq_scale: int  # HQ side / LQ side (train.lq_scale)

    @classmethod
    def from_manifest(cls, manifest: pd.DataFrame, lq_scale: int) -> PairTable:
        """Check the manifest's columns and sizes (HQ sides multiples of 16, LQ exactly 1/lq_scale of HQ)."""
        if missing := [c for c in MANIFEST_COLUMNS if c not in manifest.columns]:
            raise ValueError(
                f"pairs manifest lacks column(s) {missing}; it needs {list(MANIFEST_COLUMNS)} "
                f"(the output of the fluxgen pipeline's degrade_pairs node)"
            )
        if manifest.empty:
            raise ValueError("pairs manifest is empty: run the fluxgen pipeline first (kedro run --pipeline=fluxgen)")
        rows = manifest.sort_values("image_id").reset_index(drop=True).copy()
        for row in rows.itertuples(index=False):
            (w, h), (lw, lh) = (int(row.width), int(row.height)), (int(row.lq_width), int(row.lq_height))
            if w % 16 or h % 16:
                raise ValueError(
                    f"pair {row.image_id}: HQ {row.hq_path} is (width, height)={(w, h)}; both sides must "
                    "be multiples of 16 (VAE /8 and 2x2 packing)"
                )
            if (lw * lq_scale, lh * lq_scale) != (w, h):
                raise ValueError(
                    f"pair {row.image_id}: LQ {row.lq_path} is {(lw, lh)} but must be exactly 1/{lq_scale} "
                    f"of the HQ size {(w, h)}, i.e. {(w // lq_scale, h // lq_scale)}"
                )
        rows[["width", "height"]] = rows[["width", "height"]].astype(int)
        return cls(rows, lq_scale)

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, num_validation: int) -> tuple[list[int], list[int]]:
        """(train indices, validation indices): the last ``num_validation`` pairs are held out."""
        n = len(self.rows)
        if num_validation >= n:
            raise ValueError(
                f"train.num_validation_pairs={num_validation} leaves no training pair out of {n}; use at most {n - 1}"
            )
        return list(range(n - num_validation)), list(range(n - num_validation, n))

    def buckets(self, indices: list[int]) -> dict[tuple[int, int], list[int]]:
        out: dict[tuple[int, int], list[int]] = {}
        for i in indices:
            out.setdefault((int(self.rows.width[i]), int(self.rows.height[i])), []).append(i)
        return out

    def data_key(self) -> str:
        return hash_json(self.rows[["image_id", "hq_sha256", "lq_sha256"]].astype(str).values.tolist())


def epoch_batches(
    buckets: dict[tuple[int, int], list[int]], global_batch: int, seed: int, epoch: int
) -> list[list[int]]:
    """The global batches of one epoch, each from one bucket, in an order drawn from (seed, epoch); a bucket whose
    size is not a multiple of the batch wraps around to the start of its permutation."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for size in sorted(buckets):
        items = np.asarray(buckets[size])[rng.permutation(len(buckets[size]))]
        items = np.resize(items, math.ceil(len(items) / global_batch) * global_batch)
        batches += [items[i : i + global_batch].tolist() for i in range(0, len(items), global_batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


class DataOrder:
    """Global batch of (0-based) optimizer step s = f(seed, s): epoch s // E, position s % E (E batches per epoch)."""

    def __init__(self, buckets: dict[tuple[int, int], list[int]], global_batch: int, seed: int) -> None:
        self.buckets, self.global_batch, self.seed = buckets, global_batch, seed
        self.per_epoch = sum(math.ceil(len(v) / global_batch) for v in buckets.values())
        self._epoch, self._batches = -1, []

    def batch(self, step: int) -> tuple[int, list[int]]:
        epoch = step // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.buckets, self.global_batch, self.seed, epoch)
        return epoch, self._batches[step % self.per_epoch]


# ----------------------------------------------------------------------------------------------------
# VAE latents and their cache


def load_pair_pixels(row: Any, lq_scale: int) -> tuple[Tensor, Tensor]:
    """(HQ (3, H, W), the LQ condition (3, H, W)), float32 in [-1, 1]."""
    lq = read_image(row.lq_path)  # (H/4, W/4, 3)
    lq_up = lq_condition(lq, lq.shape[0] * lq_scale, lq.shape[1] * lq_scale)  # (H, W, 3), as restoration sees it
    return to_unit(read_image(row.hq_path)), to_unit(lq_up)


def to_unit(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], the VAE's input range."""
    return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 127.5 - 1


def vae_identity(vae: Any) -> str:
    """Hash of the VAE's class, config (less the ``_`` entries: where it was loaded from) and weights."""
    h = hashlib.sha256(type(vae).__name__.encode())
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return hash_tensors(vae.state_dict(), h).hexdigest()[:16]


class LatentCache:
    """The VAE encoder's Gaussian parameters (2C, h, w) of each pair's HQ and LQ condition, on disk, keyed by the
    pair's sha256s, size, lq_scale and VAE identity: a changed image or VAE never reuses an entry."""

    def __init__(self, root: str | os.PathLike | None, vae_id: str) -> None:
        self.root = Path(root) if root is not None else None
        self.vae_id = vae_id

    def key(self, row: Any, lq_scale: int) -> str:
        payload = (
            f"{row.hq_sha256}|{row.lq_sha256}|{row.width}x{row.height}|x{lq_scale}|lq_condition-uint8|{self.vae_id}"
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, Tensor] | None:
        if self.root is None or not self.path(key).is_file():
            return None
        return load_file(self.path(key))

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        if self.root is None:
            return
        with atomic_file(self.path(key)) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a module's first parameter (diffusers' ``.dtype`` walks every sub-module: slow per step)."""
    p = next(module.parameters())
    return p.device, p.dtype


def encode_gaussian(vae: Any, images: Tensor) -> Tensor:
    """VAE encoder: images (B, 3, H, W) in [-1, 1] -> Gaussian parameters (B, 2C, h, w) = [mean, logvar]."""
    with autocast_off():  # the VAE's own dtype (see autocast_off)
        return vae.encode(images.to(*device_and_dtype(vae))).latent_dist.parameters


def pair_gaussians(vae: Any, cache: LatentCache, pairs: PairTable, index: int) -> tuple[Tensor, Tensor]:
    """(HQ, LQ) Gaussian parameters (2C, h, w) of one pair, from the cache or encoded (and cached)."""
    row = pairs.rows.iloc[index]
    key = cache.key(row, pairs.lq_scale)
    hit = cache.get(key)
    if hit is not None:
        return hit["hq"].to(*device_and_dtype(vae)), hit["lq"].to(*device_and_dtype(vae))
    for kind in ("hq", "lq"):  # the cache key trusts the manifest's sha256: check it when we read the file
        actual = sha256_file(row[f"{kind}_path"])
        if actual != row[f"{kind}_sha256"]:
            raise ValueError(
                f"pair {row.image_id}: {row[f'{kind}_path']} has sha256 {actual[:12]}... but the manifest "
                f"says {str(row[f'{kind}_sha256'])[:12]}...: the file changed after the manifest was "
                "written; rerun the fluxgen pipeline to rebuild pairs_manifest"
            )
    hq, lq_up = load_pair_pixels(row, pairs.lq_scale)
    with torch.no_grad():
        params = encode_gaussian(vae, torch.stack([hq, lq_up]))  # (2, 2C, h, w)
    cache.put(key, {"hq": params[0].cpu(), "lq": params[1].cpu()})
    return params[0], params[1]


def encode_missing_latents(
    vae: Any,
    cache: LatentCache,
    pairs: PairTable,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
) -> dict[str, int]:
    """Encode the uncached pairs ``i % num_processes == process_index``; each entry is written atomically, so a
    killed run keeps what it finished. Returns counts: pairs of this process, encoded now, found cached."""
    from fluxir.runtime.progress import progress as progress_bar

    mine = list(range(process_index, len(pairs), num_processes))
    todo = [i for i in mine if not cache.path(cache.key(pairs.rows.iloc[i], pairs.lq_scale)).is_file()]
    for i in progress_bar(todo, desc=f"latents[{process_index}]", unit="pair", disable=not progress):
        pair_gaussians(vae, cache, pairs, i)
    return {"pairs": len(mine), "encoded": len(todo), "cached": len(mine) - len(todo)}


# Adapted from diffusers.models.autoencoders.vae.DiagonalGaussianDistribution.sample (diffusers 0.42.1): the same
# logvar clamp to [-30, 20]; the noise comes from the caller's per-sample generator.
def gaussian_sample(params: Tensor, noise: Tensor, vae: Any) -> Tensor:
    """Normalised Flux latent (.., C, h, w) = ((mean + std * noise) - shift_factor) * scaling_factor."""
    mean, logvar = params.float().chunk(2, dim=-3)
    z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise.to(mean.device)
    return normalise_latents(vae, z)


def decode_latents(vae: Any, z: Tensor) -> Tensor:
    """Normalised latents (B, C, h, w) -> images (B, 3, 8h, 8w), about [-1, 1] (the frozen V_d)."""
    z = denormalise_latents(vae, z)
    with autocast_off():  # the VAE's own dtype, also under the training step's autocast (see autocast_off)
        return vae.decode(z.to(device_and_dtype(vae)[1])).sample
