"""Attention pictures: one tile per token with its word, a colour scale, captions sized to the tiles,
self-attention components that find the regions, and the npz export."""

import numpy as np
import pytest
import torch
from PIL import Image

from minip2p import AttentionStore, Place
from minip2p.viz import cross_attention_grid, font_for, image_grid, self_attention_components, wrap


@pytest.fixture(scope="module")
def stored(pipe):
    store = AttentionStore(per_step=True)
    image = pipe.generate(["a red circle"], seed=0, steps=3, controller=store, progress=False)[0]
    return store, image


def test_cross_attention_grid_has_one_tile_per_token_and_a_colour_scale(pipe, stored):
    store, image = stored
    grid = cross_attention_grid(store, "a red circle", 4, pipe.tokenizer, image=image, tile=64)
    assert grid.size[0] == 5 * 64  # <start> a red circle <end>
    scale = np.asarray(grid)[-30:].reshape(-1, 3).astype(int)  # the colour bar is at the bottom
    assert (scale[:, 2] - scale[:, 0] > 200).any() and (
        scale[:, 0] - scale[:, 2] > 200
    ).any()  # blue .. orange


def test_captions_are_sized_to_the_tiles_and_wrapped_to_them():
    small, large = (image_grid([Image.new("RGB", (s, s))], ["a caption"], min_size=s) for s in (128, 512))
    assert large.size[1] - 512 > 1.5 * (small.size[1] - 128)  # a taller caption strip on a larger tile
    font = font_for(384)
    lines = wrap("source: a red circle and a blue square on a white background", font, 376)
    assert len(lines) >= 2 and all(font.getlength(line) <= 376 for line in lines)
    assert font.size >= 16  # not the ~10 px default font on a 384 px tile


def test_image_grid_columns():
    ims = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    assert image_grid(ims, columns=2, min_size=8).size == (16, 16)


def test_self_attention_components_find_the_regions_that_attend_alike():
    """Queries of the left half attend to the left half, the right half to the right: the first component is
    one value on the left and another on the right."""
    store = AttentionStore()
    store.start(1, (8, 8))
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    left = left.flatten()
    same_side = (left[:, None] == left[None, :]).float()
    store.places["k"] = Place("k", "down", False, 1, 1)
    store.sums["k"], store.steps_done = (same_side / same_side.sum(-1, keepdim=True))[None], 1
    grid = np.asarray(self_attention_components(store, 8, n=2, tile=64)).astype(int)
    row = grid[-1, :64]  # the first tile's bottom row
    assert (row[:28] == row[0]).all() and (row[36:] == row[-1]).all()  # flat within each half
    assert np.abs(row[0] - row[-1]).sum() > 300  # far apart in colour between the halves


def test_save_npz(stored, tmp_path):
    store, _ = stored
    store.save_npz(tmp_path / "maps.npz")
    data = np.load(tmp_path / "maps.npz")
    key = "input_blocks.1.1.transformer_blocks.0.attn2"
    assert data[key].shape == (1, 64, 77) and f"step2/{key}" in data
    assert np.allclose(data[key].sum(-1), 1, atol=1e-4)
    assert np.allclose(data[key], store.mean(key).numpy())
