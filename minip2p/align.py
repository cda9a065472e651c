"""Aligning prompts token by token: which tokens of the source a target token takes its attention from.

Prompt-to-Prompt works on token positions (77 per prompt), users think in words. Every function here goes from
words to positions with the real CLIP tokenizer, so multi-token words ("bicycle" is one token, "lamborghini"
several) and punctuation ("cat," is "cat" + ",") are handled as the text encoder sees them.
"""

import torch

from .checks import clean

MAX_TOKENS = 77


def token_ids(tokenizer, prompt: str) -> list:
    """A prompt -> its token ids, start and end included (checked at the edges: at most 77)."""
    return tokenizer(prompt, verbose=False).input_ids


def words_and_tokens(prompt, tokenizer):
    """-> (words, [token positions of each word]); position 0 is the start token."""
    total = len(token_ids(tokenizer, prompt))
    words = prompt.split()
    positions, pos = [], 1
    for w in words:
        n = len(tokenizer(w, add_special_tokens=False).input_ids)
        positions.append(list(range(pos, pos + n)))
        pos += n
    assert pos + 1 == total, (prompt, pos + 1, total)  # CLIP's pre-tokenizer never joins across spaces
    return words, positions


def word_token_indices(prompt, word, tokenizer):
    """Token positions of `word` in `prompt` (every occurrence). `word` is a string (case and trailing
    punctuation ignored: "Cat," finds "cat") or the index of a word in prompt.split() (`checks.check_words`
    has made sure it is there)."""
    words, positions = words_and_tokens(prompt, tokenizer)
    found = [word] if isinstance(word, int) else [i for i, w in enumerate(words) if clean(w) == clean(word)]
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
    x, y = token_ids(tokenizer, source), token_ids(tokenizer, target)
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
    eq = torch.ones(MAX_TOKENS)
    for w, s in zip(words, scales):
        eq[word_token_indices(prompt, w, tokenizer)] = float(s)
    return eq
