"""The bundled shapes-world model: what it is on disk, and that it draws what it is told (measured by the analyser).

The full measurement (200 prompts) is `python benchmarks/shapes_quality.py`; this is a smaller sample of it.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import minip2p
from minip2p import shapes
from minip2p.checkpoint import BUNDLED, META_KEY

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from shapes_quality import adherence, vae_psnr  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return minip2p.load()


def test_bundled_file_is_a_small_sd_single_file_checkpoint():
    assert BUNDLED.stat().st_size < 30e6
    with safe_open(str(BUNDLED), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert META_KEY in meta and dtypes == {"F16"}
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("model.") else k.split(".")[0] for k in keys}
    assert prefixes == {"model.diffusion_model", "first_stage_model", "cond_stage_model"}
    assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in keys if k.startswith("cond_stage"))


def test_load_with_no_path_is_the_bundled_model(pipe):
    assert pipe.config.image_size == 64 and pipe.factor == 4  # 16x16x4 latents
    assert pipe.dtype == torch.float32                       # stored fp16, run fp32
    places = pipe.unet.places()
    assert {(p.factor, p.where) for p in places if p.is_cross} >= {(1, "down"), (2, "down"), (4, "mid"), (1, "up")}


def test_latent_scale_factor_is_one_over_the_latent_std(pipe):
    rng = np.random.default_rng(5)
    imgs = np.stack([shapes.render(shapes.sample_spec(rng, 0.0), rng)[0] for _ in range(64)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    std = pipe.encode(x).std().item()  # VAE mean x scale factor: unit variance for the UNet
    assert 0.9 < std < 1.1, std


def test_vae_reconstructs_held_out_renders_above_30_db(pipe):
    assert vae_psnr(pipe, n=128) >= 30.0


def test_prompt_adherence_on_40_prompts(pipe):
    rates, _ = adherence(pipe, n=40, seed=1, steps=50)
    assert rates["all"] >= 0.8, rates
    assert min(rates.values()) >= 0.8, rates
