"""Image quality assessment with pyiqa: no-reference scores for FluxGen selection, full-reference for evaluation.

Paper Sec. 3.1 selects generated images on CLIP-IQA, MANIQA and MUSIQ; Sec. 4.1 (footnote 2) names the
pyiqa models ``clipiqa+_vitL14_512``, ``maniqa-pipal`` and ``musiq`` and reports PSNR/SSIM/LPIPS.

Weights are never downloaded here. Every file a described metric needs is resolved under the configured
weight home (``<TORCH_HOME>/hub/...``, see :func:`configure_weights`) and handed to pyiqa explicitly, so
pyiqa's own cache directory (fixed when pyiqa is imported) only matters for metrics outside the table
below; for those a download attempt is turned into the same clear ``FileNotFoundError``.

Tiny environments use the same pyiqa code path with scorers that need no files: the weight-free
metrics (``entropy``, ``piqe``; ``psnr``, ``ssim``, ...) or a pyiqa architecture with random weights
(``{"name": "musiq", "pretrained": False}``, seeded, so scores are reproducible).

This module imports only the standard library and numpy at import time: kedro pipeline modules read
its constants, and torch + pyiqa take seconds to import.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NO_REFERENCE_DEFAULT = ("clipiqa+_vitL14_512", "maniqa-pipal", "musiq")
FULL_REFERENCE_DEFAULT = ("psnr", "ssim", "lpips")
# "y": pyiqa's default luma, Y = 0.299 R + 0.587 G + 0.114 B on [0, 1] (BT.601 weights, full range; pyiqa
# `psnry`/`ssim`). "ycbcr": the Y of MATLAB rgb2ycbcr / BasicSR (16 + 65.481 R + 128.553 G + 24.966 B,
# studio range); it reads about 1.3 dB higher in PSNR than "y" on the same pair, so always say which.
CONVENTIONS = ("rgb", "y", "ycbcr")
CONVENTION_DEFINITIONS = {  # what each convention computes PSNR/SSIM on, as evaluation reports state it
    "rgb": "RGB channels (no luma conversion)",
    "y": "Y = 0.299 R + 0.587 G + 0.114 B on [0, 1] (BT.601 weights, full range; pyiqa's default)",
    "ycbcr": "Y = 16 + 65.481 R + 128.553 G + 24.966 B (MATLAB rgb2ycbcr / BasicSR, studio range)",
}
# Metrics checked to build and run in pyiqa 0.1.16 without any file (shared/reference/notes.md).
WEIGHT_FREE = frozenset({
    "psnr", "psnry", "ssim", "ssimc", "ms_ssim", "cw_ssim", "fsim", "gmsd", "mad", "nlpd", "vif", "vsi",
    "entropy", "piqe",
})
# Recommended no-download stand-ins for tiny runs (conf/tiny): same pyiqa code path, no weight files.
NO_REFERENCE_TINY = ("entropy", "piqe", {"name": "musiq", "pretrained": False})
# LPIPS stand-in: pyiqa's LPIPS code on a random (seeded) SqueezeNet without the learned linear layers
# (lpips=False averages the normalised feature differences), so distances stay >= 0 and 0 for equal images.
FULL_REFERENCE_TINY = (
    "psnr", "ssim", {"name": "lpips", "pretrained": False, "net": "squeeze", "pnet_rand": True, "lpips": False},
)
# Seed for metrics built with random weights, so tiny-run scores are reproducible across processes.
RANDOM_WEIGHT_SEED = 0

_PYIQA_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_CLIP_URL = "https://openaipublic.azureedge.net/clip/models/"
_TORCHVISION_URL = "https://download.pytorch.org/models/"
# File names as pyiqa 0.1.16 stores them (URL basenames, so "+" stays "%2B"); tests compare with pyiqa.
_MUSIQ_FILES = {
    "koniq10k": "musiq_koniq_ckpt-e95806b9.pth", "ava": "musiq_ava_ckpt-e8d3f067.pth",
    "spaq": "musiq_spaq_ckpt-358bb6af.pth", "paq2piq": "musiq_paq2piq_ckpt-364c0c84.pth",
}
_MANIQA_FILES = {"pipal": "MANIQA_PIPAL-ae6d356b.pth", "koniq": "ckpt_koniq10k.pt", "kadid": "ckpt_kadid10k.pt"}
_CLIPIQA_FILES = {
    "clipiqa+": "CLIP-IQA%2B_learned_prompts-603f3273.pth",
    "clipiqa+_rn50_512": "CLIPIQA%2B_RN50_512-89f5d940.pth",
    "clipiqa+_vitL14_512": "CLIPIQA%2B_ViTL14_512-e66488f2.pth",
}
_CLIP_BACKBONES = {  # name -> (sha256 directory of the URL, file name)
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
}
_CLIP_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")
_LPIPS_FILES = {
    "0.0_alex": "LPIPS_v0.0_alex-18720f55.pth", "0.0_vgg": "LPIPS_v0.0_vgg-b9e42362.pth",
    "0.0_squeeze": "LPIPS_v0.0_squeeze-c27abd3a.pth", "0.1_alex": "LPIPS_v0.1_alex-df73285e.pth",
    "0.1_vgg": "LPIPS_v0.1_vgg-a78928a0.pth", "0.1_squeeze": "LPIPS_v0.1_squeeze-4a5350f2.pth",
}
_LPIPS_BACKBONES = {  # pyiqa loads alex/vgg ImageNet weights even with pnet_rand; squeeze honours it
    "alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
_SPEC_KEYS = ("name", "pretrained", "options")
_RESERVED_FR_OPTIONS = ("test_y_channel", "color_space", "crop_border")

_weights_home: Path | None = None  # TORCH_HOME-like root chosen by configure_weights


# ----------------------------------------------------------------------------- metric specs


@dataclass
class MetricSpec:
    """One pyiqa metric: its name, whether to load trained weights, and extra pyiqa options."""

    name: str
    pretrained: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | MetricSpec) -> MetricSpec:
        """Parse ``"musiq"`` or ``{"name": "musiq", "pretrained": False, ...}``; other keys become options."""
        if isinstance(spec, MetricSpec):
            return spec
        if isinstance(spec, str):
            return cls(_known_name(spec))
        if not isinstance(spec, Mapping):
            raise TypeError(f"an IQA metric spec is a name or a dict with 'name', got {type(spec).__name__}: {spec!r}")
        if "name" not in spec or not isinstance(spec["name"], str):
            raise ValueError(f"an IQA metric spec dict needs a string 'name', got {dict(spec)!r}")
        pretrained = spec.get("pretrained", True)
        if not isinstance(pretrained, bool):
            raise TypeError(f"IQA metric {spec['name']!r}: 'pretrained' must be true or false, got {pretrained!r}")
        options = spec.get("options") or {}
        if not isinstance(options, Mapping):
            raise TypeError(f"IQA metric {spec['name']!r}: 'options' must be a dict, got {options!r}")
        options = dict(options)
        for key, value in spec.items():
            if key in _SPEC_KEYS:
                continue
            if key in options and options[key] != value:
                raise ValueError(f"IQA metric {spec['name']!r}: option {key!r} given twice ({value!r} and {options[key]!r})")
            options[key] = value
        if "pretrained" in options:  # pyiqa's own `pretrained` option is our field; keep one source of truth
            raise ValueError(f"IQA metric {spec['name']!r}: set 'pretrained' at the top level, not in options")
        return cls(_known_name(spec["name"]), pretrained, options)

    @property
    def metric_mode(self) -> str:
        """``"NR"`` (no-reference) or ``"FR"`` (full-reference), from pyiqa's config."""
        return _pyiqa_configs()[self.name]["metric_mode"]


