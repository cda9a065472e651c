"""The bundled shapes-world MM-DiT (`load("shapes-mmdit")`): what it is on disk, that it draws what it
is told, and what Prompt-to-Prompt does on its joint attention (measured by the analyser, against plain
generation).

Smaller samples of `benchmarks/shapes_quality.py`, `shapes_edits.py` and `inversion.py` with `--weights
shapes-mmdit` (figures in docs/RESULTS.md); the rates are held as for the UNet model
(tests/test_shapes_model.py, tests/test_shapes_edits.py, whose docstring says what `within_one` can tell).
"""

import json
import math
from itertools import islice

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import minip2p
from minip2p.checkpoint import BUNDLED_MMDIT, BUNDLED_MODEL, META_KEY, read_safetensors
from minip2p.config import CheckpointError
from minip2p.evaluation import adherence, at_least, psnr, rendered_scenes, swap_edit, vae_round_trip
from minip2p.sd3 import SD3Pipeline

ADHERENCE = 0.9  # every attribute of its prompt in at least 90% of images, as the UNet model


@pytest.fixture(scope="module")
def mmdit():
    return minip2p.load("shapes-mmdit")


def within_one(k: int, baseline: int, n: int = 8) -> bool:
    return k >= baseline - math.ceil(n / 8)


def test_the_file_is_a_small_sd3_single_file_of_fp16_weights():
    assert BUNDLED_MMDIT.stat().st_size < 40e6  # a few tens of MB: it ships in the wheel
    with safe_open(str(BUNDLED_MMDIT), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert dtypes == {"F16"} and set(json.loads(meta[META_KEY])) == {
        "vae",
        "text",
        "shift",
        "image_size",
        "t5_tokens",
    }
    prefixes = {"model.diffusion_model", "first_stage_model", "text_encoders.clip_l.transformer"}
    assert all(any(k.startswith(p + ".") for p in prefixes) for k in keys)
    assert all(any(k.startswith(p + ".") for k in keys) for p in prefixes)


def test_it_shares_the_unet_models_vae_and_text_encoder(mmdit, shapes_pipe):
    """Trained on the bundled model's latents and words (both frozen): the same VAE and token states."""
    assert isinstance(mmdit, SD3Pipeline) and mmdit.config.text_2 is None and mmdit.text_encoder_3 is None
    assert mmdit.config.image_size == 64 and mmdit.pixels_per_cell == 4
    for a, b in zip(mmdit.vae.state_dict().values(), shapes_pipe.vae.state_dict().values()):
        assert (a == b).all()
    ids = shapes_pipe.tokenizer(["a red circle"], return_tensors="pt").input_ids
    ours, theirs = mmdit.text_encoder.text_model(ids), shapes_pipe.text_encoder(ids)
    assert (ours.last_hidden_state == theirs.last_hidden_state).all()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shift": float("nan")}, "NaN is not a number JSON allows"),
        ({"shift": "3"}, "shift must be a finite number"),
        ({"vae": {"norm_groups": 7}}, "norm_groups divide"),
        ({"text": {"num_heads": 3}}, "num_heads must divide"),
        ({"text": {"layers": 3}}, "unknown setting 'text.layers'"),
        ({"image_size": 128}, "image_size must be a multiple of 8 up to 64"),
        ({"vae": {"scale_factor": -1.0}}, "scale_factor and shift must be > 0"),
    ],
)
def test_a_bad_setting_in_its_metadata_is_one_line(tmp_path, change, message):
    tensors, meta = read_safetensors(BUNDLED_MMDIT)
    settings = json.loads(meta[META_KEY])
    for k, v in change.items():
        settings[k] = {**settings[k], **v} if isinstance(v, dict) else v
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(settings)})
    with pytest.raises(CheckpointError, match=message) as e:
        minip2p.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_bundled_name_is_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").write_bytes(b"not a model")  # a file of that name: "./shapes"
    assert minip2p.load("shapes").probe().equal(minip2p.load(BUNDLED_MODEL).probe())
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        minip2p.load("./shapes")


@pytest.mark.slow
def test_prompt_adherence_on_40_prompts(mmdit):
    n = 40
    rates, _ = adherence(mmdit, n=n, seed=1, progress=False)
    assert all(at_least(round(rate * n), n, ADHERENCE) for rate in rates.values()), rates


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
    rows = (swap_edit(mmdit, seed, progress=False) for seed in range(32))
    rows = list(islice((r for r in rows if r), 8))
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
def test_local_blend_changes_less_outside_than_replace_alone(swaps):
    edited, plain = (
        int(sum(r[name]["edited"] for r in swaps)) for name in ("Replace + LocalBlend", "plain target")
    )
    assert within_one(edited, plain), f"{edited} of {len(swaps)} swaps took; plain generation {plain}"
    assert mean(swaps, "Replace + LocalBlend", "outside") < mean(swaps, "Replace", "outside")


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
