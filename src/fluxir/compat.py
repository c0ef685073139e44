"""Every private API of a dependency, and every patch of one, each section naming the version it fits.

Those versions are checked at import (``require``), so another version fails with a message naming the package and
this file instead of an ``AttributeError`` deep inside a run. Only ``importlib.metadata`` is read here.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version


def require(distribution: str, supported: str) -> None:
    """Raise ImportError unless the installed ``distribution`` is in ``supported`` (a PEP 440 range); a package
    that is not installed passes (its own import fails later with pip's name for it)."""
    try:
        installed = version(distribution)
    except PackageNotFoundError:
        return
    if Version(installed) not in SpecifierSet(supported):
        raise ImportError(
            f"{__name__} uses private code of {distribution} written for {distribution}{supported}, but "
            f"{distribution} {installed} is installed: install {distribution}{supported} (pyproject.toml), or check "
            f"src/fluxir/compat.py against {distribution} {installed} and widen its range."
        )


# ------------------------------------------------------------------------------------------------
# Kedro 1.7 / kedro-datasets 9.x: where a (possibly versioned) file dataset writes. ``_get_save_path()`` refuses
# once the file exists, so the versioned path of the run's save version is asked for instead.

require("kedro", ">=1.7,<1.8")
require("kedro-datasets", ">=9,<10")


def saved_path(dataset: Any) -> Path | None:
    """The file or folder a (possibly versioned) file dataset just wrote, or None for non-file datasets."""
    if getattr(dataset, "_version", None) is not None:
        return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)) if filepath is not None else None


def loaded_path(dataset: Any) -> Path | None:
    """The file or folder a file dataset loads: the latest version unless one was pinned (``--load-versions``);
    None for non-file datasets or a versioned one with no version saved."""
    from kedro.io.core import DatasetError

    if getattr(dataset, "_version", None) is not None:
        try:
            return Path(str(dataset._get_load_path()))
        except DatasetError:
            return None
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)) if filepath is not None else None


@dataclass(frozen=True)
class SaveTarget:
    """Where a kedro-datasets file dataset's ``save`` goes now (the run's save version for a versioned one), for a
    dataset that writes its file itself (``fluxir.datasets.DurableParquetDataset``)."""

    path: str
    local: bool  # protocol "file": a path of this machine's filesystem
    versioned: bool
    fs: Any
    open_args: dict[str, Any]
    save_args: dict[str, Any]


def save_target(dataset: Any) -> SaveTarget:
    from kedro.io.core import get_filepath_str

    return SaveTarget(
        path=get_filepath_str(dataset._get_save_path(), dataset._protocol),
        local=dataset._protocol == "file",
        versioned=dataset._version is not None,
        fs=dataset._fs,
        open_args=dict(dataset._fs_open_args_save),
        save_args=dict(dataset._save_args),
    )


def invalidate_cache(dataset: Any) -> None:
    """Drop the fsspec listing cache of a file dataset after it wrote (as its own ``save`` does)."""
    dataset._invalidate_cache()


# ------------------------------------------------------------------------------------------------
# kedro-mlflow 2.0.3: ``KedroMlflowConfig._set_experiment`` is the only call that creates (or restores) the
# experiment named in its config and makes it current.

require("kedro-mlflow", ">=2.0.3,<2.1")


def set_experiment(config: Any, name: str) -> None:
    """Make ``name`` the experiment of kedro-mlflow's ``config`` (a ``KedroMlflowConfig``), creating it if needed."""
    config.tracking.experiment.name = name
    config._set_experiment()


# ------------------------------------------------------------------------------------------------
# diffusers 0.42.1 and accelerate 1.16: ``controlled_flux_forward`` re-runs this version's
# ``FluxTransformer2DModel.forward`` block by block, so it needs the model's own checkpointing function, the rope
# positions FluxPipeline builds (no public equivalent) and accelerate's offload hook (``_hf_hook.pre_forward``).

