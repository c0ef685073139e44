"""IQA weight files: which files each pyiqa metric needs, where they live, and loading them offline.

The weight home is a TORCH_HOME-like folder (``iqa.weights_dir``) holding the released files under
their published names: ``hub/pyiqa`` (pyiqa's checkpoints, URL basenames so ``+`` stays ``%2B``),
``hub/clip`` (OpenAI's CLIP TorchScript archives) and ``hub/checkpoints`` (torchvision backbones).
Every file of a described metric is resolved here and handed to pyiqa explicitly; nothing is ever
downloaded (``fluxir.compat.no_downloads`` turns any attempt into a ``FileNotFoundError`` naming file and URL).

Checkpoints are loaded by :func:`load_checkpoint`, which compares the file's keys and shapes with the
architecture pyiqa built and names the file and the first differing keys, instead of pyiqa's own
loaders (LPIPS loads with ``strict=False`` and would silently ignore a wrong file).

OpenAI CLIP backbones are SHA-256 checked against the digest in their URL, as pyiqa's own loader does;
a file with another digest (a fine-tune, or the random-weight fixtures of
``scripts/make_iqa_fixture_weights.py``) is refused unless ``iqa.trust_weight_files: true``.

Only the standard library is imported at module level: kedro pipeline modules read these tables.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fluxir.io.provenance import sha256_file
from fluxir.iqa.specs import MetricSpec, parse_all, pyiqa_configs

log = logging.getLogger(__name__)

# Metrics checked to build and run in pyiqa 0.1.16 without any file (shared/reference/notes.md).
WEIGHT_FREE = frozenset(
    {
        "psnr",
        "psnry",
        "ssim",
        "ssimc",
        "ms_ssim",
        "cw_ssim",
        "fsim",
        "gmsd",
        "mad",
        "nlpd",
        "vif",
        "vsi",
        "entropy",
        "piqe",
    }
)

PYIQA_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
CLIP_URL = "https://openaipublic.azureedge.net/clip/models/"
TORCHVISION_URL = "https://download.pytorch.org/models/"
# File names as pyiqa 0.1.16 stores them (URL basenames, so "+" stays "%2B"); tests compare with pyiqa.
MUSIQ_FILES = {
    "koniq10k": "musiq_koniq_ckpt-e95806b9.pth",
    "ava": "musiq_ava_ckpt-e8d3f067.pth",
    "spaq": "musiq_spaq_ckpt-358bb6af.pth",
    "paq2piq": "musiq_paq2piq_ckpt-364c0c84.pth",
}
MANIQA_FILES = {"pipal": "MANIQA_PIPAL-ae6d356b.pth", "koniq": "ckpt_koniq10k.pt", "kadid": "ckpt_kadid10k.pt"}
CLIPIQA_FILES = {
    "clipiqa+": "CLIP-IQA%2B_learned_prompts-603f3273.pth",  # the bare prompt-context tensor
    "clipiqa+_rn50_512": "CLIPIQA%2B_RN50_512-89f5d940.pth",
    "clipiqa+_vitL14_512": "CLIPIQA%2B_ViTL14_512-e66488f2.pth",
}
CLIP_BACKBONES = {  # name -> (sha256 of the file, the directory of its URL; file name)
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
}
CLIP_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")
LPIPS_FILES = {
    "0.0_alex": "LPIPS_v0.0_alex-18720f55.pth",
    "0.0_vgg": "LPIPS_v0.0_vgg-b9e42362.pth",
    "0.0_squeeze": "LPIPS_v0.0_squeeze-c27abd3a.pth",
    "0.1_alex": "LPIPS_v0.1_alex-df73285e.pth",
    "0.1_vgg": "LPIPS_v0.1_vgg-a78928a0.pth",
    "0.1_squeeze": "LPIPS_v0.1_squeeze-4a5350f2.pth",
}
# The LPIPS release holds lin0..lin4 only; pyiqa's `lins` list aliases the same layers.
LPIPS_LINEAR_KEYS = r"lin\d+\."
LPIPS_BACKBONES = {  # pyiqa loads alex/vgg ImageNet weights even with pnet_rand; squeeze honours it
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


@dataclass
class _Settings:
    home: Path | None = None  # TORCH_HOME-like root chosen by configure_weights
    trust_files: bool = False  # accept CLIP backbones whose SHA-256 is not OpenAI's


_settings = _Settings()


# ----------------------------------------------------------------------------- metric options


def metric_options(spec: MetricSpec) -> dict[str, Any]:
    """pyiqa's default options for the metric overlaid with the spec's options."""
    return {**pyiqa_configs()[spec.name]["metric_opts"], **spec.options}


def musiq_key(opts: Mapping[str, Any]) -> str:
    key = opts.get("pretrained", "ava")  # pyiqa: pretrained=True means the AVA checkpoint
    return "ava" if key is True else str(key)


# ----------------------------------------------------------------------------- the weight home


def _default_torch_home() -> Path:
    """What torch.hub would use now, without importing torch when it is not loaded."""
    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir()).parent
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def weights_home() -> Path:
    """The TORCH_HOME-like folder weight files are looked up in."""
    return _settings.home if _settings.home is not None else _default_torch_home()


def configure_weights(weights_dir: str | os.PathLike | None, trust_files: bool = False) -> Path:
    """Use ``weights_dir`` as TORCH_HOME for IQA weights; return the pyiqa weight folder in use.

    Files then live in ``<weights_dir>/hub/pyiqa`` (pyiqa checkpoints), ``<weights_dir>/hub/clip``
    (OpenAI CLIP backbones) and ``<weights_dir>/hub/checkpoints`` (torchvision backbones). pyiqa fixes
    its own folder when first imported, so this raises if pyiqa is already loaded with another one.
    ``None`` keeps the current cache (``$TORCH_HOME`` or ``~/.cache/torch``). ``trust_files`` accepts
    CLIP backbones whose SHA-256 differs from OpenAI's (your own or fixture files).
    """
    if not isinstance(trust_files, bool):
        raise TypeError(f"iqa.trust_weight_files must be true or false, got {trust_files!r}")
    _settings.trust_files = trust_files
    if weights_dir is None:
        if "pyiqa" in sys.modules:
            from pyiqa.utils import download_util

            return Path(download_util.DEFAULT_CACHE_DIR)
        return weights_home() / "hub" / "pyiqa"
    home = Path(weights_dir).expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise NotADirectoryError(
            f"iqa.weights_dir {str(weights_dir)!r} is a file; give the folder that holds hub/pyiqa"
        )
    wanted = home / "hub" / "pyiqa"
    if "pyiqa" in sys.modules:
        from pyiqa.utils import download_util

        current = Path(download_util.DEFAULT_CACHE_DIR).expanduser().resolve()
        if current != wanted:
            raise RuntimeError(
                f"pyiqa was already imported with weight folder {current}; iqa.weights_dir={str(weights_dir)!r} "
                f"needs {wanted}. Call fluxir.iqa.configure_weights before anything imports pyiqa "
                f"(or set TORCH_HOME={home} in the environment)."
            )
    os.environ["TORCH_HOME"] = str(home)  # torchvision and CLIP read it at load time, pyiqa at import
    _settings.home = home
    return wanted


# ----------------------------------------------------------------------------- which files


@dataclass(frozen=True)
class Need:
    """One file a metric needs: where it must be, where it comes from, and its SHA-256 if published."""

    path: Path
    source: str  # "download from <url>" or a note for user-supplied files
    sha256: str | None = None


def _need(folder: Path, file: str, base_url: str, sha256: str | None = None) -> Need:
    return Need(folder / file, f"download from {base_url}{file}", sha256)


def _clip_needs(spec: MetricSpec, opts: Mapping[str, Any], hub: Path) -> tuple[list[Need], bool]:
    needs: list[Need] = []
    complete = True
    backbone = opts.get("backbone", "RN50")
    if backbone in CLIP_BACKBONES:
        sha, file = CLIP_BACKBONES[backbone]
        needs.append(_need(hub / "clip", file, f"{CLIP_URL}{sha}/", sha))
    elif backbone in CLIP_NAMES:
        complete = False
    else:  # pyiqa's CLIP loader also takes a checkpoint file
        needs.append(Need(Path(backbone).expanduser(), "your own file (backbone)"))
    model_type = opts.get("model_type", "clipiqa")
    if spec.pretrained and "clipiqa+" in model_type:
        if model_type in CLIPIQA_FILES:
            needs.append(_need(hub / "pyiqa", CLIPIQA_FILES[model_type], PYIQA_URL))
        else:
            complete = False
    return needs, complete


def _lpips_needs(spec: MetricSpec, opts: Mapping[str, Any], hub: Path, own: Any) -> tuple[list[Need], bool]:
    needs: list[Need] = []
    net, version = opts.get("net", "alex"), str(opts.get("version", "0.1"))
    complete = net in LPIPS_BACKBONES and f"{version}_{net}" in LPIPS_FILES
    if complete and (net in ("alex", "vgg") or not opts.get("pnet_rand", False)):
        needs.append(_need(hub / "checkpoints", LPIPS_BACKBONES[net], TORCHVISION_URL))
    if complete and spec.pretrained and own is None and opts.get("lpips", True):  # lpips=False: no linear layers
        needs.append(_need(hub / "pyiqa", LPIPS_FILES[f"{version}_{net}"], PYIQA_URL))
    return needs, complete


def plan_files(spec: MetricSpec) -> tuple[list[Need], bool]:
    """Files the metric reads when built offline, and whether that list is known to be complete."""
    opts = metric_options(spec)
    arch = opts["type"]
    hub = weights_home() / "hub"
    own = opts.get("pretrained_model_path")
    needs: list[Need] = []
    if own is not None:  # an explicit checkpoint replaces the default one
        needs.append(Need(Path(own).expanduser(), "your own file (pretrained_model_path)"))
    complete = True
    if arch == "MUSIQ":
        key = musiq_key(opts)
        if spec.pretrained and own is None:
            complete = key in MUSIQ_FILES
            if complete:
                needs.append(_need(hub / "pyiqa", MUSIQ_FILES[key], PYIQA_URL))
    elif arch == "MANIQA":
        # The ViT backbone needs no file: the MANIQA checkpoint is loaded strictly and replaces all of it.
        dataset = opts.get("train_dataset", "pipal")
        if spec.pretrained and own is None:
            complete = dataset in MANIQA_FILES
            if complete:
                needs.append(_need(hub / "pyiqa", MANIQA_FILES[dataset], PYIQA_URL))
    elif arch == "CLIPIQA":
        extra, complete = _clip_needs(spec, opts, hub)
        needs += extra
    elif arch == "LPIPS":
        extra, complete = _lpips_needs(spec, opts, hub, own)
        needs += extra
    else:
        complete = spec.name in WEIGHT_FREE
    return needs, complete


def needs(spec: MetricSpec) -> list[Need]:
    return plan_files(spec)[0]


@lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # size/mtime: a replaced file is hashed again
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached while its size and modification time stay the same."""
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


