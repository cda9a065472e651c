"""The CLIP tokenizer built from OpenCLIP's BPE file gives the real CLIP ids."""

import json
import shutil

import pytest

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


BAD_TOKENIZER_FILES = [  # (file, text, what the one line says)
    ("vocab.json", "{not json", "vocab.json: not JSON"),
    ("vocab.json", '["a", "b"]', "not a CLIP vocabulary"),
    ("vocab.json", '{"a": 0, "b": 50000}', "past the text encoder's 49408 tokens"),
    ("merges.txt", "#version: 0.2\na b c\n", "merges.txt line 2: a merge is two tokens"),
    ("merges.txt", None, "merges.txt is missing"),
]


@pytest.mark.parametrize("name, text, says", BAD_TOKENIZER_FILES, ids=range(len(BAD_TOKENIZER_FILES)))
def test_a_bad_tokenizer_file_is_one_line_naming_it(tmp_path, name, text, says):
    folder = tmp_path / "tok"
    shutil.copytree(TOKENIZER_DIR, folder)
    if text is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(text)
    with pytest.raises(ValueError) as e:
        load_tokenizer(TextConfig(), folder)
    message = str(e.value)
    assert says in message and len(message.splitlines()) == 1 and len(message) < 400, message