def _parse_all(specs: Any) -> list[MetricSpec]:
    """Accept one spec or a sequence of them; metric names must be unique (they become column names)."""
    if isinstance(specs, (str, Mapping, MetricSpec)):
        specs = [specs]
    parsed = [MetricSpec.parse(s) for s in specs]
    if not parsed:
        raise ValueError("no IQA metric given")
    names = [s.name for s in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"IQA metric names must be unique (they name the score columns), repeated: {duplicates}")
    return parsed


@lru_cache(maxsize=1)
def _pyiqa_configs() -> dict[str, dict[str, Any]]:
    """pyiqa's DEFAULT_CONFIGS, read without importing pyiqa when it is not loaded yet.

    Importing pyiqa fixes its weight directory and takes seconds; its config module is plain data.
    """
    if "pyiqa" in sys.modules:
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        return dict(DEFAULT_CONFIGS)
    found = importlib.util.find_spec("pyiqa")
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError("pyiqa is not installed (pip install 'pyiqa>=0.1.16,<0.2')")
    path = Path(next(iter(found.submodule_search_locations))) / "default_model_configs.py"
    module_spec = importlib.util.spec_from_file_location("_fluxir_pyiqa_default_configs", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return dict(module.DEFAULT_CONFIGS)


def _known_name(name: str) -> str:
    """Return ``name`` if pyiqa knows it, else raise naming close matches and every known metric."""
    configs = _pyiqa_configs()
    if name in configs:
        return name
    close = difflib.get_close_matches(name, list(configs), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown IQA metric {name!r}.{hint} pyiqa knows: {', '.join(sorted(configs))}")


def lower_is_better(metric_or_name: Any) -> bool:
    """True when a lower score means better quality (piqe, brisque, niqe, lpips), False for musiq etc."""
    if hasattr(metric_or_name, "lower_better"):  # a pyiqa InferenceModel
        return bool(metric_or_name.lower_better)
    name = MetricSpec.parse(metric_or_name).name
    return bool(_pyiqa_configs()[name].get("lower_better", False))


# ----------------------------------------------------------------------------- weight files


def _default_torch_home() -> Path:
    """What torch.hub would use now, without importing torch when it is not loaded."""
    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir()).parent
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def _torch_home() -> Path:
    return _weights_home if _weights_home is not None else _default_torch_home()


def configure_weights(weights_dir: str | os.PathLike | None) -> Path:
    """Use ``weights_dir`` as TORCH_HOME for IQA weights; return the pyiqa weight folder in use.

    Files then live in ``<weights_dir>/hub/pyiqa`` (pyiqa checkpoints), ``<weights_dir>/hub/clip``
    (OpenAI CLIP backbones) and ``<weights_dir>/hub/checkpoints`` (torchvision backbones). pyiqa fixes
    its own folder when first imported, so this raises if pyiqa is already loaded with another one.
    ``None`` keeps the current cache (``$TORCH_HOME`` or ``~/.cache/torch``).
    """
    global _weights_home
    if weights_dir is None:
        if "pyiqa" in sys.modules:
            from pyiqa.utils import download_util

            return Path(download_util.DEFAULT_CACHE_DIR)
        return _torch_home() / "hub" / "pyiqa"
    home = Path(weights_dir).expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise NotADirectoryError(f"iqa.weights_dir {str(weights_dir)!r} is a file; give the folder that holds hub/pyiqa")
    wanted = home / "hub" / "pyiqa"
    if "pyiqa" in sys.modules:
        from pyiqa.utils import download_util

        current = Path(download_util.DEFAULT_CACHE_DIR).expanduser().resolve()
        if current != wanted:
            raise RuntimeError(
                f"pyiqa was already imported with weight folder {current}; iqa.weights_dir={str(weights_dir)!r} "
                f"needs {wanted}. Call fluxir.fluxgen.iqa.configure_weights before anything imports pyiqa "
                f"(or set TORCH_HOME={home} in the environment)."
            )
    os.environ["TORCH_HOME"] = str(home)  # torchvision and CLIP read it at load time, pyiqa at import
    _weights_home = home
    return wanted


@dataclass(frozen=True)
class _Need:
    """One file a metric needs: where it must be and where it comes from."""

    path: Path
    source: str  # "download from <url>" or a note for user-supplied files


def _opts(spec: MetricSpec) -> dict[str, Any]:
    """pyiqa's default options for the metric overlaid with the spec's options."""
    return {**_pyiqa_configs()[spec.name]["metric_opts"], **spec.options}


def _musiq_key(opts: Mapping[str, Any]) -> str:
    key = opts.get("pretrained", "ava")  # pyiqa: pretrained=True means the AVA checkpoint
    return "ava" if key is True else str(key)


def _plan_files(spec: MetricSpec) -> tuple[list[_Need], bool]:
    """Files the metric reads when built offline, and whether that list is known to be complete."""
    opts = _opts(spec)
    arch = opts["type"]
    hub = _torch_home() / "hub"
    own = opts.get("pretrained_model_path")
    needs: list[_Need] = []
    if own is not None:  # an explicit checkpoint replaces the default one
        needs.append(_Need(Path(own).expanduser(), "your own file (pretrained_model_path)"))
    complete = True
    if arch == "MUSIQ":
        key = _musiq_key(opts)
        if spec.pretrained and own is None:
            complete = key in _MUSIQ_FILES
            if complete:
                needs.append(_need(hub / "pyiqa", _MUSIQ_FILES[key], _PYIQA_HF))
    elif arch == "MANIQA":
        # The ViT backbone needs no file: the MANIQA checkpoint is loaded strictly and replaces all of it.
        dataset = opts.get("train_dataset", "pipal")
        if spec.pretrained and own is None:
            complete = dataset in _MANIQA_FILES
            if complete:
                needs.append(_need(hub / "pyiqa", _MANIQA_FILES[dataset], _PYIQA_HF))
    elif arch == "CLIPIQA":
        backbone = opts.get("backbone", "RN50")
        if backbone in _CLIP_BACKBONES:
            sha, file = _CLIP_BACKBONES[backbone]
            needs.append(_need(hub / "clip", file, f"{_CLIP_URL}{sha}/"))
        elif backbone in _CLIP_NAMES:
            complete = False
        else:  # pyiqa's CLIP loader also takes a checkpoint file
            needs.append(_Need(Path(backbone).expanduser(), "your own file (backbone)"))
        model_type = opts.get("model_type", "clipiqa")
        if spec.pretrained and "clipiqa+" in model_type:
            if model_type in _CLIPIQA_FILES:
                needs.append(_need(hub / "pyiqa", _CLIPIQA_FILES[model_type], _PYIQA_HF))
            else:
                complete = False
    elif arch == "LPIPS":
        net, version = opts.get("net", "alex"), str(opts.get("version", "0.1"))
        complete = net in _LPIPS_BACKBONES and f"{version}_{net}" in _LPIPS_FILES
        if complete and (net in ("alex", "vgg") or not opts.get("pnet_rand", False)):
            needs.append(_need(hub / "checkpoints", _LPIPS_BACKBONES[net], _TORCHVISION_URL))
        if complete and spec.pretrained and own is None and opts.get("lpips", True):  # lpips=False: no linear layers
            needs.append(_need(hub / "pyiqa", _LPIPS_FILES[f"{version}_{net}"], _PYIQA_HF))
    else:
        complete = spec.name in WEIGHT_FREE
    return needs, complete


def _needs(spec: MetricSpec) -> list[_Need]:
    return _plan_files(spec)[0]


def _need(folder: Path, file: str, base_url: str) -> _Need:
    return _Need(folder / file, f"download from {base_url}{file}")


def required_weight_files(spec: str | Mapping[str, Any] | MetricSpec) -> list[Path]:
    """Files this metric needs offline, under the configured weight home; empty for weight-free ones.

    Metrics outside this module's table also return ``[]`` (nothing known to check up front); building
    them still never downloads: a missing file raises at :func:`create_metrics`.
    """
    return [need.path for need in _needs(MetricSpec.parse(spec))]


def check_weights(specs: Any) -> None:
    """Raise one FileNotFoundError listing every missing weight file of ``specs``, where to put it, and its URL."""
    parsed = _parse_all(specs)
    missing = [(s.name, need) for s in parsed for need in _needs(s) if not need.path.is_file()]
    for s in parsed:
        if not _plan_files(s)[1]:
            log.warning("IQA metric %r: its weight files are not known here; a missing one stops create_metrics", s.name)
    if missing:
        lines = [f"  {name} needs {need.path.name} in {need.path.parent}; {need.source}" for name, need in missing]
        raise FileNotFoundError(
            f"{len(missing)} IQA weight file(s) missing (weight home {_torch_home()}; set iqa.weights_dir "
            f"to a folder holding hub/pyiqa, hub/clip, hub/checkpoints, or use weight-free metrics). "
            f"Nothing is downloaded at run time:\n" + "\n".join(lines)
        )


@contextmanager
def _no_downloads(metric: str) -> Iterator[None]:
    """Turn any download pyiqa, torchvision or CLIP would start into our clear FileNotFoundError."""
    import torch.hub
    from pyiqa.archs import clip_model
    from pyiqa.utils import download_util

    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        # both callers pass the final cache path as dst
        raise FileNotFoundError(
            f"{metric} needs {Path(dst).name} in {Path(dst).parent} (or set iqa.weights_dir); "
            f"download from {url}. Nothing is downloaded at run time."
        )

    real_clip = clip_model._download

    def clip_download(url: str, root: str) -> str:
        target = Path(root) / os.path.basename(url)
        if target.is_file():  # the real function re-downloads on a bad checksum, so check it here
            import hashlib

            digest = hashlib.sha256()
            with open(target, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(chunk)
            if digest.hexdigest() == url.split("/")[-2]:
                return str(target)
            raise FileNotFoundError(f"{metric}: {target} has the wrong SHA-256; replace it with {url}")
        return refuse(url, str(target))

    saved = (download_util.download_url_to_file, torch.hub.download_url_to_file)
    download_util.download_url_to_file = refuse
    torch.hub.download_url_to_file = refuse
    clip_model._download = clip_download
    try:
        yield
    finally:
        download_util.download_url_to_file, torch.hub.download_url_to_file = saved
        clip_model._download = real_clip


@contextmanager
def _maniqa_backbone_from_checkpoint() -> Iterator[None]:
    """Build MANIQA's timm ViT without ImageNet weights (pyiqa hard-codes pretrained=True).

    The MANIQA checkpoint is loaded with strict=True and holds every ViT weight, so the ImageNet ones
    (a Hugging Face download) would be overwritten anyway.
    """
    from pyiqa.archs import maniqa_arch

    real = maniqa_arch.timm

    class _Timm:
        def __getattr__(self, attr: str) -> Any:
            return getattr(real, attr)

        @staticmethod
        def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> Any:
            return real.create_model(model_name, pretrained=False, **kwargs)

    maniqa_arch.timm = _Timm()
    try:
        yield
    finally:
        maniqa_arch.timm = real


def _load_checkpoint(net: Any, path: Path, strict: bool = True) -> None:
    """Load a pyiqa checkpoint (plain or ``{'params': state_dict}``) into ``net``."""
    import torch
    from pyiqa.archs.arch_util import clean_state_dict

    # weights_only=False as pyiqa does: these are pyiqa's own published checkpoints.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("params"), dict):
        state = state["params"]
    net.load_state_dict(clean_state_dict(state), strict=strict)


@contextmanager
def _seeded(active: bool) -> Iterator[None]:
    """Fixed torch seed while building random-weight metrics, leaving the caller's RNG untouched."""
    if not active:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHT_SEED)
        yield


def _build(spec: MetricSpec, device: Any, extra: Mapping[str, Any] | None = None) -> Any:
    """Create one pyiqa metric from files under the weight home (checked before), never downloading."""
    import pyiqa
    import torch

    opts = _opts(spec)
    arch = opts["type"]
    kwargs: dict[str, Any] = {**spec.options, **(extra or {})}
    needs = {n.path.name: n.path for n in _needs(spec)}
    load_after: Path | None = None
    if not spec.pretrained:
        kwargs["pretrained"] = False
    # Hand pyiqa the files found under our weight home; anything not in the table pyiqa resolves
    # itself, inside _no_downloads.
    own = "pretrained_model_path" in kwargs
    if arch == "MUSIQ" and spec.pretrained and not own and _MUSIQ_FILES.get(_musiq_key(opts)) in needs:
        kwargs["pretrained_model_path"] = str(needs[_MUSIQ_FILES[_musiq_key(opts)]])
        if _musiq_key(opts) == "ava":
            kwargs.setdefault("num_class", 10)  # pyiqa sets this only when it resolves the URL itself
    elif arch == "MANIQA" and spec.pretrained and not own and _MANIQA_FILES.get(opts.get("train_dataset")) in needs:
        kwargs["pretrained"] = False
        load_after = needs[_MANIQA_FILES[opts["train_dataset"]]]
    elif arch == "CLIPIQA":
        backbone = opts.get("backbone", "RN50")
        if backbone in _CLIP_BACKBONES:
            kwargs["backbone"] = str(needs[_CLIP_BACKBONES[backbone][1]])  # a file path: no hub lookup
        model_type = opts.get("model_type", "clipiqa")
        if spec.pretrained and _CLIPIQA_FILES.get(model_type) in needs:
            kwargs["pretrained"] = False
            load_after = needs[_CLIPIQA_FILES[model_type]]
    elif arch == "LPIPS" and spec.pretrained and not own and opts.get("lpips", True):
        file = _LPIPS_FILES.get(f"{opts.get('version', '0.1')}_{opts.get('net', 'alex')}")
        if file in needs:
            kwargs["pretrained_model_path"] = str(needs[file])

    maniqa = _maniqa_backbone_from_checkpoint() if arch == "MANIQA" else nullcontext()
    with _no_downloads(spec.name), maniqa, _seeded(not spec.pretrained), warnings.catch_warnings():
        # pyiqa's LPIPS backbones still call torchvision with the deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", message=r"(The parameter 'pretrained'|Arguments other than a weight enum)")
        try:
            metric = pyiqa.create_metric(spec.name, device=torch.device(device), **kwargs)
        except TypeError as err:  # e.g. pretrained=False or an option the architecture does not take
            raise ValueError(f"IQA metric {spec.name!r} does not accept options {sorted(kwargs)}: {err}") from err
    if load_after is not None:
        if opts.get("model_type") == "clipiqa+" and opts.get("backbone", "RN50") == "RN50":
            # pyiqa stores this one checkpoint as the bare prompt-context tensor
            metric.net.prompt_learner.ctx.data = torch.load(load_after, map_location="cpu", weights_only=False).to(
                metric.net.prompt_learner.ctx.device
            )
        else:
            _load_checkpoint(metric.net, load_after, strict=True)
    metric.eval()
    return metric


def create_metrics(specs: Any, device: Any = "cpu") -> dict[str, Any]:
    """Check all weight files first (one error for all), then build ``{name: pyiqa metric}`` in spec order."""
    parsed = _parse_all(specs)
    check_weights(parsed)
    return {s.name: _build(s, device) for s in parsed}


def metric_versions(specs: Any = NO_REFERENCE_DEFAULT) -> dict[str, Any]:
    """pyiqa version and, per metric, pretrained flag, options and weight file names (for manifests)."""
    from importlib.metadata import version

    out: dict[str, Any] = {"pyiqa": version("pyiqa"), "metrics": {}}
    for s in _parse_all(specs):
        out["metrics"][s.name] = {
            "pretrained": s.pretrained,
            "options": {k: v for k, v in s.options.items()},
            "weights": [need.path.name for need in _needs(s)],
            "random_weight_seed": None if s.pretrained else RANDOM_WEIGHT_SEED,
        }
    return out


# ----------------------------------------------------------------------------- images and batches


def _as_rgb_uint8(item: Any, index: int) -> np.ndarray:
    """An HxWx3 uint8 array from an array or an image path (read with PIL, converted to RGB)."""
    if isinstance(item, (str, os.PathLike)):
        from PIL import Image

        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image {index}: no such file {str(path)!r}")
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    arr = np.asarray(item)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"image {index}: expected an HxWx3 uint8 RGB array or an image path, got dtype {arr.dtype} shape {arr.shape}"
        )
    return arr


