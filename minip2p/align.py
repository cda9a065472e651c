"""Aligning prompts token by token: which tokens of the source a target token takes its attention from.

Prompt-to-Prompt works on token positions (77 per prompt), users think in words. Every function here goes from
words to positions with the real CLIP tokenizer, so multi-token words ("bicycle" is one token, "lamborghini"
several) and punctuation ("cat," is "cat" + ",") are handled as the text encoder sees them.
"""

import string

import torch

from .checks import short
from .text import token_ids

MAX_TOKENS = 77


def words_and_tokens(prompt, tokenizer):
    """-> (words, [token positions of each word]); position 0 is the start token."""
    total = len(token_ids(tokenizer, prompt, MAX_TOKENS))
    words = prompt.split()
    positions, pos = [], 1
    for w in words:
        n = len(tokenizer(w, add_special_tokens=False).input_ids)
        positions.append(list(range(pos, pos + n)))
        pos += n
    if pos + 1 != total:  # cannot happen with CLIP's pre-tokenizer, which never joins across spaces
        raise ValueError(
            f"{short(prompt)}: word-by-word tokens ({pos + 1}) differ from the prompt's ({total})"
        )
    return words, positions


def clean(word):
    return word.lower().strip(string.punctuation)


def word_token_indices(prompt, word, tokenizer):
    """Token positions of `word` in `prompt` (every occurrence). `word` is a string (case and trailing
    punctuation ignored: "Cat," finds "cat") or the index of a word in prompt.split()."""
    words, positions = words_and_tokens(prompt, tokenizer)
    if isinstance(word, int):
        if not 0 <= word < len(words):
            raise ValueError(f"word index {word} is outside {short(prompt)}, which has {len(words)} words")
        found = [word]
    else:
        found = [i for i, w in enumerate(words) if clean(w) == clean(word)]
        if not found:
            raise ValueError(
                f"{short(word)} is not a word of {short(prompt)}; its words are {[clean(w) for w in words]}"
            )
    out = []
    for i in found:
        # the word's own tokens, without tokens of punctuation glued to it
        own = len(tokenizer(clean(words[i]) or words[i], add_special_tokens=False).input_ids)
        out += positions[i][:own]
    return out


def replacement_mapper(source, target, tokenizer):
    """(77, 77) matrix M for a word swap: target token j attends like sum_i M[i, j] * source token i.

    Prompts must have the same number of words. A replaced word of n source tokens and m target tokens spreads
    1/m to each target token. After the last replaced word, tokens map position by position *with the offset*
    the replaced words introduced (the official code maps the tail diagonally, off by that offset).
    """
    src_words, src_pos = words_and_tokens(source, tokenizer)
    tgt_words, tgt_pos = words_and_tokens(target, tokenizer)
    if len(src_words) != len(tgt_words):
        raise ValueError(
            f"a word swap (Replace) needs prompts with the same number of words: {short(source)} has "
            f"{len(src_words)}, {short(target)} has {len(tgt_words)}; use Refine to add or remove words"
        )
    mapper = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    mapper[0, 0] = 1
    i = j = 1
    for k in range(len(src_words)):
        s, t = src_pos[k], tgt_pos[k]
        if len(s) == len(t):  # same word, or a swap of equal token counts: token i -> token i
            for a, b in zip(s, t):
                mapper[a, b] = 1
        else:  # n source tokens -> m target tokens: each target token takes 1/m of each source token
            for b in t:
                mapper[s, b] = 1 / len(t)
        i, j = i + len(s), j + len(t)
    while i < MAX_TOKENS and j < MAX_TOKENS:  # end token and padding
        mapper[i, j] = 1
        i, j = i + 1, j + 1
    return mapper


def refinement_mapper(source, target, tokenizer):
    """-> (mapper (77,) long, alphas (77,)): for each target token, the source token it takes its attention
    from, and 1 where there is one, 0 for tokens the target adds (they keep their own attention).

    Global alignment of the token ids with match +1, mismatch -1, gap 0, as the paper; with these scores the
    best alignment never pairs different tokens, so it is a longest common subsequence (earliest matches
    kept).
    """
    x, y = token_ids(tokenizer, source, MAX_TOKENS), token_ids(tokenizer, target, MAX_TOKENS)
    n, m = len(x), len(y)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for a in range(n - 1, -1, -1):
        for b in range(m - 1, -1, -1):
            best[a][b] = best[a + 1][b + 1] + 1 if x[a] == y[b] else max(best[a + 1][b], best[a][b + 1])
    mapper, alphas = torch.zeros(MAX_TOKENS, dtype=torch.long), torch.zeros(MAX_TOKENS)
    a = b = 0
    while a < n and b < m:
        if x[a] == y[b]:
            mapper[b], alphas[b] = a, 1.0
            a, b = a + 1, b + 1
        elif best[a][b + 1] >= best[a + 1][b]:
            b += 1  # y[b] is new in the target
        else:
            a += 1  # x[a] was dropped from the source
    mapper[m:] = torch.arange(m, MAX_TOKENS)  # padding position for position, as the official get_mapper
    alphas[m:] = 1.0
    return mapper, alphas


def equalizer(prompt, words, scales, tokenizer):
    """(77,) attention scales: `scales[k]` on the tokens of `words[k]`, 1 elsewhere (for Reweight)."""
    if isinstance(words, (str, int)):
        words, scales = [words], [scales]
    if len(words) != len(scales):
        raise ValueError(f"give one scale per word: {len(words)} words, {len(scales)} scales")
    eq = torch.ones(MAX_TOKENS)
    for w, s in zip(words, scales):
        eq[word_token_indices(prompt, w, tokenizer)] = float(s)
    return eq
