"""Tiny random-weight models in the exact format of the published ones.

``python -m fluxir.models.tiny --kind flux|sdxl|pixart_sigma|sana --out DIR`` writes a diffusers pipeline
folder with the same component names, classes (``model_index.json``) and file layout as
FLUX.1-dev, SDXL base 1.0, PixArt-Sigma-XL-2-1024-MS or Sana_1600M_1024px_diffusers, but with a few
thousand random parameters per component. Everything is built offline in code and seeded: tokenizers
get a vocabulary made here (byte-level BPE for CLIP, Unigram for T5, byte-fallback BPE for Gemma).

The public restorers' weights, for the tiny environment (``make demo``):
``--kind realesrgan --out FILE.pth`` writes an RRDBNet checkpoint laid out like RealESRGAN_x4plus.pth
(``{"params_ema": state_dict}``, architecture ``configs/tiny_realesrgan.json``); ``--kind
flux_controlnet --out DIR`` a diffusers ``FluxControlNetModel`` folder (config.json + safetensors, like
jasperai/Flux.1-dev-Controlnet-Upscaler) that fits the tiny Flux (``configs/tiny_flux_controlnet.json``).

Why: the committed ``data/01_raw/tiny/flux`` has no tokenizers and no text encoders, so the code a first
real run goes through (``encode_prompt`` with CLIP + T5, dropping the encoders, other backends' keywords)
would otherwise never run before a GPU job. These folders prove loaders, keywords, shapes and file
formats; they prove nothing about image quality.

Dimensions that must agree (as in the real checkpoints):
- Flux: T5 ``d_model`` = transformer ``joint_attention_dim``; CLIP ``hidden_size`` (its pooled output)
  = ``pooled_projection_dim``; CLIP has 77 positions (``tokenizer.model_max_length``).
- SDXL: UNet ``cross_attention_dim`` = CLIP-1 hidden + CLIP-2 hidden (penultimate layers concatenated);
  ``projection_class_embeddings_input_dim`` = 6 * ``addition_time_embed_dim`` + CLIP-2 ``projection_dim``.
- PixArt-Sigma: T5 ``d_model`` = transformer ``caption_channels``.
- Sana: Gemma2 ``hidden_size`` = transformer ``caption_channels``; DC-AE latent channels = transformer in/out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from fluxir.models.flux import load_config

# Words that get whole-word tokens; everything else falls back to characters (CLIP, Gemma) or <unk> (T5).
WORDS = (
    "a",
    "photo",
    "of",
    "the",
    "an",
    "in",
    "on",
    "with",
    "and",
    "high",
    "quality",
    "detailed",
    "image",
    "landscape",
    "portrait",
    "city",
    "street",
    "animal",
    "face",
    "food",
    "building",
    "sky",
    "water",
    "tree",
    "night",
    "day",
)

# The component classes in each hub snapshot's model_index.json (transformers 5 resolves the *Fast
# names to the same tokenizers-backed classes; the names are kept so the folders read like the hub's).
HUB_CLASSES: dict[str, dict[str, tuple[str, str]]] = {
    "flux": {
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "T5EncoderModel"),
        "tokenizer": ("transformers", "CLIPTokenizer"),
        "tokenizer_2": ("transformers", "T5TokenizerFast"),
        "transformer": ("diffusers", "FluxTransformer2DModel"),
        "vae": ("diffusers", "AutoencoderKL"),
    },
    "sdxl": {
        "scheduler": ("diffusers", "EulerDiscreteScheduler"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
        "tokenizer": ("transformers", "CLIPTokenizer"),
        "tokenizer_2": ("transformers", "CLIPTokenizer"),
        "unet": ("diffusers", "UNet2DConditionModel"),
        "vae": ("diffusers", "AutoencoderKL"),
    },
    "pixart_sigma": {
        "scheduler": ("diffusers", "DPMSolverMultistepScheduler"),
        "text_encoder": ("transformers", "T5EncoderModel"),
        "tokenizer": ("transformers", "T5Tokenizer"),
        "transformer": ("diffusers", "PixArtTransformer2DModel"),
        "vae": ("diffusers", "AutoencoderKL"),
    },
    "sana": {
        "scheduler": ("diffusers", "DPMSolverMultistepScheduler"),
        "text_encoder": ("transformers", "Gemma2Model"),
        "tokenizer": ("transformers", "GemmaTokenizerFast"),
        "transformer": ("diffusers", "SanaTransformer2DModel"),
        "vae": ("diffusers", "AutoencoderDC"),
    },
}


# ----------------------------------------------------------------------------------------------------
# Tokenizers with vocabularies made here


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the base alphabet of byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _word_merges(words: tuple[str, ...] | list[str], suffix: str = "", prefix: str = "") -> list[tuple[str, str]]:
    """Left-to-right BPE merges that assemble each word (``prefix + word``; the last symbol gets ``suffix``)."""
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = list(prefix + word)
        symbols[-1] += suffix
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
    return merges


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer (vocab.json + merges.txt like openai/clip-vit-large-patch14), 77 tokens."""
    alphabet = list(_bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = _word_merges(WORDS, suffix="</w>")
    vocab_tokens += ["".join(pair) for pair in merges]
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]  # last ids, as in CLIP (49406, 49407)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """A T5 Unigram tokenizer (tokenizer.json like google/t5-v1_1-xxl's): <pad>=0, </s>=1, <unk>=2."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -3.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def gemma_tokenizer() -> GemmaTokenizerFast:
    """A Gemma byte-fallback BPE tokenizer (tokenizer.json like google/gemma-2-2b-it's)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + list("▁abcdefghijklmnopqrstuvwxyz")
    merges = _word_merges(WORDS, prefix="▁")
    tokens += ["".join(pair) for pair in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return GemmaTokenizerFast(vocab=vocab, merges=merges, model_max_length=2048)


def _clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_encoder(tokenizer: T5TokenizerFast, d_model: int) -> T5EncoderModel:
    """A T5 v1.1 encoder (gated-gelu, as in FLUX.1-dev's and PixArt-Sigma's t5-v1_1-xxl) of width ``d_model``."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=0,
        )
    )


