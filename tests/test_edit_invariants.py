"""The invariants of Prompt-to-Prompt, written once and held on every model: the small random SD1, the bundled
shapes model in fp32 and bf16, the narrow random SDXL, and the bundled shapes MM-DiT (SD3's joint attention).
They hold whatever the weights: an edit of a prompt into itself changes nothing, an edit with no steps is
plain generation of the target, the source is never touched, Reweight at 1 is no edit, a store only watches,
LocalBlend's masks do what they say."""

import pytest
import torch

import minip2p
from minip2p import AttentionStore, LocalBlend, Refine, Replace, Reweight

P = ["a red circle on a white background", "a blue square on a white background"]
SAME = [P[0], P[0]]
REFINE = ["a red circle", "a red circle and a blue square"]
HALF_PRECISION = 0.05  # mean relative error of latents after a few steps of a 16-bit model (bf16: 8 bits)


@pytest.fixture(
    scope="module", params=["small-sd1", "bundled", "bundled-bf16", "narrow-sdxl", "shapes-mmdit"]
)
def model(request, small_ckpt, sdxl_ckpt):
    if request.param == "small-sd1":
        return minip2p.load(small_ckpt["sd1"][0])
    if request.param == "narrow-sdxl":
        return minip2p.load(sdxl_ckpt[0])
    if request.param == "shapes-mmdit":
        return minip2p.load("shapes-mmdit")
    return minip2p.load(dtype="bfloat16" if request.param == "bundled-bf16" else "float32")


def run(pipe, prompts, controller=None):
    return pipe.sample(prompts, seed=3, steps=6, controller=controller, progress=False)


def close(a, b, pipe) -> bool:
    """Equal up to rounding: the explicit softmax an edit takes and the fused kernel round differently."""
    if pipe.dtype == torch.float32:
        return (a - b).abs().max() < 1e-3
    return (a - b).abs().mean() / b.abs().mean() < HALF_PRECISION


def test_an_edit_of_a_prompt_into_itself_changes_nothing(model):
    for edit in (Replace(SAME, model.tokenizer), Reweight(SAME, model.tokenizer, torch.ones(77))):
        x = run(model, SAME, edit)
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert torch.equal(x[0], x[1]), type(edit).__name__


def test_no_steps_is_plain_generation_and_the_source_is_never_touched(model):
    tok = model.tokenizer
    for prompts, kind in ((P, Replace), (REFINE, Refine)):
        plain = run(model, prompts)
        none = run(model, prompts, kind(prompts, tok, cross_replace_steps=0.0, self_replace_steps=0.0))
        assert close(none, plain, model), kind.__name__
        edited = run(model, prompts, kind(prompts, tok))
        assert close(edited[0], plain[0], model), kind.__name__  # the source is untouched
        assert (edited[1] - plain[1]).abs().max() > 0.1, kind.__name__  # the target took the source's maps


def test_reweight_scales_the_target_only_and_chains_on_an_edit(model):
    tok = model.tokenizer
    replace = run(model, P, Replace(P, tok))
    chained = run(model, P, Reweight(P, tok, torch.ones(77), base=Replace(P, tok)))
    assert close(chained, replace, model)
    scaled = run(model, P, Reweight(P, tok, {"square": 3.0}, base=Replace(P, tok)))
    assert (scaled[1] - replace[1]).abs().max() > 1e-2 and close(scaled[0], replace[0], model)


def test_local_blend_masks_and_a_chained_reweight_keeps_its_blend(model):
    tok = model.tokenizer

    def blend(mask):
        return LocalBlend(["circle", "square"], mask=mask)

    assert torch.equal(
        run(model, P, Replace(P, tok, local_blend=blend(torch.ones(4, 4)))), run(model, P, Replace(P, tok))
    )
    kept = run(model, P, Replace(P, tok, local_blend=blend(torch.zeros(4, 4))))
    assert torch.equal(kept[1], kept[0])  # an all-zeros mask keeps the source everywhere
    base = Replace(P, tok, local_blend=blend(torch.zeros(4, 4)))
    chained = run(model, P, Reweight(P, tok, {"square": 3.0}, base=base))
    assert torch.equal(chained[1], chained[0])  # the Reweight blends with the edit's LocalBlend


def test_an_attention_store_only_watches(model):
    store = AttentionStore()
    assert close(run(model, P, store), run(model, P), model)
    res = store.resolutions()
    maps = store.aggregate(
        res[-1], ("early", "late") if model.config.family.startswith("sd3") else ("down", "up")
    )
    assert maps.shape == (2, res[-1], res[-1], 77) and store.steps_done == 6
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:3]), atol=1e-2)  # each query's map sums to 1
