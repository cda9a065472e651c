"""What the edits and inversions do on the bundled shapes model, measured with the analyser against the truth.

Smaller samples of `python benchmarks/shapes_edits.py` and `python benchmarks/inversion.py` (figures in
docs/RESULTS.md). A rate is compared with a baseline measured in the same test, on the same cases and noise:
plain generation of the target (how often the model draws the target at all) or the unedited image. On 8 cases
a one-sided binomial test of the requirement itself (80%) cannot tell a method at 65% from one at 80% (that
needs about 80 cases, past the CI budget), so an edit must do what its baseline does in all cases but one
(`within_one`). Against a baseline of 8 of 8, a method that works half the time fails with probability 0.96
and one at 65% with 0.83 (0.86 and 0.57 against 7 of 8): `test_within_one_can_fail` computes them. The
benchmarks measure the rates themselves, on 50 seeds.
"""

import math

import numpy as np
import pytest
from PIL import Image

from minip2p import defaults, shapes
from minip2p.evaluation import (
    REFINES,
    away_from,
    colour_edit_scene,
    edit_variants,
    inverted_edit,
    psnr,
    rendered_scenes,
    reweight_shown,
    shown_swaps,
    turned,
    vae_round_trip,
)

pytestmark = pytest.mark.slow
CASES = 8  # cases per rate: the first 8 seeds whose source shows its prompt


def within_one(k: int, baseline: int, n: int = CASES) -> bool:
    """An edit's successes k against its baseline's on the same n cases: at most one in 8 fewer."""
    return k >= baseline - math.ceil(n / 8)


def fails(n: int, rate: float, baseline: int) -> float:
    """P(within_one fails) for a method of success `rate` on n cases against a baseline of `baseline`."""
    return sum(math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(n + 1) if k < baseline - 1)


@pytest.mark.parametrize(
    "n, rate, baseline, p_fail", [(8, 0.5, 8, 0.96), (8, 0.65, 8, 0.83), (8, 0.5, 7, 0.85), (6, 0.5, 6, 0.89)]
)
def test_within_one_can_fail(n, rate, baseline, p_fail):
    """The probability that `within_one` fails a method of this success rate, on n cases."""
    assert fails(n, rate, baseline) >= p_fail


@pytest.fixture(scope="module")
def swaps(shapes_pipe):
    """Scores of Replace, plain generation of the target and Replace + LocalBlend, for the first 8 seeds whose
    source image shows its prompt (2 of each of the 4 word swaps)."""
    rows = shown_swaps(shapes_pipe, 8, 24, progress=False)
    assert len(rows) == 8, "the model drew fewer than 8 of 24 sources as their prompts say"
    return rows


def mean(rows, name, key):
    return float(np.nanmean([r[name][key] for r in rows]))


def test_word_swap_takes_the_new_word_and_keeps_the_layout(swaps):
    edited, plain = (int(sum(r[name]["edited"] for r in swaps)) for name in ("Replace", "plain target"))
    assert within_one(edited, plain), f"{edited} of {len(swaps)} swaps took; plain generation {plain}"
    assert all(r["Replace"]["background"] for r in swaps)
    # the point of Prompt-to-Prompt: the layout is kept better than by plain generation from the same noise
    assert mean(swaps, "Replace", "moved") < mean(swaps, "plain target", "moved")
    assert mean(swaps, "Replace", "outside") < mean(swaps, "plain target", "outside")
    assert mean(swaps, "Replace", "kept_iou") > mean(swaps, "plain target", "kept_iou")


def test_local_blend_keeps_the_rest_better_than_replace_alone(swaps):
    edited, plain = (
        int(sum(r[name]["edited"] for r in swaps)) for name in ("Replace + LocalBlend", "plain target")
    )
    assert within_one(edited, plain), f"{edited} of {len(swaps)} swaps took; plain generation {plain}"
    assert mean(swaps, "Replace + LocalBlend", "outside") < mean(swaps, "Replace", "outside")


