"""Loading Stable Diffusion 3 / 3.5 single files (Stability's layout): the MM-DiT under
`model.diffusion_model.`, the VAE under `first_stage_model.`, and the text encoders inside the file
(`text_encoders.clip_l/clip_g/t5xxl.transformer.`) or given apart (a folder holding `clip_l.safetensors`,
`clip_g.safetensors`, `t5xxl_fp16.safetensors`, as Stability's `text_encoders/`). No file holds a tokenizer:
the CLIPs' BPE ships with minip2p (it is SD1's), T5's comes from a folder the user names. The config is read
from the keys' shapes; every part is checked against the model built from it before any memory is taken.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast

from . import checkpoint as ckpt
from .checks import check_finite, check_whole, cut
from .config import CheckpointError
from .diffusers_folder import read_json
from .files import atomic_write, parse_json
from .mmdit import MMDiT, config_from_keys
from .sd3 import SD3Config, SD3Pipeline, T5Settings, build_t5, clip_g, clip_l
from .text import TOKENIZER_DIR, build_text_encoder, load_tokenizer
from .vae import VAE, VAEConfig

TEXT_PREFIXES = {
    "text": "text_encoders.clip_l.transformer.",
    "text_2": "text_encoders.clip_g.transformer.",
    "t5": "text_encoders.t5xxl.transformer.",
}
TEXT_FILES = {"text": "clip_l.safetensors", "text_2": "clip_g.safetensors", "t5": "t5xxl_fp16.safetensors"}
NAMES = {
    "mmdit": "MM-DiT",
    "vae": "VAE",
    "text": "CLIP-L text encoder",
    "text_2": "CLIP-G text encoder",
    "t5": "T5 text encoder",
}
# the largest sizes built from a file's shapes (SD3.5 Large fits with room to spare)
LIMITS = dict(depth=(1, 64), hidden_size=(1, 8192), patch_size=(1, 8), in_channels=(1, 64))
LIMITS.update(context_dim=(1, 16384), pooled_dim=(1, 16384), pos_embed_max_size=(1, 1024))
# what a file of ours says in its metadata (ckpt.META_KEY) because its weights cannot show it; every other
# number comes from the shapes, as for Stability's files: (part or None, field) -> (low, high); None: a float
OWN = {
    ("vae", "norm_groups"): (1, 1024),
    ("vae", "scale_factor"): None,
    ("vae", "shift_factor"): None,
    ("text", "num_heads"): (1, 256),
    (None, "shift"): None,
    (None, "image_size"): (8, 8192),
    (None, "t5_tokens"): (0, 4096),
}


def is_sd3(tensors) -> bool:
    return any(k.startswith(ckpt.UNET_PREFIX + "joint_blocks.") for k in tensors)


def strip(tensors, prefix) -> dict:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def read_parts(path, tensors, meta, text_encoders) -> dict:
    """The file's parts, prefixes stripped; text encoders the file lacks from the `text_encoders` folder."""
    vae = {k: v for k, v in strip(tensors, ckpt.VAE_PREFIX).items() if not k.startswith("loss.")}
    parts = {"mmdit": strip(tensors, ckpt.UNET_PREFIX), "vae": vae}
    parts.update({name: strip(tensors, prefix) for name, prefix in TEXT_PREFIXES.items()})
    if not vae:
        raise CheckpointError(
            f"{path} holds an SD3 MM-DiT but no VAE ({ckpt.VAE_PREFIX}...): give the whole file"
        )
    if text_encoders is not None:
        folder = Path(text_encoders)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"text_encoders={folder}: not a folder (expected clip_l.safetensors, ...)"
            )
        for name, file in TEXT_FILES.items():
            if not parts[name] and (folder / file).exists():
                parts[name] = ckpt.read_safetensors(folder / file)[0]
    if not parts["text"] or not (parts["text_2"] or ckpt.META_KEY in meta):  # ours may have one CLIP
        raise CheckpointError(
            f"{path} holds no CLIP text encoders ({TEXT_PREFIXES['text']}..., {TEXT_PREFIXES['text_2']}...): "
            "pass text_encoders=FOLDER holding clip_l.safetensors and clip_g.safetensors (and "
            "t5xxl_fp16.safetensors), Stability's text_encoders/ folder"
        )
    t5 = parts["t5"]
    if t5 and "encoder.embed_tokens.weight" not in t5 and "shared.weight" in t5:
        t5["encoder.embed_tokens.weight"] = t5["shared.weight"]  # tied: files keep one copy
    return parts


