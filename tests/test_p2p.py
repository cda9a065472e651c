"""Prompt-to-Prompt controllers: schedules, LocalBlend maths, and invariants on random weights."""

import numpy as np
import pytest
import torch

from minip2p import AttentionStore, LocalBlend, Replace, Reweight, defaults, make_edit
from minip2p.attention import Place, joint_parts
from minip2p.blend import blend_downsample
from minip2p.p2p import check_window, cross_alphas, cross_windows, default_edit_kind, step_window

P = ["a red circle on a white background", "a blue square on a white background"]


def test_step_windows():
    assert step_window(check_window(0.8, "x"), 50) == (0, 40)
    assert step_window(check_window((0.2, 0.6), "x"), 10) == (2, 6)
    for bad in (1.5, (0.6, 0.2), (-0.1, 0.5), float("nan"), "half", (0.1,)):
        with pytest.raises(ValueError, match=r"x must be a fraction in \[0, 1\]"):
            check_window(bad, "x")


def test_cross_alphas_float_pair_and_dict(tokenizer):
    def alphas(spec):
        return cross_alphas(cross_windows(P, tokenizer, spec), 1, 10)

    assert alphas(0.8)[:, 0, 0].tolist() == [1] * 8 + [0] * 3  # steps + 1 rows, as the official table
    assert alphas((0.2, 0.5))[:, 0, 5].tolist() == [0, 0, 1, 1, 1] + [0] * 6
    a = alphas({"default_": 1.0, "square": (0.0, 0.3)})
    assert a.shape == (11, 1, 77)
    assert a[:, 0, 3].tolist() == [1, 1, 1] + [0] * 8 and a[:, 0, 2].eq(1).all()
    with pytest.raises(ValueError, match="'triangle' is not a word"):
        cross_windows(P, tokenizer, {"triangle": 0.5})


@pytest.mark.parametrize("steps", [10, 50, 100])
def test_step_windows_are_the_official_ones(tokenizer, steps):
    """Every fraction 0.00..1.00, against the official code's formulas written out: the cross-attention table
    has steps + 1 rows and a window (0, f) ends at int(f * (steps + 1)) (ptp_utils.update_alpha_time_word);
    the self-attention window ends at int(steps * f) (AttentionControlEdit.num_self_replace)."""
    for k in range(101):
        f = k / 100
        official = torch.zeros(steps + 1)
        official[: int(f * (steps + 1))] = 1
        assert torch.equal(cross_alphas(cross_windows(P, tokenizer, f), 1, steps)[:, 0, 0], official), f
        edit = Replace(P, tokenizer, self_replace_steps=f)
        edit.start(steps, (64, 64))
        assert edit.self_steps == (0, int(steps * f)), f


def test_bad_edits_fail_before_any_work(tokenizer):
    with pytest.raises(ValueError, match="same number of words"):
        Replace([P[0], "a blue square"], tokenizer)
    with pytest.raises(ValueError, match="blend word 'dog' is in none of the prompts"):
        Replace(P, tokenizer, local_blend=LocalBlend(["dog", "square"]))
    with pytest.raises(ValueError, match="takes a word or a list of words"):
        LocalBlend([["circle"], ["square"]])  # words are given once for all prompts, not one entry per prompt
    with pytest.raises(ValueError, match="77 entries"):
        Reweight(P, tokenizer, torch.ones(10))
    with pytest.raises(ValueError, match="must be a finite number"):
        Reweight(P, tokenizer, {"square": float("nan")})
    with pytest.raises(ValueError, match="'circle' is not a word"):
        Reweight(P, tokenizer, {"circle": 2.0})  # a word of the source only: Reweight scales the target's
    with pytest.raises(ValueError, match="self_replace_steps must be"):
        Replace(P, tokenizer, self_replace_steps=2.0)
    with pytest.raises(ValueError, match="cross_replace_steps must be"):
        Replace(P, tokenizer, cross_replace_steps=(0.5, 0.1))
    with pytest.raises(ValueError, match="at least one target"):
        Replace(P[:1], tokenizer)
    with pytest.raises(ValueError, match=r"self_max_fraction must be in \(0, 1\]"):
        Replace(P, tokenizer, self_max_fraction=0)
    with pytest.raises(ValueError, match=r"res_fraction must be in \(0, 1\]"):
        LocalBlend(["circle", "square"], res_fraction=2)
    with pytest.raises(ValueError, match=r"threshold must be a finite number, not nan"):
        LocalBlend(["circle", "square"], threshold=float("nan"))


def bound_blend(tokenizer, latent_hw, **options):
    lb = LocalBlend(["circle", "square"], **options)
    lb.bind(P, tokenizer)
    lb.start(10, latent_hw)
    return lb


