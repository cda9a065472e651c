"""Prompt-to-Prompt controllers: schedules, LocalBlend maths, and invariants on random weights."""
import numpy as np
import pytest
import torch

import minip2p
from minip2p import TextConfig
from minip2p.attention import Place
from minip2p.p2p import (AttentionStore, LocalBlend, Refine, Replace, Reweight, cross_alphas, map_factor,
                         step_window)
from minip2p.text import load_tokenizer

tok = load_tokenizer(TextConfig.sd1())
P = ["a red circle on a white background", "a blue square on a white background"]


def test_step_windows():
    assert step_window(0.8, 50, "x") == (0, 40) and step_window((0.2, 0.6), 10, "x") == (2, 6)
    for bad in (1.5, (0.6, 0.2), (-0.1, 0.5)):
        with pytest.raises(ValueError, match=r"x must be a fraction in \[0, 1\]"):
            step_window(bad, 10, "x")


def test_cross_alphas_float_pair_and_dict():
    assert cross_alphas(P, tok, 10, 0.8)[:, 0, 0].tolist() == [1] * 8 + [0] * 2
    assert cross_alphas(P, tok, 10, (0.2, 0.5))[:, 0, 5].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    a = cross_alphas(P, tok, 10, {"default_": 1.0, "square": (0.0, 0.3)})
    assert a.shape == (10, 1, 77)
    assert a[:, 0, 3].tolist() == [1, 1, 1] + [0] * 7 and a[:, 0, 2].eq(1).all()
    with pytest.raises(ValueError, match="'triangle' is not a word"):
        cross_alphas(P, tok, 10, {"triangle": 0.5})


def test_bad_edits_fail_before_any_work():
    with pytest.raises(ValueError, match="same number of words"):
        Replace([P[0], "a blue square"], tok)
    with pytest.raises(ValueError, match="'dog' is not a word"):
        Replace(P, tok, local_blend=LocalBlend(["dog", "square"]))
    with pytest.raises(ValueError, match="one word .* per prompt"):
        Refine(P, tok, local_blend=LocalBlend(["circle"]))
    with pytest.raises(ValueError, match="77 entries"):
        Reweight(P, tok, torch.ones(10))
    with pytest.raises(ValueError, match="self_replace_steps must be"):
        Replace(P, tok, self_replace_steps=2.0)
    with pytest.raises(ValueError, match="cross_replace_steps must be"):
        Replace(P, tok, cross_replace_steps=(0.5, 0.1))
    with pytest.raises(ValueError, match="at least one target"):
        Replace(P[:1], tok)
    with pytest.raises(ValueError, match="self_max_fraction .* in \\(0, 1\\]"):
        Replace(P, tok, self_max_fraction=0)
    with pytest.raises(ValueError, match="res_fraction .* in \\(0, 1\\]"):
        LocalBlend(["circle", "square"], res_fraction=2)


def test_local_blend_mask_from_synthetic_maps():
    lb = LocalBlend(["circle", "square"], threshold=0.3)
    lb.bind(P, tok, 10, (16, 16), None)
    maps = torch.zeros(2, 4, 4, 77)
    maps[0, 0, 0, 3] = 1.0       # source: "circle" attends to cell (0, 0)
    maps[1, 3, 3, 3] = 1.0       # target: "square" (token 3 too) attends to cell (3, 3)
    maps[1, 0, 3, 5] = 1.0       # another word: ignored
    lb.sum = maps
    mask = lb.mask(torch.float32)
    assert mask.shape == (2, 1, 16, 16)
    assert mask[0, 0].sum() == 64 and mask[0, 0, :8, :8].all()          # pooled to 2x2 cells, 4x upsampled
    assert mask[1, 0, :8, :8].all() and mask[1, 0, 8:, 8:].all()          # the target's and the source's
    assert mask[1, 0, :8, 8:].sum() == 0                                   # not the other word


def test_local_blend_subtract():
    lb = LocalBlend(["circle", "square"], subtract=["background", "background"])
    lb.bind(P, tok, 10, (4, 4), None)
    maps = torch.zeros(2, 4, 4, 77)
    maps[:, :, :, 3] = 1.0
    maps[:, 0, 0, 7] = 1.0
    lb.sum = maps
    mask = lb.mask(torch.float32)
    assert mask[:, 0, 0, 0].eq(0).all() and mask.sum() == 2 * 15


@pytest.fixture(scope="module")
def pipe(small_ckpt):
    return minip2p.load(small_ckpt["sd1"][0])


def run(pipe, prompts, controller=None, **kw):
    return pipe.sample(prompts, seed=3, steps=8, controller=controller, progress=False, **kw)


def test_same_prompt_edit_changes_nothing(pipe):
    x = run(pipe, [P[0], P[0]], Replace([P[0], P[0]], pipe.tokenizer))
    assert torch.equal(x[0], x[1])


def test_replace_with_zero_steps_is_plain_generation_of_the_target(pipe):
    plain = run(pipe, P)
    x = run(pipe, P, Replace(P, pipe.tokenizer, cross_replace_steps=0.0, self_replace_steps=0.0))
    assert (x - plain).abs().max() < 1e-3
    edited = run(pipe, P, Replace(P, pipe.tokenizer))
    assert (edited[1] - plain[1]).abs().max() > 0.1   # the edit does something
    assert (edited[0] - plain[0]).abs().max() < 1e-3  # and leaves the source alone