def file_problems(specs: list[MetricSpec]) -> list[str]:
    """One line per missing file or CLIP backbone with another SHA-256 (unless trusted); [] when all fit."""
    problems = []
    for spec in specs:
        for need in needs(spec):
            if not need.path.is_file():
                problems.append(f"{spec.name} needs {need.path.name} in {need.path.parent}; {need.source}")
            elif need.sha256 and not _settings.trust_files and file_sha256(need.path) != need.sha256:
                problems.append(
                    f"{spec.name}: {need.path} is not OpenAI's file (SHA-256 {file_sha256(need.path)[:12]}..., "
                    f"expected {need.sha256[:12]}...); replace it ({need.source}) or, for your own or fixture "
                    f"weights, set iqa.trust_weight_files: true"
                )
    return problems


def check_files(specs: list[MetricSpec]) -> None:
    """Raise one FileNotFoundError listing every missing or foreign weight file, where to put it, and its URL."""
    for spec in specs:
        if not plan_files(spec)[1]:
            log.warning(
                "IQA metric %r: its weight files are not known here; a missing one stops create_metrics", spec.name
            )
    problems = file_problems(specs)
    if problems:
        raise FileNotFoundError(
            f"{len(problems)} IQA weight file(s) missing or not the published ones (weight home {weights_home()}; "
            f"set iqa.weights_dir to a folder holding hub/pyiqa, hub/clip, hub/checkpoints, or use weight-free "
            f"metrics). Nothing is downloaded at run time:\n" + "\n".join(f"  {p}" for p in problems)
        )


