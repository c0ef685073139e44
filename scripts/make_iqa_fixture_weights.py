"""Write random-weight IQA files with the published names, containers and keys into a weight home.

    python scripts/make_iqa_fixture_weights.py --out DIR [--with-vit-l14]

``DIR`` then works as ``iqa.weights_dir`` (with ``iqa.trust_weight_files: true``, since the CLIP
archives cannot have OpenAI's SHA-256) for the paper's metric names with ``pretrained: true``:

- ``hub/clip/RN50.pt`` (and ``ViT-L-14.pt`` with ``--with-vit-l14``, ~0.9 GB): TorchScript archives
  like OpenAI's, traced from pyiqa's own CLIP class at the released sizes, conv/linear weights in
  float16 as in OpenAI's files, so pyiqa's loader takes the same ``torch.jit.load`` path.
- ``hub/pyiqa/``: ``CLIP-IQA%2B_learned_prompts-603f3273.pth`` (the bare prompt tensor),
  ``CLIPIQA%2B_RN50_512-89f5d940.pth`` / ``CLIPIQA%2B_ViTL14_512-e66488f2.pth`` (``{'params': ...}``),
  ``MANIQA_PIPAL-ae6d356b.pth`` (``{'params': ...}``), ``musiq_koniq_ckpt-e95806b9.pth`` (a plain
  state dict), ``LPIPS_v0.1_alex-df73285e.pth`` (only the ``lin0..lin4`` layers, as the LPIPS release).
- ``hub/checkpoints/alexnet-owt-7be5be79.pth``: torchvision's AlexNet state dict.

Every state dict comes from pyiqa's / torchvision's own architecture built with seeded random weights,
so keys and shapes are exactly what the loaders expect. The scores they give mean nothing: these files
prove file layouts and loading code, never quality.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fluxir.compat import maniqa_backbone_from_checkpoint
from fluxir.iqa import weights as w

SEED = 0
# OpenAI CLIP sizes (pyiqa.archs.clip_model.CLIP arguments), as build_model reads them from the files.
CLIP_SIZES = {
    "RN50": {
        "embed_dim": 1024,
        "image_resolution": 224,
        "vision_layers": (3, 4, 6, 3),
        "vision_width": 64,
        "vision_patch_size": None,
        "context_length": 77,
        "vocab_size": 49408,
        "transformer_width": 512,
        "transformer_heads": 8,
        "transformer_layers": 12,
    },
    "ViT-L/14": {
        "embed_dim": 768,
        "image_resolution": 224,
        "vision_layers": 24,
        "vision_width": 1024,
        "vision_patch_size": 14,
        "context_length": 77,
        "vocab_size": 49408,
        "transformer_width": 768,
        "transformer_heads": 12,
        "transformer_layers": 12,
    },
}


@contextmanager
def _seeded(seed: int = SEED) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def _torch_home(home: Path) -> Iterator[None]:
    """torchvision resolves hub/checkpoints under $TORCH_HOME at load time."""
    before = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = before


def write_clip_archive(name: str, path: Path) -> Path:
    """An OpenAI-style TorchScript CLIP archive (state dict keys and shapes of the release)."""
    from pyiqa.archs import clip_model

    with _seeded():
        model = clip_model.CLIP(**CLIP_SIZES[name]).eval()
    # OpenAI's archives carry these as 0-d tensors; pyiqa's build_model deletes them when present.
    for key in ("input_resolution", "context_length", "vocab_size"):
        value = CLIP_SIZES[name]["image_resolution" if key == "input_resolution" else key]
        if hasattr(model, key):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    fp16 = _fp16_names(name)
    size = CLIP_SIZES[name]["image_resolution"]
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.zeros(1, 3, size, size), _text_tokens()), check_trace=False)
    for param_name, param in traced.named_parameters():
        if param_name in fp16:
            param.data = param.data.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))
    return path


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def archive_from_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A TorchScript archive whose state dict is ``state`` (e.g. a deliberately broken CLIP for tests).

    pyiqa 0.1.16's CLIP loader only reads TorchScript archives: its plain state-dict fallback reads the
    file handle ``torch.jit.load`` already consumed and fails with EOFError.
    """
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def _text_tokens() -> torch.Tensor:
    import clip  # openai-clip, the tokenizer pyiqa's CLIP-IQA uses

    return clip.tokenize(["a photo"])  # (1, 77) token ids


