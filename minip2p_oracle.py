"""diffusers as the oracle: its models, scheduler and pipeline built from the same random weights that
`minip2p.load` reads, through diffusers' own converters. For tests and benchmarks only: a module of its own,
beside the package, so that nothing under minip2p/ imports diffusers (it comes with the [dev] extra)."""

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_open_clip_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

from minip2p.checkpoint import SDXL_OPENCLIP_PREFIX, UNET_PREFIX
from minip2p.config import ModelConfig
from minip2p.testing import ldm_config
from minip2p.text import TextConfig, build_text_encoder


def ddim_scheduler(steps_offset: int = 1, prediction: str = "epsilon") -> DDIMScheduler:
    """SD's DDIM schedule as diffusers configures it (scaled linear betas 0.00085..0.012, no clipping)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=steps_offset,
        prediction_type={"epsilon": "epsilon", "v": "v_prediction"}[prediction],
    )


def dpm_scheduler(prediction: str = "epsilon") -> DPMSolverMultistepScheduler:
    """DPM-Solver++(2M) as `DPMSolverMultistepScheduler.from_config` makes it from SD's scheduler config
    (leading spacing, steps_offset 1): dpmsolver++, order 2, midpoint, lower order at the end, to sigma 0."""
    return DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="leading",
        steps_offset=1,
        prediction_type={"epsilon": "epsilon", "v": "v_prediction"}[prediction],
    )


def unet(cfg: ModelConfig, state_dict: dict, shared: bool = False) -> UNet2DConditionModel:
    """diffusers' UNet from our UNet's state dict (keys without the checkpoint prefix), by its converter. An
    SDXL config gets SDXL's "text_time" conditioning, which the converter infers from the context width alone
    (2048), so not for a narrow SDXL. shared: the model holds the given tensors (no copy: two full-size SDXL
    UNets fit in memory)."""
    ldm = {UNET_PREFIX + k: v for k, v in state_dict.items()}
    config = create_unet_diffusers_config_from_ldm(ldm_config(cfg), ldm)
    if cfg.family == "sdxl":
        config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256)
    if shared:
        with torch.device("meta"):
            model = UNet2DConditionModel(**config)
    else:
        model = UNet2DConditionModel(**config)
    model.load_state_dict(convert_ldm_unet_checkpoint(ldm, config), strict=True, assign=shared)
    return model.eval()


def text_encoder(sd: dict, cfg: ModelConfig):
    """The text encoder as diffusers reads it from a single file's state dict: SD1 through its CLIP converter;
    SD2 through its OpenCLIP converter, into a CLIPTextModel one layer short (diffusers' way of taking the
    penultimate layer)."""
    if cfg.family == "sd2":
        model = build_text_encoder(TextConfig(**{**cfg.text.__dict__, "num_layers": cfg.text.num_layers - 1}))
        dropped = f"encoder.layers.{cfg.text.num_layers - 1}."
        conv = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(model, sd).items()}
        conv = {k: v for k, v in conv.items() if not k.startswith(dropped) and k != "text_projection.weight"}
    else:
        model = build_text_encoder(cfg.text)
        conv = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(sd).items()}
        conv.pop("embeddings.position_ids", None)
    model.load_state_dict(conv, strict=True)
    return model.eval()


def sd_pipeline(unet, vae, text_encoder, tokenizer, scheduler=None) -> StableDiffusionPipeline:
    """diffusers' StableDiffusionPipeline on given parts, with SD's DDIM schedule (or `scheduler`), no safety
    checker and no progress bar."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_images(pipe: StableDiffusionPipeline, prompts, steps: int, latent) -> torch.Tensor:
    """diffusers' images (B, 3, H, W) in [0, 1] of `prompts` from one latent (1, 4, h, w), guidance 7.5."""
    h, w = (8 * s for s in latent.shape[2:])
    latents = latent.expand(len(prompts), -1, -1, -1).clone()
    out = pipe(
        prompts,
        height=h,
        width=w,
        num_inference_steps=steps,
        guidance_scale=7.5,
        latents=latents,
        output_type="pt",
    )
    return out.images