def _sd_vae(latent_channels: int, scaling_factor: float) -> AutoencoderKL:
    """A 4-level (downscale 8, as the real SD/SDXL VAE) AutoencoderKL with 8 channels per level."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


# ----------------------------------------------------------------------------------------------------
# The four pipelines


def build_flux() -> FluxPipeline:
    """FLUX.1-dev's layout: CLIP-L + T5 v1.1 encoders, a 2+2-block transformer, a 16-channel VAE."""
    transformer = FluxTransformer2DModel(**load_config("tiny_flux_transformer"))
    cfg = transformer.config
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        text_encoder=CLIPTextModel(_clip_text_config(tokenizer, hidden_size=cfg.pooled_projection_dim)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(tokenizer_2, d_model=cfg.joint_attention_dim),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
        vae=AutoencoderKL(**load_config("tiny_vae")),
    )


def build_sdxl() -> StableDiffusionXLPipeline:
    """SDXL base 1.0's layout: CLIP-L (hidden 16) + OpenCLIP-bigG with projection (hidden 32), a text-time UNet."""
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!"
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, hidden_size=16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer_2, hidden_size=32, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=16 + 32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=_sd_vae(4, 0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_pixart_sigma() -> PixArtSigmaPipeline:
    """PixArt-Sigma's layout: T5 v1.1 + a 2-layer PixArtTransformer2DModel (sample_size 32: the 256 bins)."""
    tokenizer = t5_tokenizer(model_max_length=300)
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        caption_channels=32,
        cross_attention_dim=16,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
        interpolation_scale=0.5,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        solver_order=2,
        algorithm_type="dpmsolver++",
        lower_order_final=True,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(tokenizer, d_model=32),
        vae=_sd_vae(4, 0.13025),
        transformer=transformer,
        scheduler=scheduler,
    )


def build_sana() -> SanaPipeline:
    """Sana's layout: Gemma2 + a 1-layer SanaTransformer2DModel (sample_size 16: the 512 bins) + a 32x DC-AE."""
    tokenizer = gemma_tokenizer()
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    transformer = SanaTransformer2DModel(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=4,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=16,
        mlp_ratio=2.5,
        sample_size=16,
        patch_size=1,
    )
    stages = 6  # 2**5 = 32x spatial compression, as the real DC-AE f32c32
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=8,
        attention_head_dim=4,
        encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        encoder_block_out_channels=(8,) * stages,
        decoder_block_out_channels=(8,) * stages,
        encoder_layers_per_block=(1,) * stages,
        decoder_layers_per_block=(1,) * stages,
        encoder_qkv_multiscales=((),) * 3 + ((5,),) * 3,
        decoder_qkv_multiscales=((),) * 3 + ((5,),) * 3,
        upsample_block_type="interpolate",
        downsample_block_type="Conv",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=3.0,
        solver_order=2,
        algorithm_type="dpmsolver++",
        lower_order_final=True,
    )
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


BUILDERS: dict[str, Callable[[], Any]] = {
    "flux": build_flux,
    "sdxl": build_sdxl,
    "pixart_sigma": build_pixart_sigma,
    "sana": build_sana,
}


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
    from fluxir.compat.basicsr import import_basicsr
    from fluxir.io import atomic_file

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
    from fluxir.io import atomic_directory

    torch.manual_seed(seed)
    with atomic_directory(out.resolve()) as tmp:
        build_flux_controlnet().save_pretrained(tmp)
    return out


WEIGHT_WRITERS: dict[str, Callable[[str | Path, int], Path]] = {
    "realesrgan": write_tiny_realesrgan,
    "flux_controlnet": write_tiny_controlnet,
}


def main(argv: list[str] | None = None) -> None:
    """Write a tiny random-weight model in a published model's format (offline, deterministic)."""
    parser = argparse.ArgumentParser(prog="python -m fluxir.models.tiny", description=main.__doc__)
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