def blended_mask(lb, maps, step=5):
    """The target's mask, read off a blend of latents 0 (source) and 1 (target) with these maps."""
    p, h, w, tokens = maps.shape
    x = torch.stack([torch.zeros(4, *lb.latent_hw), torch.ones(4, *lb.latent_hw)])
    out = lb(step, [maps.reshape(p, h * w, tokens)], x)
    assert torch.equal(out[0], x[0]) and ((out[1] == 0) | (out[1] == 1)).all()  # the source runs free
    return out[1, 0]


def test_local_blend_mask_from_synthetic_maps(tokenizer):
    lb = bound_blend(tokenizer, (32, 32), threshold=0.3)  # 8x8 maps (1/4 of the latent)
    maps = torch.zeros(2, 8, 8, 77)
    maps[0, 0, 0, 3] = 1.0  # source: "circle" attends to cell (0, 0)
    maps[1, 7, 7, 3] = 1.0  # target: "square" (token 3 too) attends to cell (7, 7)
    maps[1, 0, 7, 5] = 1.0  # another word: ignored
    mask = blended_mask(lb, maps)
    assert mask.shape == (32, 32)
    assert mask[:8, :8].all() and mask[24:, 24:].all()  # pooled to 2x2 cells, 4x upsampled: both regions
    assert mask.sum() == 2 * 64 and mask[:8, 24:].sum() == 0  # not the other word


def test_local_blend_subtract(tokenizer):
    lb = LocalBlend(["circle", "square"], subtract="background")
    lb.bind(P, tokenizer)
    lb.start(10, (4, 4))
    maps = torch.zeros(2, 4, 4, 77)
    maps[:, :, :, 3] = 1.0
    maps[:, 0, 0, 7] = 1.0
    mask = blended_mask(lb, maps)
    assert mask[0, 0] == 0 and mask.sum() == 15


def test_blend_words_are_looked_up_in_every_prompt(tokenizer):
    prompts = ["a red circle", "a red square"]

    def tokens(words):
        lb = LocalBlend(words)
        Replace(prompts, tokenizer, local_blend=lb)
        return [row.nonzero().flatten().tolist() for row in lb.alpha]

    assert tokens(["circle", "square"]) == [[3], [3]]
    assert tokens("Red,") == [[2], [2]]
    assert tokens(["circle"]) == [[3], []]  # none in the target: it blends on the source's region
    with pytest.raises(ValueError, match=r"blend word 'dog' is in none of the prompts"):
        tokens(["circle", "dog"])


def test_default_edit_kind():
    assert default_edit_kind("a red circle", "a blue circle") == "replace"
    assert default_edit_kind("a circle", "a red circle") == "refine"
    assert default_edit_kind("a red circle", "a red circle", {"red": 2}) == "reweight"
    assert default_edit_kind("a red circle", "a blue circle", {"blue": 2}) == "replace"  # then Reweight on it


def run(pipe, prompts, controller=None, **options):
    return pipe.sample(prompts, seed=3, steps=8, controller=controller, progress=False, **options)


def test_reweight_of_words_is_the_equalizer_of_their_tokens(tokenizer):
    r = Reweight(P, tokenizer, {"square": -2.0, "white": 0.5})
    expected = torch.ones(1, 77)
    expected[0, 3], expected[0, 6] = -2.0, 0.5
    assert torch.equal(r.scales, expected)


def test_attention_store_aggregates(pipe):
    store = AttentionStore()
    run(pipe, P, store)
    maps = store.aggregate(4, ("down", "up"))
    assert maps.shape == (2, 4, 4, 77) and torch.allclose(maps.sum(-1), torch.ones(2, 4, 4), atol=1e-4)
    assert store.steps_done == 8 and not any(t._base is not None for t in store.sums.values())
    assert store.resolutions() == [1, 2, 4, 8]
    with pytest.raises(
        ValueError, match=r"no stored cross-attention maps at resolution 5.*resolutions: \[1, 2, 4, 8\]"
    ):
        store.aggregate(5)


def test_explicit_path_only_where_needed(tokenizer):
    e = Replace(P, tokenizer)
    e.start(10, (64, 64))
    big_self = Place("input_blocks.1.1.transformer_blocks.0.attn1", "down", False, 1, 8)
    small_self = Place("input_blocks.7.1.transformer_blocks.0.attn1", "down", False, 4, 8)
    e.before_step(0)
    assert not e.wants(big_self) and e.wants(small_self)
    e.before_step(5)  # past self_replace_steps 0.4
    assert not e.wants(small_self)


