"""The CLIP tokenizer built from OpenCLIP's BPE file gives the real CLIP ids."""

import json

from minip2p import TextConfig
from minip2p.text import TOKENIZER_DIR, load_tokenizer


def test_known_ids():
    tok = load_tokenizer(TextConfig.sd1())
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A Photo of a CAT").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77


def test_vocab_layout():
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert len((TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()) == 1 + 48894
    assert (
        "MIT" in (TOKENIZER_DIR / "LICENSE").read_text()
        or "Permission is hereby granted" in (TOKENIZER_DIR / "LICENSE").read_text()
    )


def test_sd2_pads_with_exclamation_mark():
    tok = load_tokenizer(TextConfig.sd2())
    assert tok("a cat", padding="max_length", max_length=8).input_ids == [49406, 320, 2368, 49407, 0, 0, 0, 0]
