"""Tiny random-weight models in the exact format of the published ones.

``python scripts/tiny_models.py --kind flux|sdxl|pixart_sigma|sana --out DIR`` writes a diffusers pipeline
folder with the same component names, classes (``model_index.json``) and file layout as
FLUX.1-dev, SDXL base 1.0, PixArt-Sigma-XL-2-1024-MS or Sana_1600M_1024px_diffusers, but with a few
thousand random parameters per component. Everything is built offline in code and seeded: tokenizers
get a vocabulary made here (byte-level BPE for CLIP, Unigram for T5, byte-fallback BPE for Gemma).

The public restorers' weights, for the tiny environment (``make demo``):
``--kind realesrgan --out FILE.pth`` writes an RRDBNet checkpoint laid out like RealESRGAN_x4plus.pth
(``{"params_ema": state_dict}``, architecture ``configs/tiny_realesrgan.json``); ``--kind
flux_controlnet --out DIR`` a diffusers ``FluxControlNetModel`` folder (config.json + safetensors, like
jasperai/Flux.1-dev-Controlnet-Upscaler) that fits the tiny Flux (``configs/tiny_flux_controlnet.json``);
``--kind nsfw_classifier --out DIR`` a ViT image classifier folder like Falconsai/nsfw_image_detection (the
content filter's, ``fluxir.fluxgen.content_filter``) whose weights are set so a red image is flagged.

Why: the committed ``data/01_raw/tiny/flux`` has no tokenizers and no text encoders, so the code a first
real run goes through (``encode_prompt`` with CLIP + T5, dropping the encoders, other backends' keywords)
would otherwise never run before a GPU job. These folders prove loaders, keywords, shapes and file
formats; they prove nothing about image quality.

Tokenizers and text encoders are made in :mod:`tiny_text`, the pipelines in :mod:`tiny_pipelines` (both
next to this script); this module writes them as folders and files. These are development tools: they are not
part of the installed ``fluxir`` package.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTokenizer

from fluxir.models.flux import load_config
from tiny_pipelines import BUILDERS, HUB_CLASSES

# ----------------------------------------------------------------------------------------------------
# Writing a folder


def is_complete(folder: Path, kind: str) -> bool:
    """True when ``folder`` holds a model_index.json naming every component of ``kind`` and each component's folder."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return False
    index = json.loads(index_file.read_text())
    return all(index.get(name) == list(cls) and (folder / name).is_dir() for name, cls in HUB_CLASSES[kind].items())


def _write_clip_vocab_files(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Replace tokenizer.json by vocab.json + merges.txt: the hub's CLIP tokenizer folders have only these,
    so loading must go through transformers' conversion of the original BPE files, as a real run does."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer.json").unlink()


def write_tiny_pipeline(kind: str, out: str | Path, seed: int = 0) -> Path:
    """Write the tiny ``kind`` pipeline folder at ``out`` and return it.

    Idempotent (a complete folder is left as it is) and atomic (built in ``<out>.tmp``, then renamed).
    The same ``seed`` gives byte-identical weights.
    """
    if kind not in BUILDERS:
        raise ValueError(f"unknown tiny model kind {kind!r}: choose one of {sorted(BUILDERS)}")
    out = Path(out)
    if is_complete(out, kind):
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} exists but is not a complete tiny {kind} folder (model_index.json or a component is missing "
            "or differs): delete it or choose another --out"
        )
    torch.manual_seed(seed)
    pipe = BUILDERS[kind]()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    # save_pretrained records the classes transformers 5 instantiated (T5Tokenizer for T5TokenizerFast):
    # write the hub snapshot's names, which is what a real folder has and what loading must accept.
    index_file = tmp / "model_index.json"
    index = json.loads(index_file.read_text())
    index.update({name: list(cls) for name, cls in HUB_CLASSES[kind].items()})
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for name, (_, cls) in HUB_CLASSES[kind].items():
        if cls == "CLIPTokenizer":
            _write_clip_vocab_files(getattr(pipe, name), tmp / name)
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    return out


# ----------------------------------------------------------------------------------------------------
# The public restorers' weights


