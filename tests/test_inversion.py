"""Real-image editing: image loading, DDIM / null-text / negative-prompt inversion, on random weights."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import minip2p
from minip2p import Inversion, LocalBlend, Replace
from minip2p.ddim import DDIM
from minip2p.images import load_image


def test_load_image_modes_orientation_and_crop(tmp_path):
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    assert load_image(rgba, 16).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert load_image(Image.new("L", (20, 20), 100), 8).getpixel((3, 3)) == (100, 100, 100)
    assert load_image(Image.new("P", (20, 20), 3), 8).mode == "RGB"
    deep = Image.fromarray(np.full((10, 10), 65535, np.uint16))
    assert load_image(deep, 8).getpixel((0, 0)) == (255, 255, 255)
    img = Image.new("RGB", (30, 20), "black")
    img.paste((0, 255, 0), (0, 0, 10, 20))  # left third green
    assert load_image(img, 10, crop=(10, 0, 0, 0)).getpixel((5, 5)) == (0, 0, 0)  # the green third is cut
    tall = Image.new("RGB", (10, 40), "black")
    tall.paste((0, 0, 255), (0, 30, 10, 40))
    out = load_image(tall, 10, crop=(0, 0, 30, 0))  # top may exceed left: the official loader's bug
    assert out.getpixel((5, 5)) == (0, 0, 255)
    shot = Image.new("RGB", (20, 10), (255, 0, 0))
    shot.paste((0, 0, 255), (10, 0, 20, 10))  # left red, right blue, as stored
    exif = shot.getexif()
    exif[0x0112] = 6  # the camera says: rotate 90 degrees clockwise to display
    shot.save(tmp_path / "rot.png", exif=exif)
    shown = load_image(tmp_path / "rot.png", 10)
    assert shown.getpixel((5, 1)) == (255, 0, 0) and shown.getpixel((5, 8)) == (0, 0, 255)  # red on top


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "none.png", 64)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*bad.png as an image"):
        load_image(tmp_path / "bad.png", 64)
    with pytest.raises(ValueError, match="leaves nothing"):
        load_image(Image.new("RGB", (10, 10)), 8, crop=(5, 5, 0, 0))
    with pytest.raises(ValueError, match="size must be >= 1, not 0"):
        load_image(Image.new("RGB", (10, 10)), 0)


@pytest.fixture(scope="module")
def image(pipe):
    return pipe.generate(["a red circle"], seed=5, steps=10, progress=False)[0]


def test_ddim_inversion_of_a_generated_trajectory_returns_near_its_noise(pipe):
    """Guidance 1 sampling from x_T, then DDIM inversion of the result, lands near x_T."""
    noise = pipe.initial_latent(4, 64, 64)
    x0 = pipe.sample(
        ["a red circle"], latents=noise, steps=20, guidance_scale=1.0, steps_offset=0, progress=False
    )
    inv = pipe.invert(pipe.decode(x0), "a red circle", method="ddim", steps=20, progress=False)
    # through the VAE the start point moves a little; compare the inversion of x0 itself too
    ddim, x = DDIM(20, 0), x0
    cond = pipe.encode_prompts(["a red circle"])
    with torch.no_grad():
        for t in ddim.timesteps.flip(0):
            x = ddim.inverse_step(pipe.unet(x, t, cond), t, x)
    err = (x - noise).abs().mean() / noise.abs().mean()
    assert err < 0.1, err
    assert inv.latent.shape == noise.shape and len(inv.trajectory) == 21


def test_null_text_with_no_inner_steps_is_ddim_inversion(pipe, image):
    a = pipe.invert(image, "a red circle", method="null-text", steps=5, inner_steps=0, progress=False)
    b = pipe.invert(image, "a red circle", method="ddim", steps=5, progress=False)
    assert torch.equal(a.latent, b.latent) and torch.equal(a.null_embeddings, b.null_embeddings)


def test_null_text_reconstructs_better_than_ddim(pipe, image):
    target = pipe.encode(image)
    errs = {}
    for method in ("ddim", "negative-prompt", "null-text"):
        inv = pipe.invert(image, "a red circle", method=method, steps=10, inner_steps=5, progress=False)
        x = pipe.sample(["a red circle"], inversion=inv, progress=False)
        errs[method] = (x - target).pow(2).mean().item()
    assert errs["null-text"] < errs["ddim"], errs


def test_inversion_save_load_and_edit(pipe, image, tmp_path):
    inv = pipe.invert(image, "a red circle", method="negative-prompt", steps=4, progress=False)
    inv.save(tmp_path / "inv.safetensors")
    back = Inversion.load(tmp_path / "inv.safetensors")
    assert torch.equal(back.latent, inv.latent) and back.method == "negative-prompt" and back.steps == 4
    prompts = ["a red circle", "a blue circle"]
    a, b = pipe.generate(prompts, inversion=back, controller=Replace(prompts, pipe.tokenizer), progress=False)
    reconstruction = pipe.generate(prompts[:1], inversion=inv, progress=False)[0]
    a, b, reconstruction = (np.asarray(im, dtype=int) for im in (a, b, reconstruction))
    assert np.abs(a - reconstruction).max() <= 1  # the source branch is the reconstruction

    assert np.abs(b - a).max() > 10  # and the edited branch is not
    with pytest.raises(ValueError, match="steps=9 differs from the inversion's 4"):
        pipe.generate(prompts, inversion=back, steps=9)
    with pytest.raises(ValueError, match="negative_prompt cannot be used with an inversion"):
        pipe.generate(prompts, inversion=back, negative_prompt="blurry")


def test_invert_bad_input(pipe, image, tmp_path):
    with pytest.raises(ValueError, match="needs the prompt"):
        pipe.invert(image, " ", progress=False)
    with pytest.raises(ValueError, match="method must be"):
        pipe.invert(image, "a cat", method="magic")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not an inversion saved by minip2p"):
        Inversion.load(tmp_path / "x.safetensors")


def test_null_text_in_fp16_optimises_an_fp32_copy(small_ckpt, image):
    """Adam on an fp16 embedding divides by an underflowed second moment (NaN): the null embedding and its
    Adam state stay fp32, cast to fp16 for each UNet call; the result reconstructs better than fp16 DDIM
    inversion."""
    pipe16 = minip2p.load(small_ckpt["sd1"][0], dtype=torch.float16)
    target = pipe16.encode(image).float()
    errs = {}
    for method in ("ddim", "null-text"):
        inv = pipe16.invert(image, "a red circle", method=method, steps=10, inner_steps=5, progress=False)
        assert inv.null_embeddings.dtype == torch.float16 and torch.isfinite(inv.null_embeddings).all()
        errs[method] = (
            (pipe16.sample(["a red circle"], inversion=inv, progress=False).float() - target).pow(2).mean()
        )
    assert errs["null-text"] < errs["ddim"], errs


def test_direct_inversion_reconstructs_exactly_at_the_cost_of_ddim_inversion(pipe, image, tmp_path):
    """Direct Inversion puts the source branch back on the inverted trajectory after every step: the source
    comes out as the image's own latent, bit for bit, edited or not, and inverting costs the UNet calls of
    DDIM inversion and no more."""
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        ddim = pipe.invert(image, "a red circle", method="ddim", steps=10, progress=False)
        n_ddim = len(calls)
        inv = pipe.invert(image, "a red circle", method="direct", steps=10, progress=False)
        assert len(calls) - n_ddim == n_ddim
    finally:
        hook.remove()
    assert torch.equal(inv.latent, ddim.latent)
    x0 = pipe.encode(image)
    assert torch.equal(pipe.sample(["a red circle"], inversion=inv, progress=False), x0)
    prompts = ["a red circle", "a blue circle"]
    edited = pipe.sample(prompts, inversion=inv, controller=Replace(prompts, pipe.tokenizer), progress=False)
    assert torch.equal(edited[0], x0[0]) and (edited[1] - x0[0]).abs().max() > 0.1
    inv.save(tmp_path / "direct.safetensors")
    back = Inversion.load(tmp_path / "direct.safetensors")
    assert back.method == "direct" and torch.equal(back.trajectory, inv.trajectory)


def test_direct_inversion_blends_on_the_exact_reconstruction(pipe, image):
    """The source branch is put back on the trajectory before LocalBlend copies it: with an all-zeros mask the
    edited branch ends as the image's own latent too (the official code adds the offset after blending)."""
    inv = pipe.invert(image, "a red circle", method="direct", steps=5, progress=False)
    prompts = ["a red circle", "a blue circle"]
    blend = LocalBlend(["circle", "circle"], mask=torch.zeros(8, 8))
    x = pipe.sample(
        prompts, inversion=inv, controller=Replace(prompts, pipe.tokenizer, local_blend=blend), progress=False
    )
    assert torch.equal(x[1], pipe.encode(image)[0])
