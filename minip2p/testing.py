"""Random checkpoints in the real Stable Diffusion layouts, for parity tests and benchmarks.

We cannot download real weights, so correctness is shown on random ones: a file written here has the keys and
shapes of a real SD1, SD2 or SDXL single-file checkpoint; `minip2p.load` reads it, and diffusers reads the
same file through its own converters (given `ldm_config`, the original LDM config they expect). Nothing here
imports diffusers.
"""

from dataclasses import replace

import torch
from safetensors.torch import save_file

from .checkpoint import (
    CLIP_PREFIX,
    META_KEY,
    OPENCLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from .config import SDXL_SIZE_DIM, SDXL_SIZES, ModelConfig
from .text import TextConfig, build_text_encoder
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig

# parameters read as norms: random values near 1 (weights) or 0 (biases), so that no term can hide
NORM_ENDINGS = (
    "in_layers.0.weight",
    "out_layers.0.weight",
    "out.0.weight",
    "in_layers.0.bias",
    "out_layers.0.bias",
    "out.0.bias",
)


def small_config(family: str = "sd1") -> ModelConfig:
    """SD1-, SD2- or SDXL-shaped, but narrow: every code path of the full model at a fraction of the cost."""
    text = TextConfig(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4)
    if family == "sdxl":
        cfg = ModelConfig.sdxl()
        text.penultimate, text.final_norm = True, False
        narrow = dict(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2, projection_dim=16)
        text_2 = replace(TextConfig.sdxl_2(), **narrow)
        cfg.unet.model_channels, cfg.unet.head_dim, cfg.unet.context_dim = 32, 8, 64 + 32
        cfg.unet.transformer_depth = (1, 1, 2)
        cfg.unet.adm_in_channels = text_2.projection_dim + SDXL_SIZES * SDXL_SIZE_DIM
        cfg.vae.ch, cfg.text, cfg.text_2, cfg.image_size = 32, text, text_2, 128
        return cfg
    if family == "sd1":
        unet = UNetConfig(model_channels=32, num_heads=4, context_dim=64)
    else:
        unet = UNetConfig(model_channels=32, head_dim=8, context_dim=64, use_linear_proj=True)
        text.hidden_act, text.penultimate, text.pad_token = "gelu", True, "!"
    return ModelConfig(family, unet, VAEConfig(ch=32), text, image_size=64)


def random_state(model: torch.nn.Module, seed: int) -> dict:
    """Random values for every entry of a model's state dict (works on a meta-device model): norms near 1,
    biases non-zero, weights scaled by fan-in, so that activations stay sane through many layers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        r = torch.randn(t.shape, generator=g)
        if t.dim() == 1 and ("norm" in name or name.endswith(NORM_ENDINGS)):
            out[name] = (1.0 + 0.1 * r) if name.endswith("weight") else 0.1 * r
        elif t.dim() == 1:
            out[name] = 0.05 * r
        else:
            out[name] = r / t[0].numel() ** 0.5
    return out


def clip_to_openclip(sd: dict) -> dict:
    """transformers CLIPTextModel (or WithProjection) keys -> OpenCLIP keys (the inverse of
    checkpoint.openclip_to_clip), to write SD2- and SDXL-layout files."""
    projection = sd.get("text_projection.weight")
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    width = sd["final_layer_norm.weight"].shape[0]
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": torch.eye(width) if projection is None else projection.T.contiguous(),
        "logit_scale": torch.tensor(4.6),
    }
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for n in layers:
        ours, theirs = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{ours}self_attn.{q}_proj.{kind}"] for q in "qkv"]
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(qkv)
            for a, b in names.items():
                out[f"{theirs}{b}.{kind}"] = sd[f"{ours}{a}.{kind}"]
    return out


def random_checkpoint(cfg: ModelConfig, seed: int = 0) -> dict:
    """A whole single-file state dict in the CompVis layout, with random weights."""
    with torch.device("meta"):
        unet, vae = UNet(cfg.unet), VAE(cfg.vae)
        encoders = [build_text_encoder(c) for c in cfg.encoders]
    texts = [random_state(e, seed + 2 + i) for i, e in enumerate(encoders)]
    sd = {UNET_PREFIX + k: v for k, v in random_state(unet, seed).items()}
    sd.update({VAE_PREFIX + k: v for k, v in random_state(vae, seed + 1).items()})
    if cfg.family == "sdxl":
        sd.update({SDXL_CLIP_PREFIX + k: v for k, v in texts[0].items()})
        sd.update({SDXL_OPENCLIP_PREFIX + k: v for k, v in clip_to_openclip(texts[1]).items()})
    elif cfg.family == "sd2":
        sd.update({OPENCLIP_PREFIX + k: v for k, v in clip_to_openclip(texts[0]).items()})
    else:
        sd.update({CLIP_PREFIX + k: v for k, v in texts[0].items()})
    return {k: v.contiguous() for k, v in sd.items()}


def write_checkpoint(path, cfg: ModelConfig, seed: int = 0, with_config: bool = True, extra=None) -> dict:
    """Save a random checkpoint -> its state dict. with_config=False writes it as real SD files are (no
    `__metadata__`: the family is read from the keys and shapes)."""
    sd = random_checkpoint(cfg, seed)
    sd.update(extra or {})
    save_file(sd, str(path), metadata={META_KEY: cfg.to_json()} if with_config else None)
    return sd


def ldm_config(cfg: ModelConfig) -> dict:
    """The original LDM config (the YAML's content) that diffusers' single-file converters read."""
    u, v = cfg.unet, cfg.vae
    unet = dict(
        in_channels=u.in_channels,
        out_channels=u.out_channels,
        model_channels=u.model_channels,
        attention_resolutions=list(u.attention_resolutions),
        num_res_blocks=u.num_res_blocks,
        channel_mult=list(u.channel_mult),
        transformer_depth=list(u.transformer_depth)
        if isinstance(u.transformer_depth, tuple)
        else u.transformer_depth,
        context_dim=u.context_dim,
        use_linear_in_transformer=u.use_linear_proj,
    )
    if u.adm_in_channels:
        unet.update(num_classes="sequential", adm_in_channels=u.adm_in_channels)
    if u.head_dim:
        unet["num_head_channels"] = u.head_dim
    else:
        unet["num_heads"] = u.num_heads
    ddconfig = dict(
        ch=v.ch,
        ch_mult=list(v.ch_mult),
        num_res_blocks=v.num_res_blocks,
        in_channels=3,
        out_ch=3,
        z_channels=v.z_channels,
        double_z=True,
        attn_resolutions=[],
        resolution=256,
    )
    first_stage = {"params": {"ddconfig": ddconfig, "embed_dim": v.z_channels}}
    params = {
        "scale_factor": v.scale_factor,
        "unet_config": {"params": unet},
        "first_stage_config": first_stage,
    }
    return {"model": {"params": params}}


def small_sd3_config(family: str = "sd3.5", t5: bool = True):
    """An SD3- or SD3.5-shaped config, narrow: 4 joint blocks of 2 heads (64 channels each), SD3.5 with q/k
    norms and dual attention in its first two blocks; CLIPs of 64 channels (one head: the loader reads 64
    per head), a context 160 wide (the CLIPs' 128, zero-padded), a small T5; 128x128 images."""
    from .mmdit import MMDiTConfig
    from .sd3 import SD3Config, T5Settings, clip_g, clip_l

    sd35 = family == "sd3.5"
    mmdit = MMDiTConfig(4, 128, 2, 2, 16, 160, 64, 16, sd35, (0, 1) if sd35 else ())
    narrow = dict(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=1, projection_dim=32)
    t5_cfg = (
        T5Settings(vocab_size=200, d_model=160, d_kv=32, d_ff=96, num_layers=2, num_heads=2) if t5 else None
    )
    vae = VAEConfig(ch=32, z_channels=16, scale_factor=1.5305, shift_factor=0.0609, quant_conv=False)
    return SD3Config(
        family,
        mmdit,
        vae,
        replace(clip_l(), **narrow),
        replace(clip_g(), **narrow),
        t5_cfg,
        image_size=128,
    )


def random_sd3_checkpoint(cfg, seed: int = 0, text_inside: bool = True) -> dict:
    """An SD3 single file's state dict with random weights: the MM-DiT, the VAE and (text_inside) the text
    encoders under Stability's prefixes; else the text encoders alone are returned under "text_encoders/"
    file names (clip_l.safetensors, ...), as Stability ships them apart."""
    from .mmdit import MMDiT
    from .sd3 import build_t5
    from .sd3_loading import TEXT_FILES, TEXT_PREFIXES

    with torch.device("meta"):
        models = {"mmdit": MMDiT(cfg.mmdit), "vae": VAE(cfg.vae)}
        models.update(text=build_text_encoder(cfg.text), text_2=build_text_encoder(cfg.text_2))
        if cfg.t5 is not None:
            models["t5"] = build_t5(cfg.t5)
    states = {name: random_state(m, seed + i) for i, (name, m) in enumerate(models.items())}
    if "t5" in states:
        states["t5"].pop("encoder.embed_tokens.weight")  # tied to shared.weight: files keep one
    sd = {UNET_PREFIX + k: v for k, v in states.pop("mmdit").items()}
    sd.update({VAE_PREFIX + k: v for k, v in states.pop("vae").items()})
    if not text_inside:
        return {"model": sd, **{TEXT_FILES[n]: s for n, s in states.items()}}
    for name, state in states.items():
        sd.update({TEXT_PREFIXES[name] + k: v for k, v in state.items()})
    return {k: v.contiguous() for k, v in sd.items()}


def write_t5_tokenizer(folder, words) -> None:
    """A tiny T5-style tokenizer (word level: <pad> 0, </s> 1, <unk> 2, then `words`), appending </s> as T5's
    does, saved as `folder/tokenizer.json` (+ its config) the way a T5 tokenizer folder holds it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