require("diffusers", ">=0.42.1,<0.43")
require("accelerate", ">=1.15,<1.17")


def checkpointed(module: Any, block: Any, *args: Any) -> Any:
    """``block(*args)`` under the module's own gradient checkpointing (as diffusers' forward calls it)."""
    return module._gradient_checkpointing_func(block, *args)


def latent_image_ids(grid_h: int, grid_w: int, device: Any, dtype: Any) -> Any:
    """FluxPipeline's rope positions (grid_h * grid_w, 3) of a (grid_h, grid_w) token grid."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(None, grid_h, grid_w, device, dtype)


def pre_forward(module: Any) -> None:
    """Run accelerate's pre-forward hook of ``module`` (moves it to its execution device); no-op without one."""
    if hasattr(module, "_hf_hook") and hasattr(module._hf_hook, "pre_forward"):
        module._hf_hook.pre_forward(module)


# ------------------------------------------------------------------------------------------------
# torch 2.14: ``benchmarks/train_memory.py`` runs training's step on fake CUDA tensors, which needs
# ``FakeTensorMode``, a storage's identity and replacing parameters without ``Module.to`` (whose ``swap_tensors``
# refuses fake tensors).

require("torch", ">=2.4,<2.15")


def fake_tensor_mode() -> Any:
    """A ``FakeTensorMode`` that also accepts real tensors as inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def storage_id(tensor: Any) -> int:
    """The same number for every view of one storage (fake or real), for as long as it lives."""
    return tensor.untyped_storage()._cdata


def replace_tensors(module: Any, make: Any) -> None:
    """Every parameter and buffer ``t`` of ``module`` becomes ``make(t)`` in place (``requires_grad`` kept)."""
    from torch import nn

    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(make(p), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = make(b)


# ------------------------------------------------------------------------------------------------
# pyiqa 0.1.16 (with torch.hub and timm): metrics built from local files only. pyiqa downloads missing weights
# through ``download_util``, ``torch.hub`` and CLIP's ``clip_model._download``, and builds MANIQA's timm ViT with
# ``pretrained=True`` hard-coded; these context managers swap those functions for one metric's construction.

require("pyiqa", ">=0.1.16,<0.1.17")
require("timm", ">=1.0,<2")  # only ``timm.create_model(name, pretrained=...)`` is relied on


@contextmanager
def no_downloads(metric: str, file_sha256: Callable[[Path], str]) -> Iterator[None]:
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
            if file_sha256(target) == url.split("/")[-2]:
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
def maniqa_backbone_from_checkpoint() -> Iterator[None]:
    """Build MANIQA's timm ViT without ImageNet weights: the MANIQA checkpoint (loaded with strict=True) holds every
    ViT weight, so the ImageNet ones (a Hugging Face download) would be overwritten anyway."""
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


# ------------------------------------------------------------------------------------------------
# basicsr 1.4.2 (the last release) imports ``torchvision.transforms.functional_tensor``, which torchvision 0.17
# removed (Real-ESRGAN#768, BasicSR#649); its ``rgb_to_grayscale`` lives on in ``_functional_tensor``.

require("basicsr", "==1.4.2")
require("torchvision", ">=0.17,<0.30")  # where the renamed _functional_tensor is checked to exist

_OLD_TORCHVISION_MODULE = "torchvision.transforms.functional_tensor"


def import_basicsr() -> ModuleType:
    """The ``basicsr`` package, torchvision's renamed module registered under its old name first if it is missing
    (old torchvision, or the ``basicsr-fixed`` fork, has it); the installed packages stay untouched."""
    try:
        importlib.import_module(_OLD_TORCHVISION_MODULE)
    except ModuleNotFoundError:
        sys.modules[_OLD_TORCHVISION_MODULE] = importlib.import_module("torchvision.transforms._functional_tensor")
    return importlib.import_module("basicsr")
