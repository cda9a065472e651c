"""Reading a diffusers-format folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/; SDXL: also
text_encoder_2/ and tokenizer_2/).

diffusers renamed CompVis' modules (`down_blocks.1.resnets.0.norm1` is CompVis'
`input_blocks.4.0.in_layers.0`). Our modules keep the CompVis names, so this file holds the project's one
table for the UNet and VAE layout: `RULES`, regex rewrites from diffusers keys to CompVis keys, applied in
order.
"""

import os
import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from . import files
from .checks import short
from .config import CheckpointError, ModelConfig, check_config
from .text import TextConfig
from .unet import UNetConfig
from .vae import VAEConfig

JSON_LIMIT = 16 << 20  # bytes: configs and shard indexes are a few KB; more is not a config
MAX_LEVELS = 8  # resolution levels a config may have (SD: 4; each halves the latent)

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
        "add_embedding.linear_1": "label_emb.0.0",  # SDXL's added conditioning
        "add_embedding.linear_2": "label_emb.0.2",
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


def read_json(path, what: str = "a diffusers folder needs unet/, vae/ and text_encoder/") -> dict:
    """A config file of the folder -> its object; one line naming the file (missing, not a regular file, not
    UTF-8, not JSON, a key twice, nested too deep, not an object)."""
    if not path.exists():
        raise CheckpointError(f"{path} not found: {what}, each with config.json and a .safetensors file")
    if path.is_file() and path.stat().st_size > JSON_LIMIT:
        raise CheckpointError(f"{path} is over {JSON_LIMIT} bytes: too large for a diffusers JSON file")
    try:
        config = files.read_json(path)
    except ValueError as e:  # names the file
        raise CheckpointError(f"{e}: not a readable JSON config") from None
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no config (a JSON object)")
    return config


def flag(config: dict, name: str, default: bool, path) -> bool:
    """A boolean field, strictly ("false" is not true)."""
    value = config.get(name, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"{path}: {name} must be true or false, not {short(value)}")
    return value


def read_weights(folder):
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(folder.glob("*.bin"))
        hint = f" (found {pickles[0].name}: a pickle, which minip2p does not read)" if pickles else ""
        raise CheckpointError(f"{folder}: no .safetensors weights{hint}")
    sd = {}
    for f in [f for f in files if ".fp16." not in f.name] or files:  # full precision first; fp16 variants do
        if not f.is_file():  # a FIFO would block the read forever
            raise CheckpointError(f"{f} is not a regular file")
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{f} is not a readable .safetensors file: {e}") from None
    return sd


def read_diffusers_folder(path, prediction=None):
    """-> (ModelConfig, {part: state dict with CompVis / transformers keys}, {text part: tokenizer folder}).
    The configs are read and checked before any weights."""
    path = Path(path)
    cfg, tok_dirs, up_has_attn = folder_config(path, prediction)
    res_blocks = cfg.unet.num_res_blocks
    unet_sd = {unet_key(k, res_blocks, up_has_attn): v for k, v in read_weights(path / "unet").items()}
    vae_sd = {}
    for k, v in read_weights(path / "vae").items():
        k = vae_key(k, len(cfg.vae.ch_mult))
        vae_sd[k] = v[..., None, None] if ".mid.attn_1." in k and k.endswith("weight") and v.dim() == 2 else v
    parts = {"unet": unet_sd, "vae": vae_sd}
    for name, folder in TEXT_FOLDERS.items():
        if name == "text_2" and cfg.text_2 is None:
            continue
        sd = {k: v for k, v in read_weights(path / folder).items() if not k.endswith("position_ids")}
        # CLIPTextModel: no text_model. level in transformers 5; CLIPTextModelWithProjection keeps it
        parts[name] = sd if name == "text_2" else {k.removeprefix("text_model."): v for k, v in sd.items()}
    return cfg, parts, tok_dirs


TEXT_FOLDERS = {"text": "text_encoder", "text_2": "text_encoder_2"}


