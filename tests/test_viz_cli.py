"""Attention pictures and the edit / attention commands."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minip2p
from minip2p.p2p import AttentionStore
from minip2p.viz import cross_attention_grid, image_grid, self_attention_components


@pytest.fixture(scope="module")
def stored(small_ckpt):
    pipe = minip2p.load(small_ckpt["sd1"][0])
    store = AttentionStore(per_step=True)
    image = pipe.generate(["a red circle"], seed=0, steps=3, controller=store, progress=False)[0]
    return pipe, store, image


def test_cross_attention_grid_has_one_tile_per_token(stored):
    pipe, store, image = stored
    grid = cross_attention_grid(store, "a red circle", 4, pipe.tokenizer, image=image, tile=64)
    assert grid.size == (5 * 64, 64 + 14)  # <start> a red circle <end>


def test_self_attention_components(stored):
    pipe, store, _ = stored
    grid = self_attention_components(store, 4, n=3, tile=32)
    assert grid.size == (3 * 32, 32 + 14)
    arr = np.asarray(grid)[14:]
    assert arr.std() > 0  # not blank


def test_save_npz(stored, tmp_path):
    _, store, _ = stored
    store.save_npz(tmp_path / "maps.npz")
    data = np.load(tmp_path / "maps.npz")
    key = "input_blocks.1.1.transformer_blocks.0.attn2"
    assert data[key].shape == (1, 64, 77) and f"step2/{key}" in data
    assert np.allclose(data[key].sum(-1), 1, atol=1e-4)


def test_image_grid_columns():
    ims = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    assert image_grid(ims, columns=2, min_size=8).size == (16, 16)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "minip2p", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_edit_and_attention(small_ckpt, tmp_path):
    w = str(small_ckpt["sd1"][0])
    r = cli("edit", "--weights", w, "--prompt", "a red circle on a white background", "--to",
            "a red square on a white background", "--blend", "circle", "square", "--reweight", "red=2",
            "--steps", "2", "--seed", "1", "--out", str(tmp_path / "edit.png"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "edit.png").size == (1024, 512 + 14)
    r = cli("attention", "--weights", w, "--prompt", "a red circle", "--steps", "2", "--out",
            str(tmp_path / "maps.png"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cross-attention at 2x2" in r.stdout and Image.open(tmp_path / "maps.png").size[0] == 5 * 128


def test_cli_edit_bad_input(small_ckpt, tmp_path):
    w = str(small_ckpt["sd1"][0])
    r = cli("edit", "--weights", w, "--prompt", "a red circle", "--to", "a blue circle", "--blend", "dog",
            "--steps", "1", cwd=tmp_path)
    assert r.returncode != 0 and "blend word(s) ['dog'] are in neither prompt" in r.stderr
    r = cli("edit", "--weights", w, "--prompt", "a red circle", "--to", "a red circle", "--reweight", "red",
            cwd=tmp_path)
    assert r.returncode != 0 and "write WORD=SCALE" in r.stderr
    r = cli("edit", "--weights", w, "--prompt", "a red circle", "--to", "a blue circle", "--self-size", "0",
            cwd=tmp_path)
    assert r.returncode != 0 and "self_max_fraction" in r.stderr
    # the edit's words are checked before the (slow) inversion of --image: here before the image is even read
    r = cli("edit", "--weights", w, "--image", str(tmp_path / "missing.png"), "--prompt", "a red circle",
            "--to", "a blue circle", "--blend", "dog", cwd=tmp_path)
    assert r.returncode != 0 and "blend word(s) ['dog']" in r.stderr, r.stderr
    assert not (tmp_path / "edit.png").exists()


def test_cli_edit_a_real_image(small_ckpt, tmp_path):
    Image.new("RGB", (80, 64), "white").save(tmp_path / "photo.png")
    r = cli("edit", "--weights", str(small_ckpt["sd1"][0]), "--image", str(tmp_path / "photo.png"),
            "--prompt", "a red circle", "--to", "a blue circle", "--invert", "negative-prompt", "--steps", "3",
            "--out", str(tmp_path / "e.png"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "e.png").size == (3 * 512, 512 + 14)