def _to_tensor(images: Sequence[np.ndarray], device: Any) -> Any:
    """(B, 3, H, W) float32 in [0, 1] on ``device``."""
    import torch

    batch = torch.from_numpy(np.stack(images)).to(device=device, dtype=torch.float32)
    return batch.permute(0, 3, 1, 2).contiguous().div_(255.0)


def _batches(groups: Iterable[tuple[np.ndarray, ...]], batch_size: int) -> Iterator[tuple[list[int], list[tuple[np.ndarray, ...]]]]:
    """Group items of equal image size into batches of up to ``batch_size``, streaming.

    At most one open batch per distinct size is held in memory, so long image lists never load at once.
    """
    open_batches: dict[tuple[int, ...], tuple[list[int], list[tuple[np.ndarray, ...]]]] = {}
    for index, item in enumerate(groups):
        key = item[0].shape
        indices, items = open_batches.setdefault(key, ([], []))
        indices.append(index)
        items.append(item)
        if len(items) == batch_size:
            yield open_batches.pop(key)
    yield from open_batches.values()


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _scores(output: Any, expected: int, name: str) -> np.ndarray:
    """Per-image scores from a pyiqa output of shape (B,) or (B, 1)."""
    values = output.detach().float().cpu().numpy().reshape(-1)
    if values.size != expected:
        raise RuntimeError(f"IQA metric {name!r} returned {values.size} scores for {expected} images")
    return values.astype(np.float64)


