"""IQA metric specs (paper Sec. 3.1 and footnote 2: ``clipiqa+_vitL14_512``, ``maniqa-pipal``, ``musiq``) and the
weight files each needs under ``iqa.weights_dir`` (``hub/pyiqa``, ``hub/clip``, ``hub/checkpoints``), loaded offline
and checked. Only the standard library at import: pipeline modules read these tables before pyiqa may load."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fluxir.io.provenance import sha256_file

log = logging.getLogger(__name__)

NO_REFERENCE_DEFAULT = ("clipiqa+_vitL14_512", "maniqa-pipal", "musiq")
FULL_REFERENCE_DEFAULT = ("psnr", "ssim", "lpips")
CONVENTIONS = ("rgb", "y", "ycbcr")  # "ycbcr" reads about 1.3 dB higher in PSNR than "y": always say which
CONVENTION_DEFINITIONS = {  # what each convention computes PSNR/SSIM on, as evaluation reports state it
    "rgb": "RGB channels (no luma conversion)",
    "y": "Y = 0.299 R + 0.587 G + 0.114 B on [0, 1] (BT.601 weights, full range; pyiqa's default)",
    "ycbcr": "Y = 16 + 65.481 R + 128.553 G + 24.966 B (MATLAB rgb2ycbcr / BasicSR, studio range)",
}
# Recommended no-download stand-ins for tiny runs (conf/tiny): same pyiqa code path, no weight files.
NO_REFERENCE_TINY = ("entropy", "piqe", {"name": "musiq", "pretrained": False})
# LPIPS stand-in: pyiqa's LPIPS code on a random (seeded) SqueezeNet without the learned linear layers
# (lpips=False averages the normalised feature differences), so distances stay >= 0 and 0 for equal images.
FULL_REFERENCE_TINY = (
    "psnr",
    "ssim",
    {"name": "lpips", "pretrained": False, "net": "squeeze", "pnet_rand": True, "lpips": False},
)
# Seed for metrics built with random weights, so tiny-run scores are reproducible across processes.
RANDOM_WEIGHT_SEED = 0

_SPEC_KEYS = ("name", "pretrained", "options")


@lru_cache(maxsize=1)
def pyiqa_configs() -> dict[str, dict[str, Any]]:
    """pyiqa's DEFAULT_CONFIGS, read without importing pyiqa (which fixes its weight folder and takes seconds)."""
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


@dataclass
class MetricSpec:
    """One pyiqa metric: its name, whether to load trained weights, and extra pyiqa options."""

    name: str
    pretrained: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | MetricSpec) -> MetricSpec:
        """``"musiq"`` or ``{"name": "musiq", "pretrained": False, ...}``; other keys become options."""
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
                raise ValueError(
                    f"IQA metric {spec['name']!r}: option {key!r} given twice ({value!r} and {options[key]!r})"
                )
            options[key] = value
        if "pretrained" in options:  # pyiqa's own `pretrained` option is our field; keep one source of truth
            raise ValueError(f"IQA metric {spec['name']!r}: set 'pretrained' at the top level, not in options")
        return cls(_known_name(spec["name"]), pretrained, options)

    @property
    def metric_mode(self) -> str:
        """``"NR"`` (no-reference) or ``"FR"`` (full-reference)."""
        return pyiqa_configs()[self.name]["metric_mode"]


def parse_all(specs: Any) -> list[MetricSpec]:
    """One spec or a sequence of them; metric names must be unique (they become column names)."""
    if isinstance(specs, (str, Mapping, MetricSpec)):
        specs = [specs]
    parsed = [MetricSpec.parse(s) for s in specs]
    if not parsed:
        raise ValueError("no IQA metric given")
    names = [s.name for s in parsed]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"IQA metric names must be unique (they name the score columns), repeated: {duplicates}")
    return parsed


# mode -> (what the other metrics are, the function that scores them, examples of this mode)
_OTHER_MODE = {
    "NR": ("full-reference", "score_full_reference", "no-reference: musiq, piqe, ..."),
    "FR": ("no-reference", "score_no_reference", "full-reference: psnr, ssim, lpips, ..."),
}


def parse_of_mode(specs: Any, mode: str) -> list[MetricSpec]:
    """``parse_all``, refusing metrics of the other mode ("NR" no-reference, "FR" full-reference) by name."""
    parsed = parse_all(specs)
    if wrong := [s.name for s in parsed if s.metric_mode != mode]:
        kind, use, examples = _OTHER_MODE[mode]
        raise ValueError(f"{wrong} are {kind} metrics; use {use} ({examples})")
    return parsed


def _known_name(name: str) -> str:
    configs = pyiqa_configs()
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
    return bool(pyiqa_configs()[name].get("lower_better", False))


# Metrics checked to build and run in pyiqa 0.1.16 without any file (shared/reference/notes.md).
WEIGHT_FREE = frozenset("psnr psnry ssim ssimc ms_ssim cw_ssim fsim gmsd mad nlpd vif vsi entropy piqe".split())

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