def folder_config(path: Path, prediction=None) -> tuple:
    """The folder's config.json files -> (ModelConfig, checked; {text part: tokenizer folder}; which up
    blocks have attention)."""
    if (path / "text_encoder_2").is_dir() and not (path / "text_encoder").is_dir():
        raise CheckpointError(
            f"{path} is an SDXL refiner (text_encoder_2/ alone), which minip2p does not support: load "
            "the SDXL base model"
        )
    unet_cfg, vae_cfg, text_cfg = (
        read_json(path / p / "config.json") for p in ("unet", "vae", "text_encoder")
    )
    text_2_cfg = None
    if (path / "text_encoder_2").is_dir() or unet_cfg.get("addition_embed_type") == "text_time":
        if not (path / "text_encoder_2" / "config.json").is_file():
            raise CheckpointError(
                f"{path} holds only part of an SDXL model: its UNet takes SDXL's added conditioning, but "
                "there is no text_encoder_2/config.json"
            )
        text_2_cfg = read_json(path / "text_encoder_2" / "config.json")
    try:
        cfg, tok_dirs = configs(path, unet_cfg, vae_cfg, text_cfg, prediction, text_2_cfg)
        up_has_attn = ["CrossAttn" in t for t in unet_cfg["up_block_types"]]
    except CheckpointError:
        raise  # names its file already
    except KeyError as e:
        raise CheckpointError(f"{path}: a config.json lacks the field {e}") from None
    except (TypeError, ValueError, ZeroDivisionError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: a config.json holds a value minip2p cannot use ({e})") from None
    return check_config(cfg, path), tok_dirs, up_has_attn


def tokenizer_folder(folder: Path) -> tuple:
    """A tokenizer folder -> (the folder or None when it holds no tokenizer, its pad token or None)."""
    if not any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json")):
        return None, None
    pad = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            p = read_json(folder / name).get("pad_token") or pad
            pad = p["content"] if isinstance(p, dict) else p
    return folder, pad


def text_config(text_cfg: dict, pad: str) -> TextConfig:
    return TextConfig(
        hidden_size=text_cfg["hidden_size"],
        intermediate_size=text_cfg["intermediate_size"],
        num_layers=text_cfg["num_hidden_layers"],
        num_heads=text_cfg["num_attention_heads"],
        hidden_act=text_cfg["hidden_act"],
        vocab_size=text_cfg["vocab_size"],
        max_length=text_cfg["max_position_embeddings"],
        pad_token=pad,
    )


def unet_config(unet_cfg) -> UNetConfig:
    """diffusers' unet/config.json -> our UNetConfig (SDXL's added conditioning set by `configs`)."""
    widths, res_blocks = unet_cfg["block_out_channels"], unet_cfg["layers_per_block"]
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
    unet.num_heads, unet.head_dim = head_layout(unet_cfg, widths)
    return unet


def head_layout(unet_cfg: dict, widths: list) -> tuple:
    """(num_heads, head_dim) as diffusers reads them: heads per level (SD1/SD2 name them
    `attention_head_dim`), looked at only where a level has attention; our UNet takes one head count or one
    width per head, so levels that differ otherwise are refused, as is a count that does not divide a
    width."""
    heads = unet_cfg.get("num_attention_heads") or unet_cfg["attention_head_dim"]
    attn = [i for i, t in enumerate(unet_cfg["down_block_types"]) if "CrossAttn" in t] or [0]
    per_level = heads if isinstance(heads, list) else [heads] * len(widths)
    if len(per_level) != len(widths) or not all(type(h) is int and h > 0 for h in per_level):
        raise CheckpointError(f"unet/config.json: heads {short(heads)} must be a positive count per level")
    if any(widths[i] % per_level[i] for i in attn):
        raise CheckpointError(f"unet/config.json: heads {short(heads)} do not divide the widths {widths}")
    if not isinstance(heads, list):
        return heads, None
    dims = {widths[i] // per_level[i] for i in attn}
    if len(dims) > 1:
        raise CheckpointError(
            f"unet/config.json: heads {short(heads)} give levels of different widths per head"
        )
    return 8, dims.pop()


def vae_config(vae_cfg) -> VAEConfig:
    """diffusers' vae/config.json -> our VAEConfig."""
    vae_widths = vae_cfg["block_out_channels"]
    return VAEConfig(
        ch=vae_widths[0],
        ch_mult=tuple(c // vae_widths[0] for c in vae_widths),
        num_res_blocks=vae_cfg["layers_per_block"],
        z_channels=vae_cfg["latent_channels"],
        norm_groups=vae_cfg.get("norm_num_groups", 32),
        scale_factor=vae_cfg.get("scaling_factor", 0.18215),
    )


def check_levels(unet_cfg: dict, vae_cfg: dict):
    """List fields bounded before anything is computed from them (2**i per level of a 2x10^5-level config)."""
    for name, cfg, fields in (
        ("unet", unet_cfg, ("block_out_channels", "down_block_types", "up_block_types")),
        ("vae", vae_cfg, ("block_out_channels",)),
    ):
        for field in fields:
            value = cfg.get(field)
            if not (isinstance(value, list) and 1 <= len(value) <= MAX_LEVELS):
                raise CheckpointError(
                    f"{name}/config.json: {field} must be a list of 1 to {MAX_LEVELS} levels, not "
                    f"{short(value)}"
                )
        if len({len(cfg[f]) for f in fields}) > 1:
            raise CheckpointError(
                f"{name}/config.json: {', '.join(fields)} must have one entry per level each"
            )


def configs(path, unet_cfg, vae_cfg, text_cfg, prediction, text_2_cfg=None) -> tuple:
    """The folder's configs -> (ModelConfig, {text part: tokenizer folder})."""
    widths = unet_cfg["block_out_channels"]
    check_levels(unet_cfg, vae_cfg)
    if not widths or min(widths) <= 0 or min(vae_cfg["block_out_channels"] or [0]) <= 0:
        raise ValueError("block_out_channels must be positive widths")
    unet, vae = unet_config(unet_cfg), vae_config(vae_cfg)
    tok_dir, pad = tokenizer_folder(path / "tokenizer")
    text = text_config(text_cfg, pad or "<|endoftext|>")  # SD1's pad; SD2's folders say "!"
    tok_dirs, text_2, sdxl = {"text": tok_dir}, None, text_2_cfg is not None
    if sdxl:  # both encoders read at the penultimate layer, without the final norm; the 2nd pads with "!"
        tok_dirs["text_2"], pad_2 = tokenizer_folder(path / "tokenizer_2")
        text_2 = text_config(text_2_cfg, pad_2 or "!")
        text_2.projection_dim = text_2_cfg["projection_dim"]
        for t in (text, text_2):
            t.penultimate, t.final_norm = True, False
        unet.adm_in_channels = unet_cfg["projection_class_embeddings_input_dim"]
        vae.upcast = flag(vae_cfg, "force_upcast", True, path / "vae" / "config.json")
    sched = path / "scheduler" / "scheduler_config.json"
    pred = read_json(sched).get("prediction_type", "epsilon") if os.path.lexists(sched) else "epsilon"
    family = (
        "sdxl"
        if sdxl
        else "sd2"
        if unet.use_linear_proj and unet.context_dim == 1024
        else "sd1"
        if unet.context_dim == 768
        else "custom"
    )
    index = path / "model_index.json"
    zeros = (
        flag(read_json(index), "force_zeros_for_empty_prompt", True, index)
        if os.path.lexists(index)
        else True
    )
    cfg = ModelConfig(
        family,
        unet,
        vae,
        text,
        prediction or {"v_prediction": "v"}.get(pred, pred),
        unet_cfg.get("sample_size", 64) * vae.pixels_per_cell,
        text_2,
        sdxl and bool(zeros),
    )
    return cfg, tok_dirs
