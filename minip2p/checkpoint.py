"""Reading weights from disk: CompVis single-file .safetensors (SD1, SD2, our own models) and diffusers
folders.

The SD1/SD2 UNet and VAE need no key table (our module paths are the CompVis keys). The only tables are
`openclip_to_clip` (SD2's text tower) and, in `diffusers_folder.py`, the diffusers folder layout.
Every problem with a file is reported before any model is built, naming the file and the keys.
"""

import json
import math
import shlex
from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checks import whole
from .files import atomic_write
from .text import TextConfig
from .unet import UNetConfig
from .vae import VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."  # SD1 (and our models): transformers' CLIP names
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD2: OpenCLIP's names
IGNORED_TEXT_KEYS = ("embeddings.position_ids",)  # a buffer some files hold, some do not
IGNORED_OPENCLIP_KEYS = ("text_projection", "logit_scale", "attn_mask")  # not used for SD2 conditioning
META_KEY = "minip2p_config"
BUNDLED_MODEL = files("minip2p") / "data" / "shapes.safetensors"  # package data: in the wheel too


@dataclass
class ModelConfig:
    family: str = "sd1"  # "sd1", "sd2" or "custom" (our own small models)
    unet: UNetConfig = field(default_factory=UNetConfig.sd1)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig.sd1)
    prediction: str = "epsilon"  # "epsilon" or "v" (not visible in the weights)
    image_size: int = 512  # default height and width of generated images

    @classmethod
    def sd1(cls):
        return cls()

    @classmethod
    def sd2(cls, prediction="epsilon"):
        return cls(
            "sd2",
            UNetConfig.sd2(),
            VAEConfig(),
            TextConfig.sd2(),
            prediction,
            768 if prediction == "v" else 512,
        )

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str, where="the config") -> "ModelConfig":
        """A config written by to_json -> ModelConfig, checked (see check_config); one line for any fault."""
        try:
            d = json.loads(s)
            parts = {}
            for name, part in PARTS.items():
                given = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop(name).items()}
                unknown = set(given) - {f.name for f in fields(part)}
                if unknown:
                    raise ValueError(f"unknown {name} fields {sorted(unknown)}")
                parts[name] = part(**given)
            cfg = cls(**d, **parts)
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{where} is not a minip2p model config ({type(e).__name__}: {e})"
            ) from None
        return check_config(cfg, where)


PARTS = {"unet": UNetConfig, "vae": VAEConfig, "text": TextConfig}
# every size a config may give, (low, high): the largest real models (SDXL, OpenCLIP bigG) fit with room to
# spare, and nothing larger is built, so that a file's metadata cannot make us allocate what no model needs
LIMITS = {
    "unet": dict(
        in_channels=(1, 64),
        out_channels=(1, 64),
        model_channels=(1, 4096),
        num_res_blocks=(1, 16),
        num_heads=(1, 256),
        head_dim=(1, 1024),
        context_dim=(1, 16384),
        transformer_depth=(1, 64),
        norm_groups=(1, 1024),
        adm_in_channels=(1, 16384),
    ),
    "vae": dict(
        ch=(1, 2048), num_res_blocks=(1, 16), in_channels=(1, 16), z_channels=(1, 256), norm_groups=(1, 1024)
    ),
    "text": dict(
        hidden_size=(1, 16384),
        intermediate_size=(1, 65536),
        num_layers=(1, 128),
        num_heads=(1, 256),
        vocab_size=(1, 1_000_000),
        max_length=(2, 1024),
    ),
}
MULTIPLIERS = (1, 64)  # channel_mult / ch_mult entries
MAX_LEVELS = 8


