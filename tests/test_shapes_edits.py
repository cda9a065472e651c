"""What the edits and inversions do on the bundled shapes model, measured with the analyser against ground truth.

Smaller samples of `python benchmarks/shapes_edits.py` and `python benchmarks/inversion.py`.
"""
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minip2p

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from inversion import away_from, colour_edit_scene, inverted_edit, psnr, rendered_scenes, turned  # noqa: E402
from shapes_edits import reweight_shown, swap_edit  # noqa: E402

SEEDS = range(6)  # for Reweight


@pytest.fixture(scope="module")
def pipe():
    return minip2p.load()


@pytest.fixture(scope="module")
def swaps(pipe):
    """Scores of Replace, plain generation of the target and Replace + LocalBlend, for the first 6 seeds whose
    source image shows its prompt."""
    rows = list(islice((r for r in map(lambda seed: swap_edit(pipe, seed, progress=False), range(16)) if r), 6))
    assert len(rows) == 6, f"only {len(rows)} of 16 seeds gave a source image that shows its prompt"
    return [{"replace": r["Replace"], "plain": r["plain target"], "blend": r["Replace + LocalBlend"]} for r in rows]


def mean(rows, name, key):
    return float(np.mean([r[name][key] for r in rows]))


def test_word_swap_changes_the_word_and_keeps_the_rest(swaps):
    """Replace takes the new word and keeps the layout closer than plain generation of the target from the same
    noise (benchmark, 42 usable seeds of 50: edited 95%, the edited object's centre moved 2.2 px vs 8.0, pixel
    change outside it 7.3 vs 13.2)."""
    assert mean(swaps, "replace", "edited") >= 0.6
    assert mean(swaps, "replace", "background") == 1.0
    assert mean(swaps, "replace", "outside") < mean(swaps, "plain", "outside")
    moved = lambda name: np.nanmedian([r[name]["moved"] for r in swaps])
    assert moved("replace") < moved("plain")


def test_local_blend_keeps_the_rest_at_least_as_well(swaps):
    assert mean(swaps, "blend", "edited") >= 0.6
    assert mean(swaps, "blend", "outside") <= mean(swaps, "replace", "outside")
    assert mean(swaps, "blend", "kept_iou") >= mean(swaps, "replace", "kept_iou") - 0.02


def test_negative_reweight_takes_away_what_the_word_names(pipe):
    """A negative scale on "square" removes the blue square and leaves the red circle; on "white", the background."""
    base = reweight_shown(pipe, "square", 1.0, SEEDS, progress=False)
    square = reweight_shown(pipe, "square", -4.0, SEEDS, progress=False)
    white = reweight_shown(pipe, "white", -4.0, SEEDS, progress=False)
    assert base["blue square"] >= 0.75 and base["white background"] == 1.0, base
    assert square["blue square"] <= 0.25 and square["red circle"] >= 0.75, square
    assert white["white background"] <= 0.25, white


def test_null_text_reconstructs_near_the_vae_and_above_ddim(pipe):
    """The issue asks null-text within 1 dB of the VAE's own round trip: the benchmark's mean over 10 scenes is
    0.84 dB under it, its first 3 scenes' mean 1.12 dB (VAE 29.14 / 34.26 / 29.42, null-text 28.62 / 32.20 / 28.64,
    DDIM-only 24.06 / 31.37 / 23.20), so the bar here is 1.5 dB on the mean."""
    rows = []
    for img, prompt in rendered_scenes(3):
        image = Image.fromarray(img)
        rec = {m: psnr(pipe.generate([prompt], inversion=pipe.invert(image, prompt, method=m, progress=False),
                                     progress=False)[0], image) for m in ("ddim", "null-text")}
        rec["vae"] = psnr(minip2p.pipeline.to_pil(pipe.decode(pipe.encode(image)))[0], image)
        rows.append(rec)
    gap = lambda a, b: float(np.mean([r[a] - r[b] for r in rows]))
    assert gap("null-text", "vae") >= -1.5, rows
    assert gap("null-text", "ddim") >= 2.0, rows


def test_colour_edit_after_null_text_inversion(pipe):
    """The circle turns blue and the rest keeps >= 25 dB against the input. The issue asks for >= 80% of scenes;
    this model reaches 67% of the benchmark's 30 scenes: 19 of 20 on black and white backgrounds, 1 of 10 on gray,
    where it fails as often on images it generated itself. This pins that level on 3 scenes (white, gray, black):
    2 of 3, and no scene's rest under 25 dB."""
    changed, rest = [], []
    for k in range(3):
        img, source, target, circle = colour_edit_scene(k)
        inv = pipe.invert(Image.fromarray(img), source, method="null-text", progress=False)
        edited = pipe.generate([source, target], inversion=inv, controller=inverted_edit(pipe, source, target),
                               progress=False)[1]
        changed.append(turned(edited, circle))
        rest.append(psnr(edited, img, away_from(circle)))
    assert sum(changed) >= 2 and min(rest) >= 25.0, (changed, rest)
