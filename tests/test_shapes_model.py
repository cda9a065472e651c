"""The bundled shapes-world model: what it is on disk, and that it draws what it is told (measured by the
analyser).

The full measurement (200 prompts) is `python benchmarks/shapes_quality.py`; this is a smaller sample of it.
"""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from minip2p import shapes
from minip2p.checkpoint import BUNDLED_MODEL, META_KEY
from minip2p.evaluation import adherence, at_least, vae_psnr
from minip2p.images import to_tensor

ADHERENCE = 0.9  # the model shows every attribute of its prompt in at least 90% of images (its training gate)


def test_bundled_file_is_a_small_sd_single_file_checkpoint():
    assert BUNDLED_MODEL.stat().st_size < 30e6  # small enough to ship in the wheel
    with safe_open(str(BUNDLED_MODEL), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert META_KEY in meta and dtypes == {"F16"}
    prefixes = {".".join(k.split(".")[:2]) if k.startswith("model.") else k.split(".")[0] for k in keys}
    assert prefixes == {"model.diffusion_model", "first_stage_model", "cond_stage_model"}
    assert all(
        k.startswith("cond_stage_model.transformer.text_model.") for k in keys if k.startswith("cond_stage")
    )


def test_load_with_no_path_is_the_bundled_model(shapes_pipe):
    assert shapes_pipe.config.image_size == 64 and shapes_pipe.pixels_per_cell == 4  # 16x16x4 latents
    assert shapes_pipe.dtype == torch.float32  # stored fp16, run fp32
    places = shapes_pipe.unet.places()
    assert {(p.downsample, p.where) for p in places if p.is_cross} >= {
        (1, "down"),
        (2, "down"),
        (4, "mid"),
        (1, "up"),
    }


def test_latent_scale_factor_is_one_over_the_latent_std(shapes_pipe):
    rng = np.random.default_rng(5)
    imgs = np.stack([shapes.render(shapes.sample_spec(rng, 0.0), rng)[0] for _ in range(64)])
    std = shapes_pipe.encode(to_tensor(imgs)).std().item()  # VAE mean x scale factor: unit variance
    assert 0.9 < std < 1.1, std


@pytest.mark.slow
def test_vae_reconstructs_held_out_renders_above_30_db(shapes_pipe):
    assert vae_psnr(shapes_pipe, n=128) >= 30.0


@pytest.mark.slow
def test_prompt_adherence_on_40_prompts(shapes_pipe):
    n = 40
    rates, _ = adherence(shapes_pipe, n=n, seed=1, progress=False)
    assert all(at_least(round(rate * n), n, ADHERENCE) for rate in rates.values()), rates
