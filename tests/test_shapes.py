"""The shapes world: the grammar, the renderer, and an analyser that recovers the ground truth."""

import re

import numpy as np
import pytest

from minip2p import shapes


def test_every_word_is_one_clip_token(tokenizer):
    for w in [*shapes.COLOURS, *shapes.SHAPES, *shapes.BACKGROUNDS, "shape", "background"]:
        assert len(tokenizer(w).input_ids) == 3, w


def test_analyser_recovers_1000_rendered_scenes():
    rng = np.random.default_rng(123)
    right = {"count": 0, "background": 0, "colour": 0, "shape": 0, "all": 0}
    iou = []
    for _ in range(1000):
        img, full, masks = shapes.render(shapes.sample_spec(rng, p_omit=0.0), rng)
        bg, found = shapes.analyse(img)
        for k, v in shapes.matches(full, bg, found).items():
            right[k] += v
        for m in masks:
            best = max((f.mask & m).sum() / (f.mask | m).sum() for f in found)
            iou.append(best)
    assert all(v >= 990 for v in right.values()), right
    assert np.mean(iou) > 0.99


def test_prompts_round_trip_through_the_grammar():
    rng = np.random.default_rng(0)
    for _ in range(200):
        spec = shapes.sample_spec(rng, p_omit=0.3)
        assert shapes.parse(spec.prompt()) == spec
    spec = shapes.parse("a red circle and a blue square on a white background")
    assert spec == shapes.Spec([shapes.Obj("red", "circle"), shapes.Obj("blue", "square")], "white")
    assert shapes.parse("an orange shape").objects == [shapes.Obj("orange", None)]


def test_open_attributes_are_filled_at_random():
    rng = np.random.default_rng(1)
    spec = shapes.parse("a circle")
    colours = {shapes.render(spec, rng)[1].objects[0].colour for _ in range(60)}
    backgrounds = {shapes.render(spec, rng)[1].background for _ in range(60)}
    assert len(colours) >= 5 and len(backgrounds) == 3


def test_objects_never_overlap_and_keep_the_prompted_attributes():
    rng = np.random.default_rng(2)
    spec = shapes.parse("a red triangle and a green square on a black background")
    for _ in range(100):
        img, full, masks = shapes.render(spec, rng)
        assert not (masks[0] & masks[1]).any()
        assert (img[masks[0]] == shapes.COLOURS["red"]).all() and (
            img[masks[1]] == shapes.COLOURS["green"]
        ).all()


@pytest.mark.parametrize(
    "prompt, word",
    [
        ("a red hexagon", "hexagon"),
        ("a circle on a pink background", "on a <white|black|gray> background"),
        ("a red circle on a white blah", "on a <white|black|gray> background"),
        ("a red circle on a white", "on a <white|black|gray> background"),
        ("a red circle on", "on a <white|black|gray> background"),
    ],
)
def test_unknown_words_are_named(prompt, word):
    with pytest.raises(ValueError, match=re.escape(word)):
        shapes.parse(prompt)
