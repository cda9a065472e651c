"""Words -> token positions, and the token maps of Replace, Refine and Reweight, checked by hand."""

import pytest
import torch

from minip2p import Replace, Reweight
from minip2p.align import equalizer, refinement_mapper, replacement_mapper, word_token_indices


def test_word_token_indices(tokenizer):
    assert word_token_indices("a photo of a Cat,", "cat", tokenizer) == [5]
    assert word_token_indices("a photo of a Cat,", "CAT", tokenizer) == [5]
    assert word_token_indices("a photo of a cat", "a", tokenizer) == [1, 4]
    assert word_token_indices("a photo of a cat", 4, tokenizer) == [5]
    assert word_token_indices("a tiramisu on a plate", "tiramisu", tokenizer) == [2, 3, 4]  # three tokens
    assert word_token_indices("a tiramisu on a plate", "plate", tokenizer) == [7]


def test_missing_word_names_the_prompt_and_its_words(tokenizer):
    with pytest.raises(
        ValueError, match=r"'dog' is not a word of 'a photo of a cat'; its words are \['a', 'photo'"
    ):
        Reweight(["a photo of a cat"] * 2, tokenizer, {"dog": 2.0})
    with pytest.raises(ValueError, match="word index 9 is outside"):
        Replace(["a photo of a cat"] * 2, tokenizer, cross_replace_steps={9: 0.5})


def test_replacement_one_to_one(tokenizer):
    m = replacement_mapper("a photo of a cat", "a photo of a dog", tokenizer)
    assert torch.equal(m, torch.eye(77))


def test_replacement_one_token_to_three_and_the_tail_offset(tokenizer):
    # source: S a cat riding a bicycle E ...; target: S a cat riding a tira mi su E ...
    m = replacement_mapper("a cat riding a bicycle", "a cat riding a tiramisu", tokenizer)
    for k in range(5):
        assert m[k, k] == 1
    assert torch.allclose(m[5, 5:8], torch.full((3,), 1 / 3)) and m[:, 5:8].sum() == pytest.approx(1.0)
    assert m[6, 8] == 1, "the target's end token takes the source's end token"
    assert m[8, 8] == 0, "not the official code's diagonal tail (off by the 2 extra tokens)"
    assert m[74, 76] == 1 and m[:, 8:].sum() == 69
    expected = torch.ones(77)
    expected[5:8] = 1 / 3  # the three new tokens share the source word's attention
    assert torch.allclose(m.sum(0), expected)


def test_replacement_three_tokens_to_one(tokenizer):
    m = replacement_mapper("a cat riding a tiramisu", "a cat riding a bicycle", tokenizer)
    assert torch.equal(m[5:8, 5], torch.ones(3))  # 1/m with m = 1: the word's three maps add up
    assert m[8, 6] == 1 and m[9, 7] == 1
    assert m[:, 75:].sum() == 0  # the source runs out of positions first: the last target pads take nothing


def test_replacement_needs_equal_word_counts(tokenizer):
    with pytest.raises(ValueError, match="same number of words.*has 5, .* has 6; use Refine"):
        Replace(["a photo of a cat", "a photo of a big cat"], tokenizer)


def test_refinement_inserted_word(tokenizer):
    # S a cat E -> S a fluffy cat E
    mapper, alphas = refinement_mapper("a cat", "a fluffy cat", tokenizer)
    assert mapper[:5].tolist()[:2] == [0, 1] and mapper[3] == 2 and mapper[4] == 3
    assert alphas[:5].tolist() == [1, 1, 0, 1, 1]
    # padding position for position, as the official code (seq_aligner.get_mapper): our earlier map aligned it
    # on the end token; on the bundled model that moved added-word edits more (docs/RESULTS.md, Refine)
    assert mapper[5:].tolist() == list(range(5, 77)) and alphas[5:].eq(1).all()


def test_refinement_appended_words_match_the_earliest_tokens(tokenizer):
    # S a red circle E -> S a red circle and a blue square E
    mapper, alphas = refinement_mapper("a red circle", "a red circle and a blue square", tokenizer)
    assert mapper[:4].tolist() == [0, 1, 2, 3] and alphas[:4].eq(1).all()
    assert alphas[4:8].tolist() == [0, 0, 0, 0]  # and a blue square: new
    assert mapper[8] == 4 and alphas[8] == 1  # end token to end token


def test_equalizer(tokenizer):
    eq = equalizer("a red circle on a white background", ["red", "white"], [2.0, -1.0], tokenizer)
    expected = torch.ones(77)
    expected[2], expected[6] = 2.0, -1.0
    assert torch.equal(eq, expected)


def test_prompts_over_77_tokens_are_an_error(tokenizer):
    with pytest.raises(ValueError, match="more than the 77"):
        Replace(["cat " * 80, "dog " * 80], tokenizer)