# ----------------------------------------------------------------------------- loading offline


@dataclass
class LoadPlan:
    """How to build one metric from the weight home: extra pyiqa kwargs, then a checkpoint to load."""

    kwargs: dict[str, Any]
    checkpoint: Path | None = None  # loaded by load_checkpoint after pyiqa built the architecture
    only_keys: str | None = None  # regex: the checkpoint covers only these keys of the network (LPIPS)
    bare_tensor: bool = False  # clipiqa+ RN50: the file is the prompt-context tensor alone


def load_plan(spec: MetricSpec) -> LoadPlan:
    """Build every described metric with ``pretrained=False`` and load its file ourselves, checked."""
    opts = metric_options(spec)
    arch = opts["type"]
    found = {n.path.name: n.path for n in needs(spec)}
    plan = LoadPlan({} if spec.pretrained else {"pretrained": False})
    if "pretrained_model_path" in spec.options or not spec.pretrained:
        return _with_clip_backbone(plan, arch, opts, found)
    file = None
    if arch == "MUSIQ":
        file = MUSIQ_FILES.get(musiq_key(opts))
        if musiq_key(opts) == "ava":
            plan.kwargs.setdefault("num_class", 10)  # pyiqa sets this only when it resolves the URL itself
    elif arch == "MANIQA":
        file = MANIQA_FILES.get(opts.get("train_dataset"))
    elif arch == "CLIPIQA":
        file = CLIPIQA_FILES.get(opts.get("model_type", "clipiqa"))
        plan.bare_tensor = opts.get("model_type") == "clipiqa+" and opts.get("backbone", "RN50") == "RN50"
    elif arch == "LPIPS" and opts.get("lpips", True):
        file = LPIPS_FILES.get(f"{opts.get('version', '0.1')}_{opts.get('net', 'alex')}")
        plan.only_keys = LPIPS_LINEAR_KEYS
    if file in found:
        plan.kwargs["pretrained"] = False
        plan.checkpoint = found[file]
    return _with_clip_backbone(plan, arch, opts, found)


