"""Text-to-image: determinism, shared noise, sizes, bad arguments, and the CLI."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import minip2p


@pytest.fixture(scope="module")
def pipe(small_ckpt):
    return minip2p.load(small_ckpt["sd1"][0])


def test_same_seed_gives_bit_identical_images(pipe):
    a = pipe.generate(["a red circle", "a blue square"], seed=11, steps=3, progress=False)
    b = pipe.generate(["a red circle", "a blue square"], seed=11, steps=3, progress=False)
    c = pipe.generate(["a red circle", "a blue square"], seed=12, steps=3, progress=False)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert a[0].size == (64, 64) and a[0].mode == "RGB"


def test_every_prompt_starts_from_the_same_noise(pipe):
    """Two identical prompts in one batch give identical images: one latent is shared by the batch."""
    a, b = pipe.generate(["a cat", "a cat"], seed=3, steps=2, progress=False)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_eta_adds_seeded_noise(pipe):
    a = pipe.sample(["a cat"], seed=3, steps=3, eta=1.0, progress=False)
    b = pipe.sample(["a cat"], seed=3, steps=3, eta=1.0, progress=False)
    c = pipe.sample(["a cat"], seed=3, steps=3, eta=0.0, progress=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_any_multiple_of_the_model_factor(pipe):
    assert pipe.generate(["a cat"], seed=0, steps=1, height=128, width=64, progress=False)[0].size == (64, 128)
    with pytest.raises(ValueError, match="height=72: image sizes must be positive multiples of 64"):
        pipe.generate(["a cat"], steps=1, height=72)


def test_bad_latents_and_prompts(pipe):
    with pytest.raises(ValueError, match=r"latents must have shape \(1 or 2, 4, 8, 8\)"):
        pipe.sample(["a", "b"], latents=torch.zeros(1, 4, 16, 16), steps=1)
    with pytest.raises(ValueError, match="prompt has 102 tokens, more than the 77"):
        pipe.sample(["cat " * 100], steps=1)
    with pytest.raises(ValueError, match="at least one prompt"):
        pipe.sample([], steps=1)


def test_prompt_changes_the_image_through_cross_attention(pipe):
    a, b = pipe.sample(["a red circle", "a blue square"], seed=1, steps=2, progress=False)
    assert (a - b).abs().max() > 1e-3


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "minip2p", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_generate(small_ckpt, tmp_path):
    out = tmp_path / "out.png"
    r = run_cli("generate", "--weights", str(small_ckpt["sd1"][0]), "--prompt", "a red circle", "--seed", "1",
                "--steps", "2", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and Image.open(out).size == (64, 64)


def test_cli_errors_are_one_clear_line(tmp_path):
    r = run_cli("generate", "--weights", str(tmp_path / "missing.safetensors"), "--prompt", "x", cwd=tmp_path)
    assert r.returncode != 0 and "error: checkpoint not found:" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("generate", "--prompt", "x", "--out", str(tmp_path / "out.txt"), cwd=tmp_path)
    assert r.returncode != 0 and "give an image file name" in r.stderr


def test_cli_demo_writes_a_grid(tmp_path):
    r = run_cli("demo", "--steps", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "demo.png").size == (6 * 384, 384 + 14)  # 2 sources + 4 edits
    assert "4 Prompt-to-Prompt edits" in r.stdout