def shape_of(shapes, key, path, what):
    if key not in shapes:
        raise CheckpointError(f"{path}: the {what} lacks {key}: the file is incomplete or not SD3's")
    return shapes[key]


def count(shapes, prefix) -> int:
    """1 + the largest N of the keys `prefix.N....` (0 if none)."""
    numbers = [k[len(prefix) :].split(".")[0] for k in shapes if k.startswith(prefix)]
    return 1 + max((int(n) for n in numbers if n.isdigit()), default=-1)


def clip_config(sd, path, base, what):
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    vocab, hidden = shape_of(shapes, "text_model.embeddings.token_embedding.weight", path, what)
    base.vocab_size, base.hidden_size = vocab, hidden
    base.max_length = shape_of(shapes, "text_model.embeddings.position_embedding.weight", path, what)[0]
    base.intermediate_size = shape_of(shapes, "text_model.encoder.layers.0.mlp.fc1.weight", path, what)[0]
    base.num_layers = count(shapes, "text_model.encoder.layers.")
    base.num_heads = max(1, hidden // 64)  # 64 channels per head in CLIP-L and bigG (not in the weights)
    base.projection_dim = shape_of(shapes, "text_projection.weight", path, what)[0]
    return base


def t5_config(sd, path) -> T5Settings | None:
    if not sd:
        return None
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    what = NAMES["t5"]
    vocab, width = shape_of(shapes, "shared.weight", path, what)
    block = "encoder.block.0.layer."
    inner = shape_of(shapes, block + "0.SelfAttention.q.weight", path, what)[0]
    heads = shape_of(shapes, block + "0.SelfAttention.relative_attention_bias.weight", path, what)[1]
    d_ff = shape_of(shapes, block + "1.DenseReluDense.wi_0.weight", path, what)[0]
    layers = count(shapes, "encoder.block.")
    return T5Settings(vocab, width, inner // max(heads, 1), d_ff, layers, heads)


def vae_config(sd, path) -> VAEConfig:
    """SD3's VAE (16 channels, no quant convs) from its shapes: width, levels, blocks per level."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    ch = shape_of(shapes, "encoder.conv_in.weight", path, "VAE")[0]
    levels = count(shapes, "encoder.down.")
    mult = tuple(
        shape_of(shapes, f"encoder.down.{i}.block.0.conv2.weight", path, "VAE")[0] // ch
        for i in range(levels)
    )
    z = shape_of(shapes, "decoder.conv_in.weight", path, "VAE")[1]
    return VAEConfig(
        ch,
        mult,
        count(shapes, "encoder.down.0.block."),
        3,
        z,
        32,
        1.5305,
        0.0609,
        "quant_conv.weight" in shapes,
    )


def sd3_config(path, parts, meta=None) -> SD3Config:
    """The model's config from its parts' shapes (and, for our models, their metadata), checked: sizes in
    range, widths that fit each other."""
    shapes = {k: tuple(v.shape) for k, v in parts["mmdit"].items()}
    for key in ("x_embedder.proj.weight", "context_embedder.weight", "y_embedder.mlp.0.weight", "pos_embed"):
        shape_of(shapes, key, path, NAMES["mmdit"])
    mmdit = config_from_keys(shapes)
    for name, (low, high) in LIMITS.items():
        check_whole(getattr(mmdit, name), f"{path}: MM-DiT {name}", low, high)
    if mmdit.hidden_size % 64 or mmdit.pos_embed_max_size**2 != shapes["pos_embed"][1]:
        raise CheckpointError(
            f"{path}: an MM-DiT {mmdit.hidden_size} wide with a {shapes['pos_embed'][1]}-entry position "
            "table is not SD3's (64 channels per head, a square table)"
        )
    text = clip_config(parts["text"], path, clip_l(), NAMES["text"])
    text_2 = clip_config(parts["text_2"], path, clip_g(), NAMES["text_2"]) if parts["text_2"] else None
    t5 = t5_config(parts["t5"], path)
    if t5 is not None and not 1 <= t5.num_heads <= t5.d_model:
        raise CheckpointError(f"{path}: a T5 encoder with {t5.num_heads} heads is not T5-XXL's kind")
    cfg = SD3Config(
        "sd3.5" if mmdit.qk_norm else "sd3", mmdit, vae_config(parts["vae"], path), text, text_2, t5
    )
    cfg.image_size = min(cfg.image_size, cfg.largest)  # SD3's 1024, or all a small table covers
    if meta and ckpt.META_KEY in meta:
        apply_own(cfg, meta[ckpt.META_KEY], f"{path} ({ckpt.META_KEY} metadata)")
    if t5 is not None and t5.d_model != mmdit.context_dim:
        raise CheckpointError(
            f"{path}: the T5 encoder is {t5.d_model} wide, the MM-DiT reads a {mmdit.context_dim}-wide "
            "context: give the T5 of this model (T5-XXL: 4096)"
        )
    if sum(c.hidden_size for c in cfg.encoders) > mmdit.context_dim:
        raise CheckpointError(f"{path}: the CLIPs' widths add up to more than the MM-DiT's context")
    pooled = [c.projection_dim for c in cfg.encoders]
    if sum(pooled) != mmdit.pooled_dim:
        raise CheckpointError(
            f"{path}: the CLIPs' pooled widths ({' + '.join(map(str, pooled))}) are not the MM-DiT's pooled "
            f"input ({mmdit.pooled_dim})"
        )
    return cfg


def apply_own(cfg: SD3Config, text: str, where: str):
    """Our metadata ({"vae": {...}, "text": {...}, "shift": ..., ...}: OWN's fields) over the config read
    from the shapes, checked."""
    try:
        given = parse_json(text, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(given, dict):
        raise CheckpointError(f"{where}: not an object of settings")
    flat = {}
    for k, v in given.items():
        nested = k in ("vae", "text") and isinstance(v, dict)
        flat.update({(k, n): x for n, x in v.items()} if nested else {(None, k): v})
    for (part, name), v in flat.items():
        label = name if part is None else f"{part}.{name}"
        if (part, name) not in OWN:
            raise CheckpointError(f"{where}: unknown setting {label!r}")
        try:
            low_high = OWN[part, name]
            v = check_finite(v, label) if low_high is None else check_whole(v, label, *low_high)
        except ValueError as e:
            raise CheckpointError(f"{where}: {e}") from None
        setattr(cfg if part is None else getattr(cfg, part), name, v)
    widths = [cfg.vae.ch * m for m in cfg.vae.ch_mult]
    for name, value in (("vae.scale_factor", cfg.vae.scale_factor), ("shift", cfg.shift)):
        if value <= 0:
            raise CheckpointError(f"{where}: {name} must be > 0, not {value}")
    if any(w % cfg.vae.norm_groups for w in widths):
        groups = cfg.vae.norm_groups
        raise CheckpointError(f"{where}: vae.norm_groups {groups} must divide every width {widths}")
    if cfg.text.hidden_size % cfg.text.num_heads:
        raise CheckpointError(f"{where}: text num_heads must divide its width {cfg.text.hidden_size}")
    if cfg.image_size % cfg.size_step or cfg.image_size > cfg.largest:
        raise CheckpointError(
            f"{where}: image_size must be a multiple of {cfg.size_step} up to {cfg.largest}"
        )


def own_settings(cfg: SD3Config) -> dict:
    """The metadata `apply_own` reads back: OWN's fields of cfg."""
    out = {}
    for part, name in OWN:
        if part is None:
            out[name] = getattr(cfg, name)
        else:
            out.setdefault(part, {})[name] = getattr(getattr(cfg, part), name)
    return out


def save_sd3(path, cfg: SD3Config, mmdit, vae, text, dtype=None):
    """Write one of our SD3-family models (one CLIP, no T5) as a single file in Stability's layout, with
    what its weights cannot show in the metadata (`OWN`)."""
    out = {}
    parts = ((ckpt.UNET_PREFIX, mmdit), (ckpt.VAE_PREFIX, vae), (TEXT_PREFIXES["text"], text))
    for prefix, module in parts:
        for k, v in module.state_dict().items():
            out[prefix + k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    with atomic_write(path) as tmp:
        save_file(out, str(tmp), metadata={ckpt.META_KEY: json.dumps(own_settings(cfg))})


def load_tokenizers(cfg: SD3Config, path, tokenizers) -> dict:
    """The CLIP tokenizers (the folder's tokenizer/ and tokenizer_2/, else minip2p's BPE) and T5's
    (tokenizer_3/ of the folder, a tokenizer.json), each checked against its encoder's vocabulary."""
    folder = None if tokenizers is None else Path(tokenizers)
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"tokenizers={folder}: not a folder (expected tokenizer_3/ for T5)")
    out = {}
    for name, sub, c in zip(("text", "text_2"), ("tokenizer", "tokenizer_2"), cfg.encoders):
        own = folder / sub if folder is not None and (folder / sub).is_dir() else TOKENIZER_DIR
        out[name] = load_tokenizer(c, own)
    if cfg.t5 is not None:
        t5_dir = None if folder is None else folder / "tokenizer_3"
        if t5_dir is None or not (t5_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"{path} has a T5 encoder, and T5's tokenizer ships in no checkpoint: pass tokenizers=FOLDER "
                "holding tokenizer_3/tokenizer.json (the diffusers SD3 repository's tokenizer_3/)"
            )
        out["t5"] = t5_tokenizer(t5_dir)
    sizes = {name: c.vocab_size for name, c in zip(("text", "text_2"), cfg.encoders)}
    sizes.update({} if cfg.t5 is None else {"t5": cfg.t5.vocab_size})
    for name, size in sizes.items():
        if len(out[name]) > size:
            raise CheckpointError(
                f"{path}: the {NAMES[name]}'s tokenizer has {len(out[name])} tokens, its encoder {size}"
            )
    return out


def build(name, cfg: SD3Config):
    if name == "mmdit":
        return MMDiT(cfg.mmdit)
    if name == "vae":
        return VAE(cfg.vae)
    return build_t5(cfg.t5) if name == "t5" else build_text_encoder(getattr(cfg, name))


def load_sd3(
    path, tensors, device, dtype, vae_dtype, text_encoders=None, tokenizers=None, meta=None
) -> SD3Pipeline:
    """An SD3 / SD3.5 single file (and its text encoders) -> SD3Pipeline on device, in dtype."""
    meta = meta or {}
    parts = read_parts(path, tensors, meta, text_encoders)
    cfg = sd3_config(path, parts, meta)
    clips = ["text", "text_2"][: len(cfg.encoders)]
    names = ["mmdit", "vae", *clips] + ([] if cfg.t5 is None else ["t5"])
    with torch.device("meta"):
        for name in names:
            prefix = ckpt.UNET_PREFIX if name == "mmdit" else ckpt.VAE_PREFIX if name == "vae" else ""
            ckpt.check_state_dict(parts[name], build(name, cfg).state_dict(), path, NAMES[name], prefix)
    toks = load_tokenizers(cfg, path, tokenizers)
    models = {}
    for name in names:
        models[name] = build(name, cfg) if name.startswith(("text", "t5")) else build_meta(name, cfg)
        part_dtype = vae_dtype or dtype if name == "vae" else dtype
        models[name].load_state_dict(ckpt.cast(parts.pop(name), part_dtype), strict=True, assign=True)
    t5 = (models["t5"], toks["t5"]) if cfg.t5 is not None else (None, None)
    clip_g = (models["text_2"], toks["text_2"]) if cfg.text_2 is not None else (None, None)
    pipe = SD3Pipeline(cfg, models["mmdit"], models["vae"], models["text"], toks["text"], *clip_g, *t5)
    return pipe.place(device, dtype, vae_dtype or dtype)


def build_meta(name, cfg):
    """A model whose weights come from the file (assign=True): built on the meta device, no memory."""
    with torch.device("meta"):
        return build(name, cfg)


def t5_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """tokenizer_3/ -> T5's tokenizer; a malformed tokenizer.json is one line naming it (the tokenizers
    library's own error names no file)."""
    read_json(folder / "tokenizer.json")  # JSON, an object, not nested too deep, a regular file
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    except Exception as e:
        raise CheckpointError(f"{folder / 'tokenizer.json'}: not a readable tokenizer ({cut(e)})") from None
