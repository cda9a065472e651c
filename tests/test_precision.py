"""Half precision: the model runs in bf16 or fp16, the sampler's arithmetic stays fp32, and the edits keep
their invariants. Speed and fidelity figures: docs/RESULTS.md."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import minip2p
from minip2p.checkpoint import VAE_PREFIX
from minip2p.testing import small_config, write_checkpoint

P = ["a red circle on a white background", "a blue square on a white background"]
HALF_PRECISION = 0.05  # mean relative error of latents after 6 steps of a 16-bit model (bf16 keeps 8 bits)


def relative_error(x, reference) -> float:
    return float((x - reference).abs().mean() / reference.abs().mean())


@pytest.fixture(scope="module", params=["bfloat16", "float16"], ids=["bf16", "fp16"])
def half(request, small_ckpt):
    return minip2p.load(small_ckpt["sd1"][0], dtype=request.param)


def run(pipe, prompts, controller=None):
    return pipe.sample(prompts, seed=3, steps=6, controller=controller, progress=False)


def test_half_precision_samples_in_fp32_and_stays_finite(half, pipe):
    x = run(half, P)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()  # the DDIM update runs in fp32
    images = half.generate(P, seed=3, steps=6, progress=False, output="tensor")
    assert images.dtype == half.dtype != torch.float32 and torch.isfinite(images).all()
    assert relative_error(x, run(pipe, P)) < HALF_PRECISION  # the same latents, to half precision


def test_the_vae_runs_in_fp32_when_asked_or_known_to_overflow(tmp_path):
    cfg = small_config("sd1")
    cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, upcast=True))  # as SDXL's VAE
    sd = write_checkpoint(tmp_path / "upcast.safetensors", cfg)
    pipe = minip2p.load(tmp_path / "upcast.safetensors", dtype=torch.float16)
    assert pipe.dtype == torch.float16 and pipe.vae_dtype == torch.float32
    weight = "decoder.conv_out.weight"  # read from the file straight into fp32, not through fp16
    assert torch.equal(pipe.vae.state_dict()[weight], sd[VAE_PREFIX + weight])
    images = pipe.generate(P, seed=3, steps=2, progress=False, output="tensor")
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert pipe.to(dtype=torch.bfloat16).vae_dtype == torch.bfloat16  # only float16 overflows
    assert pipe.to(dtype=torch.float16, vae_dtype=torch.float16).vae_dtype == torch.float16  # asked for
    assert pipe.to(vae_dtype=torch.float32).dtype == torch.float16  # the VAE alone


def test_dtypes_by_name_or_a_one_line_error(small_ckpt):
    pipe = minip2p.load(small_ckpt["sd1"][0], dtype="bfloat16")
    assert pipe.dtype == pipe.vae_dtype == torch.bfloat16
    assert pipe.to(dtype="float32").dtype == torch.float32
    with pytest.raises(
        ValueError, match=r"^dtype must be torch.float32, torch.bfloat16 or torch.float16, not 'fp8'$"
    ):
        minip2p.load(dtype="fp8")


def test_the_dtype_option(small_ckpt, tmp_path, cli):
    base = [
        "generate",
        "--weights",
        small_ckpt["sd1"][0],
        "--prompt",
        "a red circle",
        "--steps",
        2,
        "--quiet",
    ]
    code, _, err = cli(*base, "--dtype", "float8")
    assert code != 0 and err.strip() == "error: --dtype float8: use float32, bfloat16, float16"
    code, _, err = cli(*base, "--vae-dtype", "fp8")
    assert code != 0 and err.strip() == "error: --vae-dtype fp8: use float32, bfloat16, float16"
    pictures = {}
    for dtype in ("float32", "bfloat16"):
        pictures[dtype] = tmp_path / f"{dtype}.png"
        code, _, err = cli(*base, "--dtype", dtype, "--vae-dtype", "float32", "--out", pictures[dtype])
        assert code == 0 and pictures[dtype].exists(), err
    a, b = (np.asarray(Image.open(p), dtype=float) for p in pictures.values())
    assert 0 < np.abs(a - b).mean() < 0.1 * 255  # the option took effect: the same picture, to half precision
