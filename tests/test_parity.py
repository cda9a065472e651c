"""Parity with an independent implementation: diffusers' models, built by diffusers' own CompVis converters from
the same random single-file checkpoint that minip2p.load reads."""
import pytest
import torch

import minip2p
from helpers import diffusers_text_encoder, diffusers_unet, diffusers_vae, write_checkpoint
from minip2p.text import encode_text, tokenize

TOL = 1e-4


def inputs(cfg, size=16, batch=2):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 4, size, size, generator=g)
    ctx = torch.randn(batch, 77, cfg.unet.context_dim, generator=g)
    return x, ctx, g


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_unet_equals_diffusers(small_ckpt, family):
    path, sd, cfg = small_ckpt[family]
    pipe, ref = minip2p.load(path), diffusers_unet(sd, cfg)
    x, ctx, _ = inputs(cfg)
    t = torch.tensor([981, 21])
    with torch.no_grad():
        ours, theirs = pipe.unet(x, t, ctx), ref(x, t, ctx).sample
    assert ours.abs().mean() > 0.1
    assert (ours - theirs).abs().max() < TOL


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_vae_encode_and_decode_equal_diffusers(small_ckpt, family):
    path, sd, cfg = small_ckpt[family]
    pipe, ref = minip2p.load(path), diffusers_vae(sd, cfg)
    x, _, g = inputs(cfg)
    image = torch.rand(1, 3, 64, 48, generator=g) * 2 - 1  # not square: catches h/w swaps
    with torch.no_grad():
        mean, logvar = pipe.vae.encode(image)
        dist = ref.encode(image).latent_dist
        decoded, ref_decoded = pipe.vae.decode(x), ref.decode(x).sample
    assert mean.shape == (1, 4, 8, 6)
    assert (mean - dist.mean).abs().max() < TOL and (logvar - dist.logvar).abs().max() < TOL
    assert decoded.abs().mean() > 0.1 and (decoded - ref_decoded).abs().max() < TOL


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_text_encoder_equals_diffusers(small_ckpt, family):
    path, sd, cfg = small_ckpt[family]
    pipe, ref = minip2p.load(path), diffusers_text_encoder(sd, cfg)
    ids = tokenize(pipe.tokenizer, ["a photo of a cat", "a red circle and a blue square"])
    with torch.no_grad():
        ours, theirs = encode_text(pipe.text_encoder, ids, cfg.text.penultimate), ref(ids).last_hidden_state
    assert (ours - theirs).abs().max() < TOL
    if family == "sd2":  # OpenCLIP pads with "!" (id 0), not end-of-text
        assert ids[0, -1] == 0
    else:
        assert ids[0, -1] == 49407


def test_generate_equals_diffusers_pipeline(small_ckpt):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    path, sd, cfg = small_ckpt["sd1"]
    pipe = minip2p.load(path)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    ref = StableDiffusionPipeline(vae=diffusers_vae(sd, cfg), text_encoder=diffusers_text_encoder(sd, cfg),
                                  tokenizer=pipe.tokenizer, unet=diffusers_unet(sd, cfg), scheduler=sched,
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    prompts = ["a red circle on a white background", "a blue square"]
    latent = pipe.initial_latent(3, 128, 128)
    with torch.no_grad():
        ours = pipe.decode(pipe.sample(prompts, steps=5, height=128, width=128, latents=latent, progress=False))
        ours = (ours / 2 + 0.5).clamp(0, 1)
        theirs = ref(prompts, height=128, width=128, num_inference_steps=5, guidance_scale=7.5,
                     latents=latent.expand(2, -1, -1, -1).clone(), output_type="pt").images
    assert ours.shape == theirs.shape == (2, 3, 128, 128)
    assert (ours - theirs).abs().max() < 1e-3
    assert (ours[0] - ours[1]).abs().max() > 1e-2  # the two prompts really differ


def test_full_size_sd1_equals_diffusers(tmp_path):
    """The real SD1 shapes, end to end through a file written like v1-5-pruned-emaonly.safetensors (no config in
    it, schedule buffers, an EMA entry and position_ids that the loader must ignore)."""
    cfg = minip2p.ModelConfig.sd1()
    extra = {"betas": torch.linspace(0.00085, 0.012, 1000), "alphas_cumprod": torch.rand(1000),
             "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0),
             "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}
    sd = write_checkpoint(tmp_path / "sd15.safetensors", cfg, seed=5, with_config=False, extra=extra)
    pipe = minip2p.load(tmp_path / "sd15.safetensors")
    assert pipe.config.family == "sd1"
    x, ctx, _ = inputs(cfg, size=32, batch=1)
    with torch.no_grad():
        ours = pipe.unet(x, 500, ctx)
        del pipe
        ref = diffusers_unet(sd, cfg)
        del sd
        theirs = ref(x, 500, ctx).sample
    assert ours.abs().mean() > 0.1
    assert (ours - theirs).abs().max() < TOL