def _with_clip_backbone(plan: LoadPlan, arch: str, opts: Mapping[str, Any], found: Mapping[str, Path]) -> LoadPlan:
    backbone = opts.get("backbone", "RN50")
    if arch == "CLIPIQA" and backbone in CLIP_BACKBONES:
        plan.kwargs["backbone"] = str(found[CLIP_BACKBONES[backbone][1]])  # a file path: no hub lookup, no hash
    return plan


def _torch_load(path: Path) -> Any:
    import pickle
    import zipfile

    import torch

    try:  # weights_only=False as pyiqa does: these are pyiqa's own published checkpoints
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({err}); download it again") from err


def load_checkpoint(net: Any, path: Path, only_keys: str | None = None) -> None:
    """Load a pyiqa checkpoint (plain or ``{'params': state_dict}``) into ``net``, keys checked first.

    ``only_keys``: a regex; the file holds just the keys of ``net`` matching it (LPIPS' linear layers).
    Raises a ValueError naming the file and the missing, unexpected or mis-shaped keys.
    """
    from pyiqa.archs.arch_util import clean_state_dict

    state = _torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("params"), dict):
        state = state["params"]
    if not isinstance(state, dict):
        raise ValueError(  # noqa: TRY004  (a bad file, not a bad argument: same error as every other bad file)
            f"{path}: expected a state dict, found {type(state).__name__}; download the published file again"
        )
    state = clean_state_dict(state)
    own = {k: v for k, v in net.state_dict().items() if only_keys is None or re.match(only_keys, k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [
            f"{label} {len(keys)}: {keys[:5]}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise ValueError(
            f"{path} does not fit {type(net).__name__}: "
            + "; ".join(parts)
            + ". Is it the right file for this metric? Download the published one again."
        )
    net.load_state_dict(state, strict=only_keys is None)


def load_prompt_tensor(net: Any, path: Path) -> None:
    """clipiqa+ (RN50): the published file is the learned prompt context alone, (2 prompts, 16 tokens, 512)."""
    import torch

    ctx = _torch_load(path)
    want = tuple(net.prompt_learner.ctx.shape)
    if not isinstance(ctx, torch.Tensor) or tuple(ctx.shape) != want:
        got = tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
        raise ValueError(f"{path}: expected the prompt-context tensor of shape {want}, found {got}")
    net.prompt_learner.ctx.data = ctx.to(net.prompt_learner.ctx)


# ----------------------------------------------------------------------------- checks before building


def required_weight_files(spec: str | Mapping[str, Any] | MetricSpec) -> list[Path]:
    """Files this metric needs offline, under the configured weight home; empty for weight-free ones.

    Metrics outside this module's table also return ``[]`` (nothing known to check up front); building
    them still never downloads: a missing file raises at :func:`create_metrics`.
    """
    return [need.path for need in needs(MetricSpec.parse(spec))]


def check_weights(specs: Any) -> None:
    """Raise one FileNotFoundError listing every missing weight file of ``specs``, where to put it, and its URL."""
    check_files(parse_all(specs))
