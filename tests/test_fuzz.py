"""Fuzzing: the edits' token alignment (through the controllers, where words and prompts are checked) and the
number checks, on inputs hypothesis makes up. Each either gives a well-formed answer or a ValueError with one
line, never another exception."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minip2p import LocalBlend, Refine, Replace, Reweight
from minip2p.align import MAX_TOKENS, refinement_mapper, replacement_mapper, word_token_indices
from minip2p.checks import (
    check_finite,
    check_prompt_tokens,
    check_range,
    check_seed,
    check_whole,
    check_words,
)
from minip2p.p2p import check_window

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Z"]), min_size=1, max_size=8
)
prompts = st.lists(words, min_size=1, max_size=12).map(" ".join)
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5))


def refused_in_one_line(fn, *args):
    """fn(*args) -> its result, or None if it raised a ValueError of one line (any other exception fails)."""
    try:
        return fn(*args)
    except ValueError as e:
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)
        return None


@SETTINGS
@given(prompt=prompts, word=words)
def test_word_token_indices(tokenizer, prompt, word):
    def checked():
        check_prompt_tokens(tokenizer, prompt)
        check_words(prompt, word)
        return word_token_indices(prompt, word, tokenizer)

    found = refused_in_one_line(checked)
    if found is not None:
        ids = tokenizer(prompt).input_ids
        assert found and all(1 <= i < len(ids) - 1 for i in found)


@SETTINGS
@given(source=prompts, target=prompts)
def test_replacement_mapper_spreads_each_source_token_at_most_once(tokenizer, source, target):
    edit = refused_in_one_line(Replace, [source, target], tokenizer)
    if edit is not None:
        m = edit.mapper[0]
        assert m.shape == (MAX_TOKENS, MAX_TOKENS) and ((m == 0) | (m > 0)).all() and m[0, 0] == 1
        assert (m.sum(1) <= 1 + 1e-6).all()  # a source token gives its map once, spread over the target's


@SETTINGS
@given(source=prompts, target=prompts)
def test_refinement_mapper_points_inside_the_source(tokenizer, source, target):
    edit = refused_in_one_line(Refine, [source, target], tokenizer)
    if edit is not None:
        mapper, alphas = edit.mapper[0], edit.refine_alphas[0]
        assert mapper.min() >= 0 and mapper.max() < MAX_TOKENS and set(alphas.unique().tolist()) <= {0.0, 1.0}
        shared = alphas[: len(tokenizer(target).input_ids)].bool()
        src, tgt = tokenizer(source).input_ids, tokenizer(target).input_ids
        assert all(src[mapper[j]] == tgt[j] for j in shared.nonzero().flatten().tolist())  # same token


@SETTINGS
@given(prompt=prompts, word=words, scale=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_equalizer(tokenizer, prompt, word, scale):
    edit = refused_in_one_line(Reweight, [prompt, prompt], tokenizer, {word: scale})
    if edit is not None:
        eq = edit.scales[0]
        assert eq.shape == (MAX_TOKENS,) and ((eq == 1) | (eq == torch.tensor(scale))).all()


@given(value=anything)
def test_number_checks(value):
    got = refused_in_one_line(check_finite, value, "x")
    if got is not None:
        assert math.isfinite(got) and not isinstance(value, (bool, str))
    got = refused_in_one_line(check_range, value, "x", 0.0, 1.0)
    assert got is None or 0 <= got <= 1
    got = refused_in_one_line(check_whole, value, "x", 1, 1000)
    assert got is None or (isinstance(got, int) and 1 <= got <= 1000)
    got = refused_in_one_line(check_seed, value)
    assert got is None or 0 <= got < 2**32


@given(value=st.one_of(anything, st.tuples(anything, anything), st.lists(anything, max_size=3)))
def test_step_windows(value):
    got = refused_in_one_line(check_window, value, "cross_replace_steps")
    assert got is None or 0 <= got[0] <= got[1] <= 1


@given(threshold=anything, start_blend=anything)
def test_local_blend_numbers(threshold, start_blend):
    lb = refused_in_one_line(LocalBlend, ["a", "a"], threshold, start_blend)
    assert lb is None or ((lb.threshold is None or 0 <= lb.threshold <= 1) and 0 <= lb.start_blend <= 1)


@pytest.mark.parametrize("prompt", ["", " ", "a  b", "cat,", "🙂", "a" * 300])
def test_edge_prompts(tokenizer, prompt):
    """Empty, blank, doubled spaces, punctuation, emoji, very long: a prompt swapped with itself maps every
    token onto itself; adding a word makes exactly its token new and keeps the others in place."""
    assert torch.equal(replacement_mapper(prompt, prompt, tokenizer), torch.eye(MAX_TOKENS))
    mapper, alphas = refinement_mapper(prompt, prompt + " x", tokenizer)
    end = len(tokenizer(prompt).input_ids) - 1  # the end token's position: " x" takes it
    assert (alphas == 0).nonzero().flatten().tolist() == [end]
    assert torch.equal(mapper[:end], torch.arange(end))
