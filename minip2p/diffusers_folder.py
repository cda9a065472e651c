"""Reading a diffusers-format folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/).

diffusers renamed CompVis' modules (`down_blocks.1.resnets.0.norm1` is CompVis'
`input_blocks.4.0.in_layers.0`). Our modules keep the CompVis names, so this file holds the project's one
table for the UNet and VAE layout: `RULES`, regex rewrites from diffusers keys to CompVis keys, applied in
order.
"""

import json
import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import CheckpointError, ModelConfig, check_config
from .text import TextConfig
from .unet import UNetConfig
from .vae import VAEConfig

# Inside a ResBlock (UNet) / ResnetBlock (VAE).
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}  # second row: old diffusers names


def unet_key(k, res_blocks, up_has_attn):
    """diffusers UNet2DConditionModel key -> CompVis key (res_blocks: diffusers' layers_per_block)."""
    fixed = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for a, b in fixed.items():
        if k.startswith(a + "."):
            return b + k[len(a) :]
    m = re.match(
        r"(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)",
        k,
    )
    if not m:
        return k  # reported as unexpected by the key check
    part, i, kind, j, rest = m.group(1), int(m.group(2) or 0), m.group(3), int(m.group(4)), m.group(5)
    if kind == "resnets":
        name, _, tail = rest.partition(".")
        rest = UNET_RESNET.get(name, name) + "." + tail
    if part == "down_blocks":
        block = {
            "resnets": f"input_blocks.{1 + i * (res_blocks + 1) + j}.0",
            "attentions": f"input_blocks.{1 + i * (res_blocks + 1) + j}.1",
            "downsamplers": f"input_blocks.{(i + 1) * (res_blocks + 1)}.0",
        }[kind]
        rest = rest.replace("conv.", "op.", 1) if kind == "downsamplers" else rest
    elif part == "mid_block":
        block = f"middle_block.{2 * j if kind == 'resnets' else 1}"
    else:
        n = i * (res_blocks + 1)
        block = {
            "resnets": f"output_blocks.{n + j}.0",
            "attentions": f"output_blocks.{n + j}.1",
            "upsamplers": f"output_blocks.{n + res_blocks}.{2 if up_has_attn[i] else 1}",
        }[kind]
    return f"{block}.{rest}"


def vae_key(k, levels):
    """diffusers AutoencoderKL key -> CompVis key; levels = len(block_out_channels)."""
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(
        r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", k
    )
    k = re.sub(
        r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
        lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.",
        k,
    )
    k = k.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
    k = k.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", k)
    if m:
        k = f"{m[1]}.mid.attn_1.{VAE_ATTN.get(m[2], m[2])}.{m[3]}"
    return k


def read_json(path) -> dict:
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: a diffusers folder needs unet/, vae/ and text_encoder/, "
            f"each with config.json and a .safetensors file"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no config (a JSON object)")
    return config


def read_weights(folder):
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(folder.glob("*.bin"))
        hint = f" (found {pickles[0].name}: a pickle, which minip2p does not read)" if pickles else ""
        raise CheckpointError(f"{folder}: no .safetensors weights{hint}")
    sd = {}
    for f in [f for f in files if ".fp16." not in f.name] or files:  # full precision first; fp16 variants do
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{f} is not a readable .safetensors file: {e}") from None
    return sd


def read_diffusers_folder(path, prediction=None):
    """-> (ModelConfig, (unet, vae, text) state dicts with CompVis / transformers keys, tokenizer folder or
    None). The configs are read and checked before any weights."""
    path = Path(path)
    cfg, tok_dir, up_has_attn = folder_config(path, prediction)
    res_blocks = cfg.unet.num_res_blocks
    unet_sd = {unet_key(k, res_blocks, up_has_attn): v for k, v in read_weights(path / "unet").items()}
    vae_sd = {}
    for k, v in read_weights(path / "vae").items():
        k = vae_key(k, len(cfg.vae.ch_mult))
        vae_sd[k] = v[..., None, None] if ".mid.attn_1." in k and k.endswith("weight") and v.dim() == 2 else v
    text_sd = {
        k.removeprefix("text_model."): v
        for k, v in read_weights(path / "text_encoder").items()
        if not k.endswith("position_ids")
    }
    return cfg, (unet_sd, vae_sd, text_sd), tok_dir