def test_reweight_with_unit_scales_is_no_edit(pipe):
    x = run(pipe, [P[0], P[0]], Reweight([P[0], P[0]], pipe.tokenizer, torch.ones(77)))
    assert torch.equal(x[0], x[1])
    y = run(pipe, [P[0], P[0]], Reweight([P[0], P[0]], pipe.tokenizer, torch.full((77,), 3.0)))
    assert (y[0] - y[1]).abs().max() > 1e-2


def test_reweight_chains_on_replace(pipe):
    base = Replace(P, pipe.tokenizer)
    a = run(pipe, P, Reweight(P, pipe.tokenizer, torch.ones(77), base=base))
    b = run(pipe, P, Replace(P, pipe.tokenizer))
    assert (a - b).abs().max() < 1e-4


def test_local_blend_with_an_all_ones_mask_is_no_blend(pipe):
    a = run(pipe, P, Replace(P, pipe.tokenizer, local_blend=LocalBlend(["circle", "square"], mask=torch.ones(8, 8))))
    b = run(pipe, P, Replace(P, pipe.tokenizer))
    assert torch.equal(a, b)
    c = run(pipe, P, Replace(P, pipe.tokenizer, local_blend=LocalBlend(["circle", "square"], mask=torch.zeros(8, 8))))
    assert (c[1] - c[0]).abs().max() == 0  # an all-zeros mask keeps the source everywhere (after start_blend)


def test_attention_store_does_not_change_the_image_and_aggregates(pipe):
    store = AttentionStore()
    assert (run(pipe, P, store) - run(pipe, P)).abs().max() < 1e-3
    maps = store.aggregate(4, ("down", "up"))
    assert maps.shape == (2, 4, 4, 77) and torch.allclose(maps.sum(-1), torch.ones(2, 4, 4), atol=1e-4)
    assert store.steps_done == 8 and not any(t._base is not None for t in store.sums.values())
    with pytest.raises(ValueError, match=r"no stored cross-attention maps at resolution 5.*stored resolutions: \[1, 2, 4, 8\]"):
        store.aggregate(5)


def test_refine_runs_and_keeps_the_source(pipe):
    prompts = ["a red circle", "a red circle and a blue square"]
    x = run(pipe, prompts, Refine(prompts, pipe.tokenizer))
    assert (x[0] - run(pipe, prompts)[0]).abs().max() < 1e-3


def test_explicit_path_only_where_needed():
    e = Replace(P, tok)
    e.start(10, (64, 64))
    big_self = Place("input_blocks.1.1.transformer_blocks.0.attn1", "down", False, 1, 8)
    small_self = Place("input_blocks.7.1.transformer_blocks.0.attn1", "down", False, 4, 8)
    e.begin_step(0)
    assert not e.wants(big_self) and e.wants(small_self)
    e.begin_step(5)  # past self_replace_steps 0.4
    assert not e.wants(small_self)


def test_map_resolution_follows_the_latent_but_stays_at_least_8x8():
    assert map_factor(0.25, 64) == 4 and map_factor(0.25, 96) == 4 and map_factor(0.25, 32) == 4  # 16, 24, 8 cells
    assert map_factor(0.25, 16) == 2 and map_factor(0.25, 8) == 1   # the shapes model: 8x8, not 4x4
    e = Replace(P, tok)
    e.start(10, (16, 16))
    e.begin_step(0)
    assert e.wants(Place("input_blocks.4.1.transformer_blocks.0.attn1", "down", False, 2, 4))      # 8x8: replaced
    assert not e.wants(Place("input_blocks.1.1.transformer_blocks.0.attn1", "down", False, 1, 4))  # 16x16: not
    every = Replace(P, tok, self_max_fraction=1.0)
    every.start(10, (16, 16))
    every.begin_step(0)
    assert every.wants(Place("input_blocks.1.1.transformer_blocks.0.attn1", "down", False, 1, 4))  # 16x16 too
    lb = LocalBlend(["circle", "square"])
    lb.bind(P, tok, 10, (16, 16), None)
    assert lb.wants(Place("input_blocks.4.1.transformer_blocks.0.attn2", "down", True, 2, 4))


def test_edit_api(pipe):
    images = pipe.edit(P[0], P[1], seed=1, steps=3, progress=False, blend=["circle", "square"])
    assert len(images) == 2 and images[0].size == (64, 64)
    with pytest.raises(ValueError, match="blend word"):
        pipe.edit(P[0], P[1], blend=["triangle"], steps=2)
    with pytest.raises(ValueError, match="kind must be"):
        pipe.edit(P[0], P[1], kind="swap", steps=2)
    images = pipe.edit(P[0], P[0].replace("red", "red red"), kind="refine", reweight={"red": 2.0}, steps=2, progress=False)
    assert len(images) == 2
    a = pipe.edit("a red circle", "a red circle and a blue square", seed=2, steps=2, progress=False)  # refine
    b = pipe.generate(["a red circle", "a red circle and a blue square"], seed=2, steps=2, progress=False,
                      controller=Refine(["a red circle", "a red circle and a blue square"], pipe.tokenizer))
    assert np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
