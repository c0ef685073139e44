"""pyiqa 0.1.16 (with torch.hub and timm): metrics built from local files only, never downloading.

pyiqa downloads missing weights through ``pyiqa.utils.download_util``, ``torch.hub`` and CLIP's private
``clip_model._download``, and builds MANIQA's timm ViT with ``pretrained=True`` hard-coded; the two context
managers here swap those functions for the duration of one metric's construction and put them back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fluxir.compat import require

require("pyiqa", ">=0.1.16,<0.1.17", __name__)
require("timm", ">=1.0,<2", __name__)  # only ``timm.create_model(name, pretrained=...)`` is relied on


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
