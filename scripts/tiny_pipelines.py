"""The four tiny pipelines: FLUX.1-dev, SDXL base 1.0, PixArt-Sigma and Sana layouts with random weights.

Each builder returns a diffusers pipeline with the published model's component names and classes
(``HUB_CLASSES``, as in its ``model_index.json``) but a few thousand parameters per component;
:mod:`tiny_models` writes them to folders.

Dimensions that must agree (as in the real checkpoints):
- Flux: T5 ``d_model`` = transformer ``joint_attention_dim``; CLIP ``hidden_size`` (its pooled output)
  = ``pooled_projection_dim``; CLIP has 77 positions (``tokenizer.model_max_length``).
- SDXL: UNet ``cross_attention_dim`` = CLIP-1 hidden + CLIP-2 hidden (penultimate layers concatenated);
  ``projection_class_embeddings_input_dim`` = 6 * ``addition_time_embed_dim`` + CLIP-2 ``projection_dim``.
- PixArt-Sigma: T5 ``d_model`` = transformer ``caption_channels``.
- Sana: Gemma2 ``hidden_size`` = transformer ``caption_channels``; DC-AE latent channels = transformer in/out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from transformers import CLIPTextModel, CLIPTextModelWithProjection, Gemma2Config, Gemma2Model

from fluxir.models.flux import load_config
from tiny_text import clip_text_config, clip_tokenizer, gemma_tokenizer, t5_encoder, t5_tokenizer

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
        text_encoder=CLIPTextModel(clip_text_config(tokenizer, hidden_size=cfg.pooled_projection_dim)),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2, d_model=cfg.joint_attention_dim),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
        vae=AutoencoderKL(**load_config("tiny_vae")),
    )


def build_sdxl() -> StableDiffusionXLPipeline:
    """SDXL base 1.0's layout: CLIP-L (hidden 16) + OpenCLIP-bigG with projection (hidden 32), a text-time UNet."""
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!"
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, hidden_size=16))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, hidden_size=32, projection_dim=32))
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
        text_encoder=t5_encoder(tokenizer, d_model=32),
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