# home: the TORCH_HOME-like root of configure_weights; trust_files: accept CLIP backbones that are not OpenAI's
_settings = SimpleNamespace(home=None, trust_files=False)


def metric_options(spec: MetricSpec) -> dict[str, Any]:
    """pyiqa's default options for the metric overlaid with the spec's options."""
    return {**pyiqa_configs()[spec.name]["metric_opts"], **spec.options}


def musiq_key(opts: Mapping[str, Any]) -> str:
    key = opts.get("pretrained", "ava")  # pyiqa: pretrained=True means the AVA checkpoint
    return "ava" if key is True else str(key)


def weights_home() -> Path:
    """The TORCH_HOME-like folder weight files are looked up in: ``configure_weights``' or torch.hub's now."""
    if _settings.home is not None:
        return _settings.home
    if "torch" in sys.modules:  # else the same rule without importing torch
        import torch.hub

        return Path(torch.hub.get_dir()).parent
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def configure_weights(weights_dir: str | os.PathLike | None, trust_files: bool = False) -> Path:
    """Use ``weights_dir`` as TORCH_HOME for IQA weights (``None``: the current cache); return the pyiqa weight
    folder in use. pyiqa fixes its folder when first imported, so this raises if it was loaded with another one.
    ``trust_files`` accepts CLIP backbones whose SHA-256 differs from OpenAI's (your own or fixture files)."""
    if not isinstance(trust_files, bool):
        raise TypeError(f"iqa.trust_weight_files must be true or false, got {trust_files!r}")
    _settings.trust_files = trust_files
    loaded = None  # pyiqa's folder, fixed when it was imported
    if "pyiqa" in sys.modules:
        from pyiqa.utils import download_util

        loaded = Path(download_util.DEFAULT_CACHE_DIR)
    if weights_dir is None:
        return loaded if loaded is not None else weights_home() / "hub" / "pyiqa"
    home = Path(weights_dir).expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise NotADirectoryError(
            f"iqa.weights_dir {str(weights_dir)!r} is a file; give the folder that holds hub/pyiqa"
        )
    wanted = home / "hub" / "pyiqa"
    if loaded is not None and (current := loaded.expanduser().resolve()) != wanted:
        raise RuntimeError(
            f"pyiqa was already imported with weight folder {current}; iqa.weights_dir={str(weights_dir)!r} "
            f"needs {wanted}. Call fluxir.iqa.configure_weights before anything imports pyiqa "
            f"(or set TORCH_HOME={home} in the environment)."
        )
    os.environ["TORCH_HOME"] = str(home)  # torchvision and CLIP read it at load time, pyiqa at import
    _settings.home = home
    return wanted


@dataclass(frozen=True)
class Need:
    """One file a metric needs: where it must be, where it comes from, and its SHA-256 if published."""

    path: Path
    source: str  # "download from <url>" or a note for user-supplied files
    sha256: str | None = None


def _need(folder: Path, file: str, base_url: str, sha256: str | None = None) -> Need:
    return Need(folder / file, f"download from {base_url}{file}", sha256)


def plan_files(spec: MetricSpec) -> tuple[list[Need], bool]:
    """Files the metric reads when built offline, and whether that list is known to be complete."""
    opts = metric_options(spec)
    arch, hub, own = opts["type"], weights_home() / "hub", opts.get("pretrained_model_path")
    # an explicit checkpoint replaces the published one
    needs = [Need(Path(own).expanduser(), "your own file (pretrained_model_path)")] if own is not None else []
    file = _checkpoint_file(arch, opts)
    published = spec.pretrained and own is None
    if arch in ("MUSIQ", "MANIQA"):  # MANIQA's ViT backbone needs no file: its checkpoint replaces all of it
        complete = file is not None or not published
    elif arch == "CLIPIQA":
        backbone = opts.get("backbone", "RN50")
        if backbone in CLIP_BACKBONES:
            sha, name = CLIP_BACKBONES[backbone]
            needs.append(_need(hub / "clip", name, f"{CLIP_URL}{sha}/", sha))
        elif backbone not in CLIP_NAMES:  # pyiqa's CLIP loader also takes a checkpoint file
            needs.append(Need(Path(backbone).expanduser(), "your own file (backbone)"))
        published = spec.pretrained and "clipiqa+" in opts.get("model_type", "clipiqa")
        complete = (backbone in CLIP_BACKBONES or backbone not in CLIP_NAMES) and (file is not None or not published)
    elif arch == "LPIPS":  # lpips=False: no linear layers, no file of them
        net = opts.get("net", "alex")
        complete = net in LPIPS_BACKBONES and f"{opts.get('version', '0.1')}_{net}" in LPIPS_FILES
        if complete and (net in ("alex", "vgg") or not opts.get("pnet_rand", False)):
            needs.append(_need(hub / "checkpoints", LPIPS_BACKBONES[net], TORCHVISION_URL))
        published = published and complete
    else:
        complete = spec.name in WEIGHT_FREE
    if published and file is not None:
        needs.append(_need(hub / "pyiqa", file, PYIQA_URL))
    return needs, complete