def _len_or_none(items: Any) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


def score_no_reference(
    images: Iterable[Any],
    specs: Any = NO_REFERENCE_DEFAULT,
    batch_size: int = 8,
    device: Any = "cpu",
    progress: bool = True,
) -> Any:
    """Score images (HxWx3 uint8 arrays or paths) with no-reference metrics.

    Returns a pandas DataFrame with one column per metric name, one row per image in input order.
    Images of equal size are batched together; all weight files are checked before any scoring.
    """
    import pandas as pd
    import torch
    from fluxir.progress import progress as progress_bar

    _check_batch_size(batch_size)
    parsed = _parse_all(specs)
    not_nr = [s.name for s in parsed if s.metric_mode != "NR"]
    if not_nr:
        raise ValueError(f"{not_nr} are full-reference metrics; use score_full_reference (no-reference: musiq, piqe, ...)")
    metrics = create_metrics(parsed, device)
    results: dict[str, dict[int, float]] = {name: {} for name in metrics}
    count = 0
    items = ((_as_rgb_uint8(img, i),) for i, img in enumerate(images))
    with progress_bar(total=_len_or_none(images), desc="IQA (no-reference)", unit="img", disable=not progress) as bar:
        for indices, batch in _batches(items, batch_size):
            x = _to_tensor([b[0] for b in batch], device)
            with torch.inference_mode():
                for name, metric in metrics.items():
                    for i, value in zip(indices, _scores(metric(x), len(indices), name)):
                        results[name][i] = float(value)
            count += len(indices)
            bar.update(len(indices))
    return pd.DataFrame({name: [values[i] for i in range(count)] for name, values in results.items()})


