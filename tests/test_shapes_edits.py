"""What the edits and inversions do on the bundled shapes model, measured with the analyser against the truth.

Smaller samples of `python benchmarks/shapes_edits.py` and `python benchmarks/inversion.py` (figures in
docs/RESULTS.md). A rate is held to its requirement with `at_least` (a one-sided binomial test on the sample),
a property of an edit by comparison with a baseline on the same seeds.
"""

from itertools import islice

import numpy as np
import pytest
from PIL import Image

from minip2p import defaults, shapes
from minip2p.evaluation import (
    REFINES,
    at_least,
    away_from,
    colour_edit_scene,
    edit_variants,
    inverted_edit,
    psnr,
    rendered_scenes,
    reweight_shown,
    swap_edit,
    turned,
    vae_round_trip,
)

pytestmark = pytest.mark.slow
EDIT_RATE = 0.8  # an edit must take (and keep the rest) in at least 80% of the cases the model can draw


@pytest.fixture(scope="module")
def swaps(shapes_pipe):
    """Scores of Replace, plain generation of the target and Replace + LocalBlend, for the first 8 seeds whose
    source image shows its prompt (2 of each of the 4 word swaps)."""
    rows = (swap_edit(shapes_pipe, seed, progress=False) for seed in range(24))
    rows = list(islice((r for r in rows if r), 8))
    assert len(rows) == 8, "the model drew fewer than 8 of 24 sources as their prompts say"
    return rows


def mean(rows, name, key):
    return float(np.nanmean([r[name][key] for r in rows]))


def test_word_swap_takes_the_new_word_and_keeps_the_layout(swaps):
    edited = sum(r["Replace"]["edited"] for r in swaps)
    assert at_least(int(edited), len(swaps), EDIT_RATE), f"{edited} of {len(swaps)} swaps took"
    assert all(r["Replace"]["background"] for r in swaps)
    # the point of Prompt-to-Prompt: the layout is kept better than by plain generation from the same noise
    assert mean(swaps, "Replace", "moved") < mean(swaps, "plain target", "moved")
    assert mean(swaps, "Replace", "outside") < mean(swaps, "plain target", "outside")
    assert mean(swaps, "Replace", "kept_iou") > mean(swaps, "plain target", "kept_iou")


def test_local_blend_keeps_the_rest_better_than_replace_alone(swaps):
    edited = sum(r["Replace + LocalBlend"]["edited"] for r in swaps)
    assert at_least(int(edited), len(swaps), EDIT_RATE), f"{edited} of {len(swaps)} swaps took"
    assert mean(swaps, "Replace + LocalBlend", "outside") < mean(swaps, "Replace", "outside")


def test_refine_keeps_the_object_in_place(shapes_pipe):
    """Refine edits that add a colour word (evaluation.REFINES, 4 seeds each): the object takes the colour and
    stays where it was (moved at most 8 px of 64 in >= 90% of cases, median <= 3 px) when the source's
    self-attention is kept at every size, as this 16x16-latent model needs; with the paper's settings it still
    moves less than plain generation of the target from the same noise."""
    variants = {"keep": defaults.KEEP_STRUCTURE, "plain": None, "paper": {}}
    rows = []
    for seed in range(4):
        for source, target, k in REFINES:
            rows.append(edit_variants(shapes_pipe, source, target, k, seed, variants, progress=False))
    rows = [r for r in rows if r]
    kept = [r["keep"] for r in rows if r["keep"]["edited"]]
    assert at_least(len(kept), len(rows), EDIT_RATE), f"{len(kept)} of {len(rows)} took the colour"
    moved = np.array([s["moved"] for s in kept])
    assert at_least(int((moved <= 8).sum()), len(moved), 0.9) and np.median(moved) <= 3, moved
    assert mean(rows, "paper", "moved") < mean(rows, "plain", "moved")


def test_negative_reweight_takes_away_what_the_word_names(shapes_pipe):
    """A negative scale on "square" takes the blue square away and leaves the red circle; on "white", the
    white background; with a scale of 1 (no edit) all three show."""
    seeds = range(8)
    base = reweight_shown(shapes_pipe, "square", 1.0, seeds, progress=False)
    square = reweight_shown(shapes_pipe, "square", -4.0, seeds, progress=False)
    white = reweight_shown(shapes_pipe, "white", -4.0, seeds, progress=False)
    n = len(seeds)

    def count(share):
        return round(share * n)

    assert all(at_least(count(v), n, EDIT_RATE) for v in base.values()), base
    assert at_least(n - count(square["blue square"]), n, EDIT_RATE), square
    assert at_least(count(square["red circle"]), n, EDIT_RATE), square
    assert at_least(n - count(white["white background"]), n, EDIT_RATE), white


def test_inversions_reconstruct_near_the_vae(shapes_pipe):
    """The requirements, on the benchmark's 10 rendered scenes: null-text inversion within 1 dB of the VAE's
    own round trip (the ceiling of any inversion) and above DDIM inversion alone; Direct Inversion within
    0.1 dB of the VAE."""
    rows = []
    for img, prompt in rendered_scenes(10):
        rec = {"vae": psnr(vae_round_trip(shapes_pipe, img)[0], img)}
        for method in ("ddim", "null-text", "direct"):
            inversion = shapes_pipe.invert(Image.fromarray(img), prompt, method=method, progress=False)
            rec[method] = psnr(shapes_pipe.generate([prompt], inversion=inversion, progress=False)[0], img)
        rows.append(rec)

    def gap(a, b):
        return float(np.mean([r[a] - r[b] for r in rows]))

    assert gap("null-text", "vae") >= -1.0, rows
    assert gap("null-text", "ddim") > 0, rows
    assert gap("direct", "vae") >= -0.1, rows


def test_colour_edit_after_null_text_inversion(shapes_pipe):
    """A red circle turned blue after null-text inversion, with the rest kept (>= 25 dB against the input), in
    at least 80% of scenes on black and white backgrounds (on gray this model cannot make this edit even on
    its own images: docs/RESULTS.md); and keeping the source's self-attention longer and at every size keeps
    the rest better than the paper's defaults."""
    scenes = [s for s in map(colour_edit_scene, range(12)) if shapes.parse(s[1]).background != "gray"][:5]
    ok, rest = 0, {"keep": [], "paper": []}
    for img, source, target, circle in scenes:
        inversion = shapes_pipe.invert(Image.fromarray(img), source, method="null-text", progress=False)
        for name, settings in (("keep", {}), ("paper", dict(self_replace_steps=0.4, self_max_fraction=0.25))):
            edit = inverted_edit(shapes_pipe.tokenizer, source, target, **settings)
            edited = shapes_pipe.generate(
                [source, target], inversion=inversion, controller=edit, progress=False
            )[1]
            rest[name].append(psnr(edited, img, away_from(circle)))
            ok += name == "keep" and turned(edited, circle) and rest["keep"][-1] >= 25.0
    assert at_least(ok, len(scenes), EDIT_RATE), (ok, rest)
    assert np.mean(rest["keep"]) > np.mean(rest["paper"]), rest