def check_config(cfg: ModelConfig, where) -> ModelConfig:
    """Every number of a config in its range and consistent with the others, before anything is built: a
    config is read from a file, and a file may lie."""

    def fail(what):
        raise CheckpointError(f"{where}: {what}")

    for part, limits in LIMITS.items():
        sub = getattr(cfg, part)
        for name, (low, high) in limits.items():
            value = getattr(sub, name)
            if part == "unet" and name == "head_dim" and value in (None, 0):
                continue  # num_heads heads (0: configs written before None meant it)
            if part == "unet" and name == "transformer_depth" and isinstance(value, tuple):
                if not isinstance(sub.channel_mult, tuple) or len(value) != len(sub.channel_mult):
                    fail(f"unet.transformer_depth {value} must give one depth per level of channel_mult")
                for depth in value:
                    try:
                        whole(depth, "unet.transformer_depth entry", low, high)
                    except ValueError as e:
                        fail(e)
                continue
            if part == "unet" and name == "adm_in_channels" and value is None:
                continue  # no added conditioning (all but SDXL)
            try:
                whole(value, f"{part}.{name}", low, high)
            except ValueError as e:
                fail(e)
    for part, name in (("unet", "channel_mult"), ("vae", "ch_mult")):
        mult = getattr(getattr(cfg, part), name)
        if not isinstance(mult, tuple) or not 1 <= len(mult) <= MAX_LEVELS:
            fail(f"{part}.{name} must be a list of 1 to {MAX_LEVELS} widths, not {mult!r}")
        for m in mult:
            try:
                whole(m, f"{part}.{name} entry", *MULTIPLIERS)
            except ValueError as e:
                fail(e)
    u, v, t = cfg.unet, cfg.vae, cfg.text
    levels = [2**i for i in range(len(u.channel_mult))]
    if not all(r in levels for r in u.attention_resolutions):
        fail(
            f"unet.attention_resolutions {u.attention_resolutions} must be among the levels' factors {levels}"
        )
    widths = [u.model_channels * m for m in u.channel_mult] + [v.ch * m for m in v.ch_mult]
    groups = [u.norm_groups] * (len(u.channel_mult)) + [v.norm_groups] * len(v.ch_mult)
    if any(w % g for w, g in zip(widths, groups)):
        fail(f"every width {widths} must be a multiple of its norm_groups ({u.norm_groups}, {v.norm_groups})")
    heads = [u.heads(u.model_channels * m) for m in u.channel_mult]
    if u.head_dim and any(u.model_channels * m % u.head_dim for m in u.channel_mult):
        fail(f"unet.head_dim {u.head_dim} must divide every width {widths[: len(u.channel_mult)]}")
    if any(u.model_channels * m % h for m, h in zip(u.channel_mult, heads)):
        fail(f"unet.num_heads {u.num_heads} must divide every width {widths[: len(u.channel_mult)]}")
    if t.hidden_size % t.num_heads or t.hidden_size != u.context_dim:
        fail(
            f"text.hidden_size {t.hidden_size} must equal unet.context_dim {u.context_dim} and be a multiple "
            f"of text.num_heads {t.num_heads}"
        )
    if not (
        isinstance(v.scale_factor, (int, float)) and math.isfinite(v.scale_factor) and v.scale_factor > 0
    ):
        fail(f"vae.scale_factor must be a positive finite number, not {v.scale_factor!r}")
    if not isinstance(v.upcast, bool):
        fail(f"vae.upcast must be true or false, not {v.upcast!r}")
    if t.hidden_act not in ("quick_gelu", "gelu") or not isinstance(t.pad_token, str):
        fail(f"text.hidden_act must be quick_gelu or gelu (and pad_token a string), not {t.hidden_act!r}")
    if cfg.family not in ("sd1", "sd2", "custom") or cfg.prediction not in ("epsilon", "v"):
        fail(
            f"family {cfg.family!r}, prediction {cfg.prediction!r}: expected sd1, sd2 or custom; epsilon or v"
        )
    step = v.factor * 2 ** (len(u.channel_mult) - 1)
    if not isinstance(cfg.image_size, int) or not step <= cfg.image_size <= 8192 or cfg.image_size % step:
        fail(f"image_size must be a multiple of {step} up to 8192, not {cfg.image_size!r}")
    return cfg


def text_prefix(cfg: ModelConfig) -> str:
    return OPENCLIP_PREFIX if cfg.family == "sd2" else CLIP_PREFIX


def cast(sd: dict, dtype: torch.dtype) -> dict:
    """Floating-point tensors of a state dict to dtype (integer buffers stay as they are)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def openclip_to_clip(sd):
    """OpenCLIP text tower keys (prefix stripped) -> transformers CLIPTextModel keys. The fused attention
    projection `in_proj_weight` (3D, D) is q, k, v stacked: split it into q_proj, k_proj, v_proj."""
    layer_names = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    out = {}
    for k, v in sd.items():
        if k in IGNORED_OPENCLIP_KEYS:
            continue
        if k == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["embeddings.position_embedding.weight"] = v
        elif k.startswith("ln_final."):
            out["final_layer_norm." + k.split(".", 1)[1]] = v
        elif k.startswith("transformer.resblocks."):
            n, rest = k[len("transformer.resblocks.") :].split(".", 1)
            pre = f"encoder.layers.{n}."
            if rest.startswith("attn.in_proj_"):
                kind = rest[len("attn.in_proj_") :]  # weight or bias
                for name, part in zip("qkv", v.chunk(3)):
                    out[f"{pre}self_attn.{name}_proj.{kind}"] = part
            else:
                module, kind = rest.rsplit(".", 1)
                out[pre + layer_names.get(module, module) + "." + kind] = v
        else:
            out[k] = v  # left as is: reported as unexpected by the key check
    return out


class CheckpointError(ValueError):
    pass


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def conversion_command(path: Path) -> str:
    """A shell command that converts a pickle the user trusts to .safetensors (weights_only: tensors only).
    The paths are Python literals (repr) in one shell-quoted word: no file name can make it other code."""
    code = (
        f"import torch, safetensors.torch as st; sd = torch.load({str(path)!r}, weights_only=True); "
        "sd = sd.get('state_dict', sd); "
        "st.save_file({k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "
        f"{str(path.with_suffix('.safetensors'))!r})"
    )
    return f"python -c {shlex.quote(code)}"


def read_safetensors(path):
    """-> (tensors dict, metadata dict); a clear error for a missing, foreign, truncated or corrupt file."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{path} is a symbolic link to nothing (broken, or a loop)")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file: give a .safetensors file or a diffusers folder")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path} is a pickle ({path.suffix}); minip2p reads only .safetensors, because unpickling runs "
            "code from the file. Download the .safetensors version of the model, or convert a file you trust "
            "with:\n"
            f"  {conversion_command(path)}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable .safetensors file (truncated, corrupt or another format?): {e}"
        ) from None
    return tensors, meta