def _fp16_names(name: str) -> set[str]:
    """Names OpenAI stored in float16: what pyiqa's convert_weights turns to half (meta device: no memory)."""
    from pyiqa.archs import clip_model

    with torch.device("meta"):
        model = clip_model.CLIP(**CLIP_SIZES[name])
    clip_model.convert_weights(model)
    return {k for k, v in model.state_dict().items() if v.dtype == torch.float16}


def _clipiqa_state(model_type: str, backbone: Path) -> dict[str, torch.Tensor]:
    from pyiqa.archs.clipiqa_arch import CLIPIQA

    with _seeded():
        net = CLIPIQA(model_type=model_type, backbone=str(backbone), pretrained=False, pos_embedding=True)
    return net.state_dict()


def _save(obj: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_musiq(pyiqa_dir: Path) -> Path:
    from pyiqa.archs.musiq_arch import MUSIQ

    with _seeded():
        net = MUSIQ(pretrained=False)  # koniq10k: num_class 1, the released architecture
    return _save(net.state_dict(), pyiqa_dir / w.MUSIQ_FILES["koniq10k"])


def write_maniqa(pyiqa_dir: Path) -> Path:
    from pyiqa.archs.maniqa_arch import MANIQA

    with _seeded(), maniqa_backbone_from_checkpoint():
        net = MANIQA(pretrained=False)
    return _save({"params": net.state_dict()}, pyiqa_dir / w.MANIQA_FILES["pipal"])


def write_lpips_alex(home: Path) -> list[Path]:
    """torchvision's AlexNet (the LPIPS backbone) and the LPIPS v0.1 linear layers."""
    import torchvision
    from pyiqa.archs.lpips_arch import LPIPS

    with _seeded():
        alexnet = _save(
            torchvision.models.alexnet().state_dict(), home / "hub" / "checkpoints" / w.LPIPS_BACKBONES["alex"]
        )
    with _seeded(), _torch_home(home):  # pyiqa's LPIPS reads the AlexNet file just written
        net = LPIPS(pretrained=False, net="alex", version="0.1")
    # LPIPS training clamps its 1x1 channel weights at 0, so released files are non-negative (distances >= 0)
    linear = {k: v.abs() for k, v in net.state_dict().items() if re.match(w.LPIPS_LINEAR_KEYS, k)}
    return [alexnet, _save(linear, home / "hub" / "pyiqa" / w.LPIPS_FILES["0.1_alex"])]


def write_clip_and_prompts(home: Path, name: str) -> list[Path]:
    """A CLIP archive and the CLIP-IQA+ prompt files that go with it."""
    backbone = write_clip_archive(name, home / "hub" / "clip" / w.CLIP_BACKBONES[name][1])
    pyiqa_dir = home / "hub" / "pyiqa"
    if name == "RN50":
        ctx = _clipiqa_state("clipiqa+", backbone)["prompt_learner.ctx"]
        return [
            backbone,
            _save(ctx, pyiqa_dir / w.CLIPIQA_FILES["clipiqa+"]),
            _save(
                {"params": _clipiqa_state("clipiqa+_rn50_512", backbone)},
                pyiqa_dir / w.CLIPIQA_FILES["clipiqa+_rn50_512"],
            ),
        ]
    return [
        backbone,
        _save(
            {"params": _clipiqa_state("clipiqa+_vitL14_512", backbone)},
            pyiqa_dir / w.CLIPIQA_FILES["clipiqa+_vitL14_512"],
        ),
    ]


def make_fixture_weights(out: str | os.PathLike, with_vit_l14: bool = False) -> list[Path]:
    """Write the fixture weight home at ``out``; returns the files written."""
    home = Path(out)
    pyiqa_dir = home / "hub" / "pyiqa"
    files = [
        write_musiq(pyiqa_dir),
        write_maniqa(pyiqa_dir),
        *write_lpips_alex(home),
        *write_clip_and_prompts(home, "RN50"),
    ]
    if with_vit_l14:
        files += write_clip_and_prompts(home, "ViT-L/14")
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="weight home to write (becomes iqa.weights_dir)")
    parser.add_argument(
        "--with-vit-l14", action="store_true", help="also write ViT-L/14 (~0.9 GB) for clipiqa+_vitL14_512"
    )
    args = parser.parse_args(argv)
    for path in make_fixture_weights(args.out, args.with_vit_l14):
        print(f"{path.stat().st_size / 2**20:9.1f} MiB  {path}")


if __name__ == "__main__":
    main()
