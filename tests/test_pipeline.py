"""Text-to-image: determinism, shared noise, sizes, outputs, devices and dtypes, bad arguments."""

import numpy as np
import pytest
import torch

import minip2p


def test_same_seed_gives_bit_identical_images(pipe):
    a = pipe.generate(["a red circle", "a blue square"], seed=11, steps=3, progress=False)
    b = pipe.generate(["a red circle", "a blue square"], seed=11, steps=3, progress=False)
    c = pipe.generate(["a red circle", "a blue square"], seed=12, steps=3, progress=False)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert a[0].size == (64, 64) and a[0].mode == "RGB"


def test_a_generator_is_a_seed(pipe):
    by_seed = pipe.generate(["a cat"], seed=5, steps=2, eta=0.5, progress=False, output="tensor")
    g = torch.Generator().manual_seed(5)
    by_generator = pipe.generate(["a cat"], generator=g, steps=2, eta=0.5, progress=False, output="tensor")
    assert torch.equal(by_seed, by_generator)


def test_no_seed_draws_one_and_says_which(pipe, capsys):
    a = pipe.generate(["a cat"], steps=2, progress=False, output="latent")
    said = capsys.readouterr().err
    assert said.startswith("seed ") and "pass seed=" in said
    seed = int(said.split()[1])
    assert torch.equal(a, pipe.generate(["a cat"], seed=seed, steps=2, progress=False, output="latent"))


def test_every_prompt_starts_from_the_same_noise(pipe):
    """Two identical prompts in one batch give identical images: one latent is shared by the batch."""
    a, b = pipe.generate(["a cat", "a cat"], seed=3, steps=2, progress=False)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_outputs_are_one_computation(pipe):
    latent = pipe.generate(["a cat"], seed=1, steps=2, progress=False, output="latent")
    tensor = pipe.generate(["a cat"], seed=1, steps=2, progress=False, output="tensor")
    image = pipe.generate(["a cat"], seed=1, steps=2, progress=False)[0]
    assert latent.shape == (1, 4, 8, 8) and tensor.shape == (1, 3, 64, 64)
    assert torch.equal(tensor, pipe.decode(latent))
    assert np.array_equal(np.asarray(image), minip2p.images.to_uint8(tensor)[0])
    with pytest.raises(ValueError, match="output must be one of"):
        pipe.generate(["a cat"], steps=1, output="png")


def test_without_a_controller_attention_takes_the_fused_kernels(pipe, monkeypatch):
    seen, predict = [], minip2p.Pipeline.predict

    def spy(self, *args, controller=None, **kw):
        seen.append(controller)
        return predict(self, *args, controller=controller, **kw)

    monkeypatch.setattr(minip2p.Pipeline, "predict", spy)
    pipe.sample(["a red circle"], seed=0, steps=2, progress=False)
    assert seen == [None, None]  # no controller asks for a map: none is computed explicitly


def test_eta_adds_seeded_noise(pipe):
    a = pipe.sample(["a cat"], seed=3, steps=3, eta=1.0, progress=False)
    b = pipe.sample(["a cat"], seed=3, steps=3, eta=1.0, progress=False)
    c = pipe.sample(["a cat"], seed=3, steps=3, eta=0.0, progress=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_any_multiple_of_the_model_factor(pipe):
    assert pipe.generate(["a cat"], seed=0, steps=1, height=128, width=64, progress=False)[0].size == (
        64,
        128,
    )
    with pytest.raises(ValueError, match="height=72: image sizes must be positive multiples of 64"):
        pipe.generate(["a cat"], steps=1, height=72)


def test_bad_latents_and_prompts(pipe):
    with pytest.raises(ValueError, match=r"latents must have shape \(1 or 2, 4, 8, 8\)"):
        pipe.sample(["a", "b"], latents=torch.zeros(1, 4, 16, 16), steps=1)
    with pytest.raises(ValueError, match="prompt has 102 tokens, more than the 77"):
        pipe.sample(["cat " * 100], steps=1)
    with pytest.raises(ValueError, match="give a prompt, or a list of prompts"):
        pipe.sample([], steps=1)
    with pytest.raises(TypeError):
        pipe.generate(["a cat"], 1)  # options are keyword-only: a seed passed by position is an error
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sed'\]: sampling takes \[.*'seed'"):
        pipe.edit("a cat", "a dog", sed=1)  # a typo is one line naming the options, before any work


def test_prompt_changes_the_image_through_cross_attention(pipe):
    a, b = pipe.sample(["a red circle", "a blue square"], seed=1, steps=2, progress=False)
    assert (a - b).abs().max() > 1e-3


def test_to_moves_and_casts_every_model(small_ckpt):
    pipe = minip2p.load(small_ckpt["sd1"][0])
    fp32 = pipe.generate(["a cat"], seed=1, steps=2, progress=False, output="tensor")
    assert pipe.to(dtype=torch.bfloat16) is pipe
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {
        torch.bfloat16
    }
    bf16 = pipe.generate(["a cat"], seed=1, steps=2, progress=False, output="tensor")
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()
    assert (bf16.float() - fp32).abs().mean() < 0.05  # the same image, to bf16's precision
    pipe.to(device="cpu", dtype=torch.float32)  # back (with the weights rounded to bf16 on the way)
    assert pipe.dtype == pipe.text_encoder.dtype == torch.float32 and pipe.device.type == "cpu"


def test_an_unavailable_device_is_a_one_line_error(small_ckpt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU build of torch
    with pytest.raises(ValueError, match=r"device 'cuda' is not available: this torch .* is built"):
        minip2p.load(small_ckpt["sd1"][0], device="cuda")
    with pytest.raises(ValueError, match="'gpu' is not a device name"):
        minip2p.load(small_ckpt["sd1"][0], device="gpu")
