"""Build minip2p/data/tokenizer/ (vocab.json, merges.txt, tokenizer_config.json) from OpenCLIP's BPE file.

The CLIP vocabulary is in no Stable Diffusion checkpoint. The PyPI wheel of open_clip_torch (MIT) ships
`open_clip/bpe_simple_vocab_16e6.txt.gz`; this script turns it into the files transformers' CLIPTokenizer
reads, the same way CLIP builds its vocabulary: the 256 byte symbols, the same with "</w>", each of the first
48,894 merges joined, then <|startoftext|> and <|endoftext|> (49,408 ids).

    pip download --no-deps open_clip_torch -d /tmp/oc && unzip /tmp/oc/*.whl 'open_clip/*.gz' -d /tmp/oc
    python scripts/build_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "minip2p" / "data" / "tokenizer"
N_MERGES = 49152 - 256 - 2  # 48,894, as CLIP's own tokenizer


def bytes_to_unicode():
    """CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def main(bpe_gz):
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]  # line 0 is a version header
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(
        json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (OUT / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    (OUT / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "do_lower_case": True,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz")