def _checkpoint_file(arch: str, opts: Mapping[str, Any]) -> str | None:
    """The name of the published pyiqa checkpoint of a described architecture with ``opts``; None: not known."""
    if arch == "MUSIQ":
        return MUSIQ_FILES.get(musiq_key(opts))
    if arch == "MANIQA":
        return MANIQA_FILES.get(opts.get("train_dataset", "pipal"))
    if arch == "CLIPIQA":
        return CLIPIQA_FILES.get(opts.get("model_type", "clipiqa"))
    if arch == "LPIPS" and opts.get("lpips", True):
        return LPIPS_FILES.get(f"{opts.get('version', '0.1')}_{opts.get('net', 'alex')}")
    return None


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
        for need in plan_files(spec)[0]:
            if not need.path.is_file():
                problems.append(f"{spec.name} needs {need.path.name} in {need.path.parent}; {need.source}")
            elif need.sha256 and not _settings.trust_files and file_sha256(need.path) != need.sha256:
                problems.append(
                    f"{spec.name}: {need.path} is not OpenAI's file (SHA-256 {file_sha256(need.path)[:12]}..., "
                    f"expected {need.sha256[:12]}...); replace it ({need.source}) or, for your own or fixture "
                    f"weights, set iqa.trust_weight_files: true"
                )
    return problems


def check_weights(specs: Any) -> None:
    """Raise one FileNotFoundError listing every missing or foreign weight file, where to put it, and its URL."""
    specs = parse_all(specs)
    for spec in specs:
        if not plan_files(spec)[1]:
            log.warning(
                "IQA metric %r: its weight files are not known here; a missing one stops create_metrics", spec.name
            )
    if problems := file_problems(specs):
        raise FileNotFoundError(
            f"{len(problems)} IQA weight file(s) missing or not the published ones (weight home {weights_home()}; "
            f"set iqa.weights_dir to a folder holding hub/pyiqa, hub/clip, hub/checkpoints, or use weight-free "
            f"metrics). Nothing is downloaded at run time:\n" + "\n".join(f"  {p}" for p in problems)
        )


@dataclass
class LoadPlan:
    """How to build one metric from the weight home: extra pyiqa kwargs, then a checkpoint to load."""

    kwargs: dict[str, Any]
    checkpoint: Path | None = None  # loaded by load_checkpoint after pyiqa built the architecture
    only_keys: str | None = None  # regex: the checkpoint covers only these keys of the network (LPIPS)
    bare_tensor: bool = False  # clipiqa+ RN50: the file is the prompt-context tensor alone


def load_plan(spec: MetricSpec) -> LoadPlan:
    """Build every described metric with ``pretrained=False`` and load its file ourselves (``load_checkpoint``)."""
    opts = metric_options(spec)
    arch = opts["type"]
    found = {n.path.name: n.path for n in plan_files(spec)[0]}
    plan = LoadPlan({} if spec.pretrained else {"pretrained": False})
    backbone = opts.get("backbone", "RN50")
    if arch == "CLIPIQA" and backbone in CLIP_BACKBONES:
        plan.kwargs["backbone"] = str(found[CLIP_BACKBONES[backbone][1]])  # a file path: no hub lookup, no hash
    if "pretrained_model_path" in spec.options or not spec.pretrained:
        return plan
    if arch == "MUSIQ" and musiq_key(opts) == "ava":
        plan.kwargs.setdefault("num_class", 10)  # pyiqa sets this only when it resolves the URL itself
    elif arch == "CLIPIQA":
        plan.bare_tensor = opts.get("model_type") == "clipiqa+" and backbone == "RN50"
    elif arch == "LPIPS":
        plan.only_keys = LPIPS_LINEAR_KEYS
    file = _checkpoint_file(arch, opts)
    if file in found:
        plan.kwargs["pretrained"] = False
        plan.checkpoint = found[file]
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
    """Load a pyiqa checkpoint (plain or ``{'params': state_dict}``) into ``net``, keys and shapes checked first:
    pyiqa's own LPIPS loader is not strict and would silently ignore a wrong file. ``only_keys``: a regex, the
    keys of ``net`` the file holds (LPIPS' linear layers)."""
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
        found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        parts = [f"{label} {len(keys)}: {keys[:5]}" for label, keys in found if keys]
        raise ValueError(
            f"{path} does not fit {type(net).__name__}: {'; '.join(parts)}. Is it the right file for this metric? "
            "Download the published one again."
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


def required_weight_files(spec: str | Mapping[str, Any] | MetricSpec) -> list[Path]:
    """Files this metric needs offline, under the configured weight home; ``[]`` for weight-free metrics and for
    those outside this module's table (building them still never downloads)."""
    return [need.path for need in plan_files(MetricSpec.parse(spec))[0]]
