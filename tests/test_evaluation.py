"""The measurements the benchmarks and tests rely on, checked on cases whose answer is known."""

import math

import numpy as np
import pytest

from minip2p import shapes
from minip2p.evaluation import at_least, away_from, edit_scores, iou, psnr, turned

SOURCE = "a red circle and a blue square on a white background"


@pytest.fixture(scope="module")
def scene():
    spec = shapes.parse(SOURCE)
    img, _, masks = shapes.render(spec, np.random.default_rng(3))
    return img, masks


def recoloured(img, mask, colour):
    out = img.copy()
    out[mask] = {**shapes.COLOURS, **shapes.BACKGROUNDS}[colour]
    return out


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2))  # off by one everywhere: 48.13 dB
    b = a.copy()
    b[0, 0] = 255
    mask = np.ones((4, 4), bool)
    mask[0, 0] = False
    assert psnr(a, b, mask) == psnr(a, a) and psnr(a, b) < 20  # the mask leaves the difference out
    assert psnr(np.zeros(3), np.full(3, 0.02), peak=2.0) == pytest.approx(10 * math.log10(4 / 0.02**2))


def test_at_least_is_a_one_sided_binomial_test():
    assert at_least(10, 10, 0.99) and not at_least(0, 10, 0.5)
    # Bin(40, 0.9): P(X <= 33) = 0.0995, P(X <= 32) = 0.0419
    assert at_least(33, 40, 0.9) and not at_least(32, 40, 0.9)


def test_edit_scores_of_a_perfect_colour_edit(scene):
    img, (circle, square) = scene
    edited = recoloured(img, circle, "green")
    target = SOURCE.replace("red", "green")
    s = edit_scores(img, edited, SOURCE, target, 0)
    assert s == {"edited": 1.0, "moved": 0.0, "kept_iou": 1.0, "background": 1.0, "outside": 0.0}


def test_edit_scores_see_what_went_wrong(scene):
    img, (circle, square) = scene
    target = SOURCE.replace("red", "green")
    assert edit_scores(img, img, SOURCE, target, 0)["edited"] == 0.0  # nothing changed: the edit did not take
    lost = recoloured(recoloured(img, circle, "green"), square, "white")  # ... and the other object is gone
    s = edit_scores(img, lost, SOURCE, target, 0)
    assert s["edited"] == 1.0 and s["kept_iou"] == 0.0 and s["outside"] > 0
    assert edit_scores(recoloured(img, circle, "yellow"), img, SOURCE, target, 0) is None  # a wrong source


def test_turned_and_away_from(scene):
    img, (circle, _) = scene
    assert turned(recoloured(img, circle, "blue"), circle) and not turned(img, circle)
    assert turned(recoloured(img, circle, "purple"), circle, "purple")
    dot = np.zeros((9, 9), bool)
    dot[4, 4] = True
    far = away_from(dot, px=2)
    assert not far[2:7, 2:7].any() and far.sum() == 81 - 25
    assert iou(circle, circle) == 1.0 and iou(circle, ~circle) == 0.0