def infer_config(tensors, meta, path, prediction=None):
    """The model family from __metadata__ (our models) or from keys and shapes (SD1: conv proj_in, context
    768; SD2: linear proj_in, context 1024)."""
    if META_KEY in meta:
        cfg = ModelConfig.from_json(meta[META_KEY], f"{path} ({META_KEY} metadata)")
    else:
        proj = tensors.get(UNET_PREFIX + "input_blocks.1.1.proj_in.weight")
        to_k = tensors.get(UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
        if proj is None or to_k is None:
            raise CheckpointError(
                f"{path}: no Stable Diffusion UNet found (no key {UNET_PREFIX}input_blocks.1.1.proj_in."
                f"weight); expected an SD v1.x/v2.x single-file checkpoint in CompVis layout"
            )
        linear, ctx = proj.dim() == 2, to_k.shape[1]
        if ctx == 768 and not linear:
            cfg = ModelConfig.sd1()
        elif ctx == 1024 and linear:
            cfg = ModelConfig.sd2(prediction or "epsilon")
        else:
            raise CheckpointError(
                f"{path}: UNet with context dim {ctx} and {'linear' if linear else 'conv'} "
                f"proj_in is neither SD1 (768, conv) nor SD2 (1024, linear)"
            )
    if prediction is not None:
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction must be 'epsilon' or 'v', not {prediction!r}")
        cfg.prediction = prediction
    return cfg


def split_parts(tensors, cfg):
    """Full checkpoint -> (unet, vae, text) state dicts with prefixes stripped; other keys are ignored
    (schedule buffers, model_ema.*, ...)."""

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    unet, vae = part(UNET_PREFIX), part(VAE_PREFIX)
    vae = {k: v for k, v in vae.items() if not k.startswith("loss.")}  # training-only discriminator
    if cfg.family == "sd2":
        text = openclip_to_clip(part(OPENCLIP_PREFIX))
    else:
        text = {k: v for k, v in part(CLIP_PREFIX).items() if k not in IGNORED_TEXT_KEYS}
    return unet, vae, text


def check_state_dict(sd, expected, path, what, prefix=""):
    """Compare a file's tensors with a model's state dict (its meta tensors will do): keys, shapes, dtypes
    (floating point where the model's are) and values (finite); raise naming the first offending keys."""
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    common = [k for k in expected if k in sd]
    wrong = [
        f"{prefix}{k}: file {list(sd[k].shape)}, expected {list(expected[k].shape)}"
        for k in common
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    lines = []
    if missing:
        lines.append(f"  {len(missing)} missing keys, e.g. " + ", ".join(prefix + k for k in missing[:5]))
    if extra:
        lines.append(f"  {len(extra)} unexpected keys, e.g. " + ", ".join(prefix + k for k in extra[:5]))
    if wrong:
        lines.append(f"  {len(wrong)} shape mismatches, e.g. " + "; ".join(wrong[:3]))
    if lines:
        raise CheckpointError(
            "\n".join(
                [f"{path}: the {what} weights do not match the {what} this checkpoint was taken to be"]
                + lines
            )
        )
    for k in common:
        if expected[k].is_floating_point() and not sd[k].is_floating_point():
            raise CheckpointError(
                f"{path}: {prefix}{k} holds {sd[k].dtype} values; minip2p reads floating-point weights "
                "(quantised checkpoints are not supported)"
            )
        if sd[k].is_floating_point() and not torch.isfinite(sd[k]).all():
            raise CheckpointError(f"{path}: {prefix}{k} holds NaN or infinite values: the file is damaged")


def save_checkpoint(path, cfg: ModelConfig, unet, vae, text_encoder, dtype=None):
    """Write a single-file checkpoint in the CompVis layout with the config in __metadata__ (SD1-style text
    keys; use it for SD1 and our own models)."""
    if cfg.family == "sd2":
        raise ValueError("save_checkpoint writes SD1-layout text keys; an SD2 model cannot be saved with it")
    out = {}
    for prefix, module in ((UNET_PREFIX, unet), (VAE_PREFIX, vae), (CLIP_PREFIX, text_encoder)):
        for k, v in module.state_dict().items():
            out[prefix + k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    with atomic_write(path) as tmp:
        save_file(out, str(tmp), metadata={META_KEY: cfg.to_json()})