def test_refine_keeps_the_object_in_place(shapes_pipe):
    """Refine edits that add a colour word (evaluation.REFINES, 4 seeds each): the object takes the colour as
    often as plain generation of the target gives it (within one in 8) and stays where it was (median <= 3 px
    of 64, and within 8 px at least as often as plain generation) when the source's self-attention is kept
    longer (KEEP_STRUCTURE); with the paper's settings it still moves less than plain generation."""
    variants = {"keep": defaults.KEEP_STRUCTURE, "plain": None, "paper": {}}
    rows = []
    for seed in range(4):
        for source, target, k in REFINES:
            rows.append(edit_variants(shapes_pipe, source, target, k, seed, variants, progress=False))
    rows = [r for r in rows if r]
    kept = [r["keep"] for r in rows if r["keep"]["edited"]]
    plain = [r["plain"] for r in rows if r["plain"]["edited"]]
    assert within_one(len(kept), len(plain), len(rows)), f"{len(kept)}, plain {len(plain)} of {len(rows)}"
    moved, plain_moved = (np.array([s["moved"] for s in edits]) for edits in (kept, plain))
    assert np.median(moved) <= 3 and (moved <= 8).sum() >= (plain_moved <= 8).sum(), (moved, plain_moved)
    assert mean(rows, "paper", "moved") < mean(rows, "plain", "moved")


def test_negative_reweight_takes_away_what_the_word_names(shapes_pipe):
    """A negative scale on "square" takes the blue square away and leaves the red circle; on "white", the
    white background: in as many seeds as the unedited image (a scale of 1) shows them, within one."""
    seeds = range(8)
    base = reweight_shown(shapes_pipe, "square", 1.0, seeds, progress=False)
    square = reweight_shown(shapes_pipe, "square", -4.0, seeds, progress=False)
    white = reweight_shown(shapes_pipe, "white", -4.0, seeds, progress=False)
    n = len(seeds)

    def count(share):
        return round(share * n)

    assert within_one(n - count(square["blue square"]), count(base["blue square"])), (square, base)
    assert within_one(count(square["red circle"]), count(base["red circle"])), (square, base)
    assert within_one(n - count(white["white background"]), count(base["white background"])), (white, base)


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
    as many of 6 scenes on black and white backgrounds (on gray this model cannot make this edit even on its
    own images: docs/RESULTS.md) as plain generation of the target from the inverted noise turns it (within
    one), which keeps the rest worse; keeping the source's self-attention longer and at every size keeps the
    rest better than the paper's defaults."""
    scenes = [s for s in map(colour_edit_scene, range(12)) if shapes.parse(s[1]).background != "gray"][:6]
    assert len(scenes) == 6  # against a baseline of 6, a method that works half the time fails w.p. 0.89
    ok, plain_turned, rest = 0, 0, {"keep": [], "paper": [], "plain": []}
    for img, source, target, circle in scenes:
        inversion = shapes_pipe.invert(Image.fromarray(img), source, method="null-text", progress=False)
        for name, settings in (("keep", {}), ("paper", dict(self_replace_steps=0.4, self_max_fraction=0.25))):
            edit = inverted_edit(shapes_pipe.tokenizer, source, target, **settings)
            edited = shapes_pipe.generate(
                [source, target], inversion=inversion, controller=edit, progress=False
            )[1]
            rest[name].append(psnr(edited, img, away_from(circle)))
            ok += name == "keep" and turned(edited, circle) and rest["keep"][-1] >= 25.0
        plain = shapes_pipe.generate([source, target], inversion=inversion, progress=False)[1]
        rest["plain"].append(psnr(plain, img, away_from(circle)))
        plain_turned += turned(plain, circle)
    assert within_one(ok, plain_turned), (ok, plain_turned, rest)
    assert np.mean(rest["keep"]) > np.mean(rest["plain"]), rest
    assert np.mean(rest["keep"]) > np.mean(rest["paper"]), rest