def sdxl_text_encoders(sd: dict, cfg: ModelConfig) -> tuple:
    """SDXL's two text encoders as diffusers reads them from a single file: CLIP ViT-L by its CLIP converter,
    OpenCLIP bigG by its OpenCLIP converter into a CLIPTextModelWithProjection."""
    first = build_text_encoder(cfg.text)
    conv = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(sd).items()}
    conv.pop("embeddings.position_ids", None)
    first.load_state_dict(conv, strict=True)
    second = build_text_encoder(cfg.text_2)
    second.load_state_dict(convert_open_clip_checkpoint(second, sd, SDXL_OPENCLIP_PREFIX), strict=True)
    return first.eval(), second.eval()


def sdxl_pipeline(path, sd: dict, cfg: ModelConfig, tokenizer, tokenizer_2) -> StableDiffusionXLPipeline:
    """diffusers' StableDiffusionXLPipeline on a single SDXL file (UNet, VAE, both text encoders through
    diffusers' converters), with SD's DDIM schedule, zeros for no negative prompt, no watermark."""
    prefix = len(UNET_PREFIX)
    text_encoder, text_encoder_2 = sdxl_text_encoders(sd, cfg)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_single_file(str(path), original_config=ldm_config(cfg)).eval(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet(cfg, {k[prefix:]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}),
        scheduler=ddim_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_transformer(sd: dict, cfg, shared: bool = False):
    """diffusers' SD3Transformer2DModel from an SD3 single file's state dict, through its converter. shared:
    the model holds the given tensors where the converter keeps them (all but q, k, v: a full-size SD3.5
    Medium fits twice in memory)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    m = cfg.mmdit
    build = torch.device("meta") if shared else torch.device("cpu")
    with build:
        model = SD3Transformer2DModel(
            sample_size=cfg.image_size // 8,
            patch_size=m.patch_size,
            in_channels=m.in_channels,
            num_layers=m.depth,
            attention_head_dim=m.head_dim,
            num_attention_heads=m.num_heads,
            joint_attention_dim=m.context_dim,
            caption_projection_dim=m.hidden_size,
            pooled_projection_dim=m.pooled_dim,
            out_channels=m.in_channels,
            pos_embed_max_size=m.pos_embed_max_size,
            dual_attention_layers=tuple(m.dual_attention_layers),
            qk_norm="rms_norm" if m.qk_norm else None,
        )
    ckpt = {k: v if shared else v.clone() for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    model.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(ckpt), strict=True, assign=shared)
    return model.eval()


def sd3_vae(sd: dict, cfg):
    """diffusers' AutoencoderKL for SD3's VAE (16 channels, no quant convs, its scale and shift)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    v = cfg.vae
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(v.ch_mult),
        up_block_types=["UpDecoderBlock2D"] * len(v.ch_mult),
        block_out_channels=[v.ch * m for m in v.ch_mult],
        layers_per_block=v.num_res_blocks,
        latent_channels=v.z_channels,
        norm_num_groups=v.norm_groups,
        scaling_factor=v.scale_factor,
        shift_factor=v.shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    model = AutoencoderKL(**config)
    ckpt = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    model.load_state_dict(convert_ldm_vae_checkpoint(ckpt, config), strict=True)
    return model.eval()


def sd3_pipeline(sd: dict, cfg, pipe):
    """diffusers' StableDiffusion3Pipeline on the same weights: the transformer and VAE through diffusers'
    converters, the text encoders and tokenizers our pipeline holds (transformers' own classes)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    out = StableDiffusion3Pipeline(
        transformer=sd3_transformer(sd, cfg),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift),
        vae=sd3_vae(sd, cfg),
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=pipe.tokenizer_2,
        text_encoder_3=pipe.text_encoder_3,
        tokenizer_3=pipe.tokenizer_3,
    )
    out.set_progress_bar_config(disable=True)
    return out