def write_tiny_realesrgan(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random RRDBNet as ``{"params_ema": state_dict}`` to the file ``out`` (kept if it exists)."""
    from fluxir.compat import import_basicsr
    from fluxir.io.atomic import atomic_file

    out = Path(out)
    if out.is_file():
        return out
    import_basicsr()
    from basicsr.archs.rrdbnet_arch import RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(num_in_ch=3, num_out_ch=3, **load_config("tiny_realesrgan"))
    with torch.no_grad():  # random RRDBNets output ~ -0.05 +- 0.003 (all black once clamped): centre and widen it
        net.conv_last.weight.mul_(10.0)
        net.conv_last.bias.fill_(0.5)
    with atomic_file(out) as tmp:
        torch.save({"params_ema": net.state_dict()}, tmp)
    return out


def build_flux_controlnet() -> Any:
    """A random FluxControlNetModel that fits the tiny Flux. Its zero-initialised output layers (ControlNet's
    "zero convolutions") get small random values, as training gives them, so the control image matters."""
    from diffusers import FluxControlNetModel

    controlnet = FluxControlNetModel(**load_config("tiny_flux_controlnet"))
    for name in ("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder"):
        for param in getattr(controlnet, name).parameters():
            torch.nn.init.normal_(param, std=0.2)
    return controlnet


def write_tiny_controlnet(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny ControlNet folder at ``out`` (kept if it has a config.json), atomically."""
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but has no config.json: delete it or choose another --out")
    from fluxir.io.atomic import atomic_directory

    torch.manual_seed(seed)
    with atomic_directory(out.resolve()) as tmp:
        build_flux_controlnet().save_pretrained(tmp)
    return out


def build_nsfw_classifier() -> Any:
    """A tiny ``ViTForImageClassification`` in Falconsai/nsfw_image_detection's format (labels {0: normal, 1: nsfw})
    whose weights are set by hand so its answer is known: its ``nsfw`` probability is ~1 for a saturated red image
    and ~0 for grey, white, black or typical images, so a test can flag an image it chose.

    How: each 16x16 patch embeds to [r, -r, 1, -1] with r = mean(R) - (mean(G) + mean(B)) / 2 - 1 on the
    processor's [-1, 1] pixels (red: r = 1, grey or white: r = -1); attention is uniform (zero query/key) with
    identity values, so the CLS token becomes the mean of the normalised patch embeddings; the MLP adds nothing;
    after the final layer norm the CLS token's first entry is the sign of r, scaled by the classifier to a
    logit gap of 20. A machinery check, not an NSFW detector.
    """
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=16,
        num_channels=3,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
    )
    model = ViTForImageClassification(config).eval()
    eye = torch.eye(4)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        embeddings = model.vit.embeddings
        projection = embeddings.patch_embeddings.projection  # Conv2d(3, 4, 16, stride 16)
        area = projection.kernel_size[0] * projection.kernel_size[1]
        redness = torch.stack([torch.full((16, 16), 1.0), torch.full((16, 16), -0.5), torch.full((16, 16), -0.5)])
        projection.weight[0] = redness / area
        projection.weight[1] = -redness / area
        projection.bias.copy_(torch.tensor([-1.0, 1.0, 1.0, -1.0]))
        for name, param in model.named_parameters():
            if name.endswith(("v_proj.weight", "o_proj.weight")):  # transformers 5's names of ViT's value/output
                param.copy_(eye)
            elif "layernorm" in name and name.endswith(".weight"):
                param.fill_(1.0)
        model.classifier.weight.copy_(torch.tensor([[-10.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]]))
    return model


def write_tiny_nsfw_classifier(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny classifier folder at ``out`` (config.json, preprocessor_config.json, model.safetensors, as
    Falconsai/nsfw_image_detection), kept if it has a config.json; ``seed`` is unused (the weights are set)."""
    from transformers import ViTImageProcessor

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but has no config.json: delete it or choose another --out")
    from fluxir.io.atomic import atomic_directory

    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": 32, "width": 32},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    with atomic_directory(out.resolve()) as tmp:
        build_nsfw_classifier().save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


WEIGHT_WRITERS: dict[str, Callable[[str | Path, int], Path]] = {
    "realesrgan": write_tiny_realesrgan,
    "flux_controlnet": write_tiny_controlnet,
    "nsfw_classifier": write_tiny_nsfw_classifier,
}


def main(argv: list[str] | None = None) -> None:
    """Write a tiny random-weight model in a published model's format (offline, deterministic)."""
    parser = argparse.ArgumentParser(prog="python scripts/tiny_models.py", description=main.__doc__)
    parser.add_argument("--kind", required=True, choices=sorted([*BUILDERS, *WEIGHT_WRITERS]))
    parser.add_argument(
        "--out",
        required=True,
        help="folder (or .pth file for realesrgan) to write; left as it is when already complete",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind in WEIGHT_WRITERS:
        print(WEIGHT_WRITERS[args.kind](args.out, args.seed))
    else:
        print(write_tiny_pipeline(args.kind, args.out, args.seed))


if __name__ == "__main__":
    main()
