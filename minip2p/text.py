"""Text side: transformers' CLIP text models and CLIPTokenizer, set up for SD1, SD2, SDXL or a small model.

SD1 uses OpenAI's CLIP ViT-L/14 text tower (last hidden state). SD2 uses OpenCLIP ViT-H's text tower, which
has the same architecture with GELU: we load it into a CLIPTextModel (see `checkpoint.openclip_to_clip`) and
take the penultimate layer's output through `final_layer_norm`, as SD2 does. SDXL has both kinds: CLIP ViT-L
and OpenCLIP ViT-bigG, each read at its penultimate layer WITHOUT the final norm, side by side; bigG (a
CLIPTextModelWithProjection) also gives the pooled embedding: its normed end token through text_projection.
"""

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .checks import cut, short
from .files import read_json, read_text

# the CLIP BPE vocabulary of SD1 and SD2 (package data: in the wheel too)
TOKENIZER_DIR = files("minip2p") / "data" / "tokenizer"


@dataclass
class TextConfig:
    hidden_size: int = 768  # width of the hidden states the UNet attends to
    intermediate_size: int = 3072  # MLP width
    num_layers: int = 12  # transformer layers
    num_heads: int = 12  # attention heads
    hidden_act: str = "quick_gelu"  # OpenAI CLIP: quick_gelu; OpenCLIP (SD2): gelu
    vocab_size: int = 49408  # the CLIP BPE vocabulary
    max_length: int = 77  # tokens per prompt, start and end included
    penultimate: bool = False  # SD2, SDXL: use the second-to-last layer's output
    final_norm: bool = True  # with penultimate: SD2 puts it through final_layer_norm, SDXL does not
    pad_token: str = "<|endoftext|>"  # SD1 pads with end-of-text; OpenCLIP (SD2, SDXL's 2nd) with "!" (id 0)
    projection_dim: int | None = None  # SDXL's 2nd encoder: width of the pooled embedding; None: no pooling

    @classmethod
    def sd1(cls):
        return cls()

    @classmethod
    def sd2(cls):
        return cls(
            hidden_size=1024,
            intermediate_size=4096,
            num_layers=24,
            num_heads=16,
            hidden_act="gelu",
            penultimate=True,
            pad_token="!",
        )

    @classmethod
    def sdxl(cls):
        """SDXL's first encoder: SD1's CLIP ViT-L, read at the penultimate layer."""
        return cls(penultimate=True, final_norm=False)

    @classmethod
    def sdxl_2(cls):
        """SDXL's second encoder: OpenCLIP ViT-bigG, penultimate layer, and the pooled embedding."""
        return cls(
            hidden_size=1280,
            intermediate_size=5120,
            num_layers=32,
            num_heads=20,
            hidden_act="gelu",
            penultimate=True,
            final_norm=False,
            pad_token="!",
            projection_dim=1280,
        )


def build_text_encoder(cfg: TextConfig) -> CLIPTextModel | CLIPTextModelWithProjection:
    model = CLIPTextModel if cfg.projection_dim is None else CLIPTextModelWithProjection
    return model(
        CLIPTextConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            hidden_act=cfg.hidden_act,
            max_position_embeddings=cfg.max_length,
            layer_norm_eps=1e-5,
            projection_dim=cfg.projection_dim or 512,
        )
    )


def load_tokenizer(cfg: TextConfig, path=TOKENIZER_DIR) -> CLIPTokenizer:
    path = Path(path)
    if not any((path / f).is_file() for f in ("vocab.json", "tokenizer.json")):
        raise FileNotFoundError(
            f"no CLIP tokenizer at {path} (expected vocab.json and merges.txt): "
            f"build it with `python scripts/build_tokenizer.py`"
        )
    if (path / "vocab.json").exists():
        check_bpe_files(path, cfg.vocab_size)
    try:
        return CLIPTokenizer.from_pretrained(
            str(path), pad_token=cfg.pad_token, model_max_length=cfg.max_length
        )
    except Exception as e:  # transformers raises bare Exceptions on malformed files
        raise ValueError(f"{path}: not a readable CLIP tokenizer ({cut(e)})") from None


def check_bpe_files(path: Path, vocab_size: int):
    """vocab.json (token -> id, every id one the text encoder has) and merges.txt (a version line, then two
    tokens a line), checked in one line naming the file: a bad file would fail deep in transformers, or
    after loading, at an id past the encoder's embedding table."""
    vocab_path, merges_path = path / "vocab.json", path / "merges.txt"
    vocab = read_json(vocab_path)
    ids = list(vocab.values()) if isinstance(vocab, dict) else None
    if not ids or not all(type(i) is int for i in ids):
        raise ValueError(f"{vocab_path}: not a CLIP vocabulary (a JSON object of token: id)")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"{vocab_path}: ids reach {max(ids)}, past the text encoder's {vocab_size} tokens")
    if not merges_path.exists():
        raise ValueError(f"{merges_path} is missing: a CLIP tokenizer needs vocab.json and merges.txt")
    for n, line in enumerate(read_text(merges_path).split("\n")[1:], start=2):
        if line.strip() and len(line.split()) != 2:
            raise ValueError(f"{merges_path} line {n}: a merge is two tokens, not {short(line)}")


def tokenize(tokenizer, prompts, max_length: int = 77) -> torch.Tensor:
    """Prompts -> (B, max_length) ids, padded (checked at the edges; only SD3's CLIPs are cut at 77, as
    diffusers does, where T5 reads the whole prompt)."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True).input_ids
    return torch.tensor(ids)


@torch.no_grad()
def encode_text(text_encoder, ids, cfg: TextConfig) -> tuple:
    """(B, 77) ids -> ((B, 77, D) hidden states the UNet's cross-attention reads, (B, P) pooled embedding or
    None)."""
    out = text_encoder(ids, output_hidden_states=cfg.penultimate)
    pooled = out.text_embeds if cfg.projection_dim is not None else None
    if not cfg.penultimate:
        return out.last_hidden_state, pooled
    hidden = out.hidden_states[-2]
    if cfg.final_norm:
        hidden = text_encoder.final_layer_norm(hidden)
    return hidden, pooled
