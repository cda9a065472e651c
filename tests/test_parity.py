"""Parity with an independent implementation: diffusers' models, read by diffusers' own single-file loader and
converters from the same random checkpoint that minip2p.load reads. Each test prints the difference it
measured (`python -m pytest tests/test_parity.py -s`: the figures in docs/RESULTS.md)."""

import inspect

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

import minip2p
import minip2p_oracle as oracle
from minip2p.testing import ldm_config, write_checkpoint
from minip2p.text import encode_text, tokenize

TOL = 1e-4  # float noise of fp32 on values of magnitude ~1


def inputs(cfg, size=16, batch=2):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 4, size, size, generator=g)
    ctx = torch.randn(batch, 77, cfg.unet.context_dim, generator=g)
    return x, ctx, g


def report(what, diff):
    print(f"\n{what}: max |minip2p - diffusers| = {diff:.2e}")
    return diff


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_unet_equals_diffusers(small_ckpt, diffusers_models, family):
    path, _, cfg = small_ckpt[family]
    pipe, ref = minip2p.load(path), diffusers_models[family][0]
    x, ctx, _ = inputs(cfg)
    t = torch.tensor([981, 21])
    with torch.no_grad():
        ours, theirs = pipe.unet(x, t, ctx), ref(x, t, ctx).sample
    assert ours.abs().mean() > 0.1  # a real output, not a collapsed one
    assert report(f"{family} UNet", (ours - theirs).abs().max()) < TOL


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_vae_encode_and_decode_equal_diffusers(small_ckpt, diffusers_models, family):
    path, _, cfg = small_ckpt[family]
    pipe, ref = minip2p.load(path), diffusers_models[family][1]
    x, _, g = inputs(cfg)
    image = torch.rand(1, 3, 64, 48, generator=g) * 2 - 1  # not square: catches h/w swaps
    with torch.no_grad():
        mean, logvar = pipe.vae.encode(image)
        dist = ref.encode(image).latent_dist
        decoded, ref_decoded = pipe.vae.decode(x), ref.decode(x).sample
    assert mean.shape == (1, 4, 8, 6)
    assert report(f"{family} VAE encode (mean)", (mean - dist.mean).abs().max()) < TOL
    assert report(f"{family} VAE encode (logvar)", (logvar - dist.logvar).abs().max()) < TOL
    assert decoded.abs().mean() > 0.1
    assert report(f"{family} VAE decode", (decoded - ref_decoded).abs().max()) < TOL


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_text_encoder_equals_diffusers(small_ckpt, diffusers_models, family):
    path, _, cfg = small_ckpt[family]
    pipe, ref = minip2p.load(path), diffusers_models[family][2]
    ids = tokenize(pipe.tokenizer, ["a photo of a cat", "a red circle and a blue square"])
    with torch.no_grad():
        ours, theirs = encode_text(pipe.text_encoder, ids, cfg.text)[0], ref(ids).last_hidden_state
    assert report(f"{family} text encoder", (ours - theirs).abs().max()) < TOL
    pad = 0 if family == "sd2" else 49407  # OpenCLIP pads with "!" (id 0), CLIP with end-of-text
    assert ids[0, -1] == pad


def test_scale_factor_is_config_and_equals_diffusers_default(pipe):
    """The VAE's latent scale is not in the weights: it is SD's 0.18215 by default (diffusers' own default for
    AutoencoderKL), and the latents the UNet sees are the VAE's mean times it."""
    default = inspect.signature(AutoencoderKL.__init__).parameters["scaling_factor"].default
    assert minip2p.VAEConfig().scale_factor == default
    assert not any("scale" in k for k in pipe.vae.state_dict())
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mean = pipe.vae.encode(image)[0]
        assert torch.equal(pipe.encode(image), mean * pipe.config.vae.scale_factor)
        assert torch.allclose(pipe.decode(pipe.encode(image)), pipe.vae.decode(mean), atol=1e-5)


def test_generate_equals_diffusers_pipeline(small_ckpt, diffusers_models, pipe):
    unet, vae, text_encoder = diffusers_models["sd1"]
    ref = oracle.sd_pipeline(unet, vae, text_encoder, pipe.tokenizer)
    prompts = ["a red circle on a white background", "a blue square"]
    latent = pipe.initial_latent(3, 128, 128)
    ours = pipe.generate(
        prompts, steps=5, height=128, width=128, latents=latent, progress=False, output="tensor"
    )
    theirs = oracle.sd_images(ref, prompts, 5, latent)
    ours = (ours / 2 + 0.5).clamp(0, 1)
    assert ours.shape == theirs.shape == (2, 3, 128, 128)
    assert report("generate, 5 steps", (ours - theirs).abs().max()) < 1e-3  # after 5 steps and the VAE
    assert (ours[0] - ours[1]).abs().max() > 1e-2  # the two prompts really differ


@pytest.mark.slow
def test_full_size_sd1_equals_diffusers(tmp_path):
    """The real SD1 shapes, end to end through a file written like v1-5-pruned-emaonly.safetensors (no config
    in it, schedule buffers, an EMA entry and position_ids that the loader must ignore)."""
    cfg = minip2p.ModelConfig.sd1()
    extra = {
        "betas": torch.linspace(0.00085, 0.012, 1000),
        "alphas_cumprod": torch.rand(1000),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(0),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    path = tmp_path / "sd15.safetensors"
    write_checkpoint(path, cfg, seed=5, with_config=False, extra=extra)
    pipe = minip2p.load(path)
    assert pipe.config.family == "sd1"
    x, ctx, _ = inputs(cfg, size=32, batch=1)
    with torch.no_grad():
        ours = pipe.unet(x, 500, ctx)
        del pipe
        ref = UNet2DConditionModel.from_single_file(str(path), original_config=ldm_config(cfg))
        theirs = ref(x, 500, ctx).sample
    assert ours.abs().mean() > 0.1
    assert report("full-size SD1 UNet, 32x32 latent", (ours - theirs).abs().max()) < TOL
