"""The bundled shapes-world MM-DiT (`load("shapes-mmdit")`): what it is on disk, that it draws what it is
told, and what Prompt-to-Prompt does on its joint attention (measured by the analyser, against plain
generation).

Smaller samples of `benchmarks/shapes_quality.py`, `shapes_edits.py` and `inversion.py` with `--weights
shapes-mmdit` (figures in docs/RESULTS.md). Its file format is tested on a small random model in
tests/test_sd3_own_files.py; here, the trained weights.
"""

import math

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import minip2p
from minip2p.checkpoint import BUNDLED_MMDIT
from minip2p.evaluation import adherence, psnr, rendered_scenes, shown_swaps, vae_round_trip
from minip2p.sd3 import SD3Pipeline


@pytest.fixture(scope="module")
def mmdit():
    return minip2p.load("shapes-mmdit")


def within_one(k: int, baseline: int, n: int = 8) -> bool:
    """As tests/test_shapes_edits.py: at most one in eight fewer than the baseline."""
    return k >= baseline - math.ceil(n / 8)


def test_the_file_is_small_and_fp16(mmdit):
    assert BUNDLED_MMDIT.stat().st_size < 40e6  # a few tens of MB: it ships in the wheel
    with safe_open(str(BUNDLED_MMDIT), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert isinstance(mmdit, SD3Pipeline) and mmdit.config.image_size == 64


def test_it_shares_the_unet_models_vae_and_text_encoder(mmdit, shapes_pipe):
    """Trained on the bundled model's latents and words (both frozen): the same VAE and token states."""
    for a, b in zip(mmdit.vae.state_dict().values(), shapes_pipe.vae.state_dict().values()):
        assert (a == b).all()
    ids = shapes_pipe.tokenizer(["a red circle"], return_tensors="pt").input_ids
    ours, theirs = mmdit.text_encoder.text_model(ids), shapes_pipe.text_encoder(ids)
    assert (ours.last_hidden_state == theirs.last_hidden_state).all()


@pytest.mark.slow
def test_guidance_makes_it_follow_the_prompt(mmdit):
    """Without guidance (scale 1) the model follows its prompts less often than at its default."""
    n = 25
    guided, _ = adherence(mmdit, n=n, seed=2, progress=False)
    plain, _ = adherence(mmdit, n=n, seed=2, guidance_scale=1.0, progress=False)
    assert guided["all"] > plain["all"], (guided, plain)


@pytest.fixture(scope="module")
def swaps(mmdit):
    """Replace, plain generation of the target and Replace + LocalBlend, on the first 8 seeds whose source
    shows its prompt."""
    rows = shown_swaps(mmdit, 8, 32, progress=False)
    assert len(rows) == 8, "the model drew fewer than 8 of 32 sources as their prompts say"
    return rows


def mean(rows, name, key):
    return float(np.nanmean([r[name][key] for r in rows]))


@pytest.mark.slow
def test_a_swap_takes_the_new_word_and_keeps_the_other_object(swaps):
    edited, plain = (int(sum(r[name]["edited"] for r in swaps)) for name in ("Replace", "plain target"))
    assert within_one(edited, plain), f"{edited} of {len(swaps)} swaps took; plain generation {plain}"
    assert all(r["Replace"]["background"] for r in swaps)
    assert mean(swaps, "Replace", "kept_iou") > mean(swaps, "plain target", "kept_iou")
    assert mean(swaps, "Replace", "outside") < mean(swaps, "plain target", "outside")


@pytest.mark.slow
def test_local_blend_keeps_what_lies_outside_its_word(swaps):
    """LocalBlend, cut from the words' text->image maps: less change outside the edited object than Replace
    alone, and the other object kept better than by plain generation. (Not always better than by Replace: on
    one of these 8 swaps the blended edit loses the other object.)"""
    assert mean(swaps, "Replace + LocalBlend", "outside") < mean(swaps, "Replace", "outside")
    assert mean(swaps, "Replace + LocalBlend", "kept_iou") > mean(swaps, "plain target", "kept_iou")


@pytest.mark.slow
def test_direct_inversion_reconstructs_to_the_vae(mmdit):
    """Direct Inversion puts the source back on the inverted trajectory after every step: the reconstruction
    is the VAE's own round trip (within 0.1 dB, as on the UNet model), far above the Euler steps run back."""
    rows = []
    for img, prompt in rendered_scenes(5):
        rec = {"vae": psnr(vae_round_trip(mmdit, img)[0], img)}
        for method in ("ddim", "direct"):
            inversion = mmdit.invert(Image.fromarray(img), prompt, method=method, progress=False)
            rec[method] = psnr(mmdit.generate([prompt], inversion=inversion, progress=False)[0], img)
        rows.append(rec)
    assert all(r["direct"] >= r["vae"] - 0.1 for r in rows), rows
    assert np.mean([r["direct"] - r["ddim"] for r in rows]) > 1.0, rows