def test_map_resolution_follows_the_latent_but_stays_at_least_8x8(tokenizer):
    assert blend_downsample(0.25, 64) == 4 and blend_downsample(0.25, 96) == 4  # 16x16, 24x24
    assert blend_downsample(0.25, 32) == 4 and blend_downsample(0.25, 16) == 2  # 8x8, and 8x8 not 4x4
    assert blend_downsample(0.25, 8) == 1
    # the self-attention cap: 1/4 of the latent per side, and at least the official 16x16 maps
    places = [Place(f"p{d}.attn1", "down", False, d, 4) for d in (1, 2, 4)]
    for latent, fraction, wanted in (
        (16, defaults.SELF_MAX_FRACTION, [True, True, True]),  # the bundled model: every map is <= 16x16
        (64, defaults.SELF_MAX_FRACTION, [False, False, True]),  # SD: 16x16 of 64x64
        (128, defaults.SELF_MAX_FRACTION, [False, False, True]),  # SDXL: 32x32 of 128x128
        (64, 1.0, [True, True, True]),
    ):
        e = Replace(P, tokenizer, self_max_fraction=fraction)
        e.start(10, (latent, latent))
        e.before_step(0)
        assert [e.wants(p) for p in places] == wanted, (latent, fraction)
    lb = bound_blend(tokenizer, (16, 16))
    assert lb.reads(Place("input_blocks.4.1.transformer_blocks.0.attn2", "down", True, 2, 4))


def test_local_blend_on_an_mmdit_reads_each_words_map_over_the_image(tokenizer):
    """On joint attention LocalBlend reads the text->image maps (the image->text ones are too diffuse to cut
    a region from: docs/RESULTS.md) and cuts them at the MM-DiT's threshold unless given one."""
    joint = Place("joint_blocks.0.x_block.attn", "early", False, 2, 4, "joint", layer=0, prompt_tokens=77)
    for threshold, cut in ((None, defaults.MMDIT_BLEND_THRESHOLD), (0.3, 0.3)):
        lb = bound_blend(tokenizer, (16, 16), threshold=threshold)
        assert lb.cut == (defaults.BLEND_THRESHOLD if threshold is None else threshold)
        assert [lb.reads(p) for p in joint_parts(joint).values()] == [False, False, True]
        assert lb.cut == cut


def test_edit_api_is_make_edit_then_generate(pipe):
    """pipe.edit(...) gives exactly what generate gives with the edit make_edit builds, for every kind."""
    cases = [
        (P[0], P[1], dict(blend=["circle", "square"])),
        ("a red circle", "a red circle and a blue square", {}),  # refine by default
        (P[0], P[0].replace("red", "red red"), dict(kind="refine", reweight={"red": 2.0})),  # chained
        (P[0], P[0], dict(reweight={"circle": -2.0})),  # reweight by default
    ]
    for source, target, options in cases:
        a = pipe.edit(source, target, seed=2, steps=3, progress=False, **options)
        edit = make_edit(source, target, pipe.tokenizer, **options)
        b = pipe.generate([source, target], seed=2, steps=3, progress=False, controller=edit)
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)), options
        assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1])), options  # the edit shows
    with pytest.raises(ValueError, match="blend word"):
        pipe.edit(P[0], P[1], blend=["triangle"], steps=2)
    with pytest.raises(ValueError, match="kind must be one of"):
        pipe.edit(P[0], P[1], kind="swap", steps=2)
    with pytest.raises(ValueError, match="kind='reweight' needs reweight"):
        pipe.edit(P[0], P[1], kind="reweight", steps=2)


def test_local_blend_starts_at_start_blend(tokenizer):
    """LocalBlend leaves the latents alone before int(start_blend * steps) (0.2, the null-text notebook's; the
    stable-diffusion notebook blends from step 0), and copies the source outside the mask from then on."""
    lb = LocalBlend(["circle", "square"], mask=torch.zeros(4, 4))
    assert lb.start_blend == defaults.START_BLEND == 0.2
    lb.bind(P, tokenizer)
    lb.start(10, (4, 4))
    x = torch.randn(2, 4, 4, 4)
    assert torch.equal(lb(1, [], x), x)
    assert torch.equal(lb(2, [], x)[1], x[0])


def test_the_self_window_is_the_models_unless_given(tokenizer):
    """self_replace_steps None: 0.4 of the steps on a UNet's self-attention (the paper's), 0.6 on an MM-DiT's
    image->image maps (chosen from benchmarks/mmdit_places.py); a value given holds on both."""
    unet = Place("input_blocks.4.1.transformer_blocks.0.attn1", "down", False, 2, 4)
    joint = Place("joint_blocks.0.x_block.attn", "early", False, 2, 4, "joint", layer=0, prompt_tokens=77)
    image = joint_parts(joint)["image->image"]
    for window, wanted in ((None, [False, True]), (0.4, [False, False]), (0.6, [True, True])):
        e = Replace(P, tokenizer, self_replace_steps=window)
        e.start(10, (16, 16))
        e.before_step(int(10 * defaults.SELF_REPLACE_STEPS))  # the first step past the paper's window
        assert [e.replaces_self(unet), e.replaces_self(image)] == wanted, window
    assert defaults.SELF_REPLACE_STEPS < 0.5 < defaults.SD3_SELF_REPLACE_STEPS