def _fr_plan(spec: MetricSpec, convention: str) -> tuple[dict[str, Any], str]:
    """pyiqa options that realise ``convention`` for psnr/ssim, and the convention each metric uses."""
    reserved = sorted(set(spec.options) & set(_RESERVED_FR_OPTIONS))
    if reserved:
        raise ValueError(
            f"IQA metric {spec.name!r}: options {reserved} are set by score_full_reference's convention/crop_border"
        )
    if spec.name in ("psnr", "ssim"):
        return {"test_y_channel": convention != "rgb", "color_space": "ycbcr" if convention == "ycbcr" else "yiq"}, convention
    if spec.name == "psnry":
        return {}, "y"
    if spec.name == "ssimc":
        return {}, "rgb"
    return {}, ""  # read from the built metric


def score_full_reference(
    restored: Iterable[Any],
    reference: Iterable[Any],
    metrics: Any = FULL_REFERENCE_DEFAULT,
    convention: str = "y",
    crop_border: int = 4,
    device: Any = "cpu",
    batch_size: int = 8,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> Any:
    """Full-reference scores of restored vs. reference images (arrays or paths, paired in order).

    ``convention`` ("rgb", "y" or "ycbcr", see CONVENTIONS) sets the channels of psnr and ssim;
    ``crop_border`` pixels are cut from each side of both images before every metric. Returns a long
    DataFrame with columns image, metric, value, convention, crop_border: each number carries the
    convention it was computed under (lpips and other RGB-defined metrics record "rgb").

    pyiqa's definitions, checked against scikit-image in tests/test_iqa.py: PSNR on [0, 1] with an
    1e-8 floor on the MSE (identical images give 80 dB); SSIM with an 11x11 Gaussian window (sigma 1.5),
    population variances, 'valid' border, images as integer levels 0..255 (Y rounded), no downsampling,
    and negative local structure terms clamped to 0 (only heavy noise makes that differ from skimage).
    """
    import pandas as pd
    import torch
    from fluxir.progress import progress as progress_bar

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not isinstance(crop_border, int) or isinstance(crop_border, bool) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer (pixels per side), got {crop_border!r}")
    _check_batch_size(batch_size)
    parsed = _parse_all(metrics)
    not_fr = [s.name for s in parsed if s.metric_mode != "FR"]
    if not_fr:
        raise ValueError(f"{not_fr} are no-reference metrics; use score_no_reference (full-reference: psnr, ssim, lpips, ...)")
    plans = {s.name: _fr_plan(s, convention) for s in parsed}
    check_weights(parsed)
    built: dict[str, Any] = {}
    conventions: dict[str, str] = {}
    for s in parsed:
        extra, conv = plans[s.name]
        built[s.name] = _build(s, device, extra)
        if not conv:  # e.g. ms_ssim defaults to Y; record what the metric really does
            net = built[s.name].net
            y = bool(getattr(net, "test_y_channel", False))
            conv = ("ycbcr" if getattr(net, "color_space", "yiq") == "ycbcr" else "y") if y else "rgb"
        conventions[s.name] = conv

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        restored_iter, reference_iter = iter(restored), iter(reference)
        index = 0
        while True:
            a = next(restored_iter, None)
            b = next(reference_iter, None)
            if a is None and b is None:
                return
            if a is None or b is None:
                which = "restored" if a is None else "reference"
                raise ValueError(f"restored and reference differ in length: {which} ran out at image {index}")
            x, y = _as_rgb_uint8(a, index), _as_rgb_uint8(b, index)
            if x.shape != y.shape:
                raise ValueError(f"image {index}: restored is {x.shape[:2]} but reference is {y.shape[:2]} (HxW must match)")
            if min(x.shape[:2]) <= 2 * crop_border:
                raise ValueError(f"image {index}: size {x.shape[:2]} is too small for crop_border={crop_border} on each side")
            if crop_border:
                x = x[crop_border:-crop_border, crop_border:-crop_border]
                y = y[crop_border:-crop_border, crop_border:-crop_border]
            yield x, y
            index += 1

    values: dict[int, dict[str, float]] = {}
    with progress_bar(total=_len_or_none(restored), desc="IQA (full-reference)", unit="img", disable=not progress) as bar:
        for indices, batch in _batches(pairs(), batch_size):
            x = _to_tensor([p[0] for p in batch], device)
            y = _to_tensor([p[1] for p in batch], device)
            with torch.inference_mode():
                for name, metric in built.items():
                    for i, value in zip(indices, _scores(metric(x, y), len(indices), name)):
                        values.setdefault(i, {})[name] = float(value)
            bar.update(len(indices))
    count = len(values)
    if names is not None and len(names) != count:
        raise ValueError(f"names has {len(names)} entries for {count} image pairs")
    rows = [
        {"image": names[i] if names is not None else i, "metric": name, "value": values[i][name],
         "convention": conventions[name], "crop_border": crop_border}
        for i in range(count) for name in built
    ]
    return pd.DataFrame(rows, columns=["image", "metric", "value", "convention", "crop_border"])