def folder_config(path: Path, prediction=None) -> tuple:
    """The folder's config.json files -> (ModelConfig, checked; tokenizer folder or None; which up blocks
    have attention)."""
    unet_cfg, vae_cfg, text_cfg = (
        read_json(path / p / "config.json") for p in ("unet", "vae", "text_encoder")
    )
    try:
        cfg, tok_dir = configs(path, unet_cfg, vae_cfg, text_cfg, prediction)
        up_has_attn = ["CrossAttn" in t for t in unet_cfg["up_block_types"]]
    except KeyError as e:
        raise CheckpointError(f"{path}: a config.json lacks the field {e}") from None
    except (TypeError, ValueError, ZeroDivisionError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: a config.json holds a value minip2p cannot use ({e})") from None
    return check_config(cfg, path), tok_dir, up_has_attn


def configs(path, unet_cfg, vae_cfg, text_cfg, prediction) -> tuple:
    widths, res_blocks = unet_cfg["block_out_channels"], unet_cfg["layers_per_block"]
    if not widths or min(widths) <= 0 or min(vae_cfg["block_out_channels"] or [0]) <= 0:
        raise ValueError("block_out_channels must be positive widths")
    heads = unet_cfg.get("num_attention_heads") or unet_cfg["attention_head_dim"]
    depth = unet_cfg.get("transformer_layers_per_block", 1)
    unet = UNetConfig(
        in_channels=unet_cfg["in_channels"],
        out_channels=unet_cfg["out_channels"],
        model_channels=widths[0],
        channel_mult=tuple(c // widths[0] for c in widths),
        num_res_blocks=res_blocks,
        attention_resolutions=tuple(
            2**i for i, t in enumerate(unet_cfg["down_block_types"]) if "CrossAttn" in t
        ),
        context_dim=unet_cfg["cross_attention_dim"],
        use_linear_proj=unet_cfg.get("use_linear_projection", False),
        transformer_depth=tuple(depth) if isinstance(depth, list) else depth,
        norm_groups=unet_cfg.get("norm_num_groups", 32),
    )
    if isinstance(heads, list):
        unet.head_dim = widths[0] // heads[0]
    else:
        unet.num_heads = heads
    vae_widths = vae_cfg["block_out_channels"]
    vae = VAEConfig(
        ch=vae_widths[0],
        ch_mult=tuple(c // vae_widths[0] for c in vae_widths),
        num_res_blocks=vae_cfg["layers_per_block"],
        z_channels=vae_cfg["latent_channels"],
        norm_groups=vae_cfg.get("norm_num_groups", 32),
        scale_factor=vae_cfg.get("scaling_factor", 0.18215),
    )
    tok_dir = path / "tokenizer"
    tok_dir = tok_dir if any((tok_dir / f).is_file() for f in ("vocab.json", "tokenizer.json")) else None
    pad = "<|endoftext|>"  # SD1's; SD2's folders say "!" in their tokenizer files
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if tok_dir and (tok_dir / name).is_file():
            p = json.loads((tok_dir / name).read_text()).get("pad_token") or pad
            pad = p["content"] if isinstance(p, dict) else p
    text = TextConfig(
        hidden_size=text_cfg["hidden_size"],
        intermediate_size=text_cfg["intermediate_size"],
        num_layers=text_cfg["num_hidden_layers"],
        num_heads=text_cfg["num_attention_heads"],
        hidden_act=text_cfg["hidden_act"],
        vocab_size=text_cfg["vocab_size"],
        max_length=text_cfg["max_position_embeddings"],
        pad_token=pad,
    )
    sched = path / "scheduler" / "scheduler_config.json"
    pred = json.loads(sched.read_text()).get("prediction_type", "epsilon") if sched.is_file() else "epsilon"
    family = (
        "sd2"
        if unet.use_linear_proj and unet.context_dim == 1024
        else "sd1"
        if unet.context_dim == 768
        else "custom"
    )
    cfg = ModelConfig(
        family,
        unet,
        vae,
        text,
        prediction or {"v_prediction": "v"}.get(pred, pred),
        unet_cfg.get("sample_size", 64) * vae.factor,
    )
    return cfg, tok_dir
