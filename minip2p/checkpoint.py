"""Reading weights from disk: single-file .safetensors in the CompVis layout (SD1, SD2, our own models) or
the SGM layout (SDXL base), and diffusers folders.

The UNet and VAE need no key table (our module paths are the CompVis/SGM keys). The only tables are
`openclip_to_clip` (the OpenCLIP text towers of SD2 and SDXL) and, in `diffusers_folder.py`, the diffusers
folder layout. Every problem with a file is reported before any model is built, naming the file and the keys.
"""

import shlex
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import CheckpointError, ModelConfig
from .files import atomic_write

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."  # SD1 (and our models): transformers' CLIP names
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD2: OpenCLIP's names
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."  # SDXL's CLIP ViT-L
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's OpenCLIP ViT-bigG
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."  # the SDXL refiner's only text encoder (bigG)
LABEL_EMB = UNET_PREFIX + "label_emb.0.0.weight"  # SDXL's added conditioning: (1280, pooled + 6 x 256)
IGNORED_TEXT_KEYS = ("embeddings.position_ids",)  # a buffer some files hold, some do not
IGNORED_OPENCLIP_KEYS = ("logit_scale", "attn_mask")  # never used for conditioning
META_KEY = "minip2p_config"
BUNDLED_MODEL = files("minip2p") / "data" / "shapes.safetensors"  # package data: in the wheel too
BUNDLED_MMDIT = files("minip2p") / "data" / "shapes-mmdit.safetensors"  # its SD3-family sibling
BUNDLED = {None: BUNDLED_MODEL, "shapes": BUNDLED_MODEL, "shapes-mmdit": BUNDLED_MMDIT}  # load(name)


def is_bundled(weights) -> bool:
    """Is `weights` one of the bundled models (None or its name)? Their world is the analyser's."""
    return (weights is None or isinstance(weights, str)) and weights in BUNDLED


def model_path(weights) -> Path:
    """A path, or the file of a bundled model's name (a file of that name in the folder: "./shapes")."""
    return Path(BUNDLED[weights] if is_bundled(weights) else weights)


def text_prefixes(cfg: ModelConfig) -> dict:
    """Each text encoder's part name -> its key prefix in a single file."""
    if cfg.family == "sdxl":
        return {"text": SDXL_CLIP_PREFIX, "text_2": SDXL_OPENCLIP_PREFIX}
    return {"text": OPENCLIP_PREFIX if cfg.family == "sd2" else CLIP_PREFIX}


def cast(sd: dict, dtype: torch.dtype) -> dict:
    """Floating-point tensors of a state dict to dtype (integer buffers stay as they are)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def openclip_to_clip(sd, projection: bool = False):
    """OpenCLIP text tower keys (prefix stripped) -> transformers CLIPTextModel keys. The fused attention
    projection `in_proj_weight` (3D, D) is q, k, v stacked: split it into q_proj, k_proj, v_proj. With
    `projection` (SDXL's bigG), CLIPTextModelWithProjection keys: OpenCLIP's `text_projection` is used as
    x @ W, a Linear as x @ W.T, so its weight is W.T; without it (SD2), the projection is not used."""
    layer_names = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    out = {}
    for k, v in sd.items():
        if k in IGNORED_OPENCLIP_KEYS or (k == "text_projection" and not projection):
            continue
        if k == "text_projection":
            out["text_projection.weight"] = v.T.contiguous()
        elif k == "token_embedding.weight":
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
    if projection:
        return {k if k == "text_projection.weight" else "text_model." + k: v for k, v in out.items()}
    return out


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
    768; SD2: linear proj_in, context 1024; SDXL: the SGM layout, with `label_emb` and two text encoders)."""
    if META_KEY in meta:
        cfg = ModelConfig.from_json(meta[META_KEY], f"{path} ({META_KEY} metadata)")
    elif any(k.startswith("conditioner.") for k in tensors) or LABEL_EMB in tensors:
        cfg = sdxl_config(tensors, path)
    else:
        proj = tensors.get(UNET_PREFIX + "input_blocks.1.1.proj_in.weight")
        to_k = tensors.get(UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
        if proj is None or to_k is None:
            raise CheckpointError(
                f"{path}: no Stable Diffusion UNet found (no key {UNET_PREFIX}input_blocks.1.1.proj_in."
                f"weight); expected an SD v1.x/v2.x/XL single-file checkpoint in CompVis/SGM layout"
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


def sdxl_config(tensors, path) -> ModelConfig:
    """A file in the SGM layout -> SDXL base's config, or a one-line error for the refiner (another model:
    bigG alone, a 2560-wide label_emb) and for a file with only some of SDXL's parts."""
    label = tensors.get(LABEL_EMB)
    if any(k.startswith(REFINER_OPENCLIP_PREFIX) for k in tensors) or (
        label is not None and label.dim() == 2 and label.shape[1] == 2560
    ):
        raise CheckpointError(
            f"{path} is an SDXL refiner checkpoint, which minip2p does not support: load the SDXL base model "
            "(sd_xl_base_1.0.safetensors)"
        )
    parts = {
        "the UNet's added conditioning": LABEL_EMB,
        "the VAE": VAE_PREFIX,
        "text encoder 1 (CLIP ViT-L)": SDXL_CLIP_PREFIX,
        "text encoder 2 (OpenCLIP ViT-bigG)": SDXL_OPENCLIP_PREFIX,
    }
    missing = [
        f"{what} ({prefix}...)"
        for what, prefix in parts.items()
        if not any(k.startswith(prefix) for k in tensors)
    ]
    if missing:
        raise CheckpointError(
            f"{path} holds only part of an SDXL model: no {', no '.join(missing)}; give the whole "
            "sd_xl_base_1.0.safetensors"
        )
    return ModelConfig.sdxl()


def split_parts(tensors, cfg) -> dict:
    """Full checkpoint -> {part name: state dict with the prefix stripped} (unet, vae, text, and SDXL's
    text_2); other keys are ignored (schedule buffers, model_ema.*, ...)."""

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    vae = {k: v for k, v in part(VAE_PREFIX).items() if not k.startswith("loss.")}  # training discriminator
    parts = {"unet": part(UNET_PREFIX), "vae": vae}
    for name, prefix in text_prefixes(cfg).items():
        if prefix in (OPENCLIP_PREFIX, SDXL_OPENCLIP_PREFIX):
            parts[name] = openclip_to_clip(part(prefix), projection=name == "text_2")
        else:
            parts[name] = {k: v for k, v in part(prefix).items() if k not in IGNORED_TEXT_KEYS}
    return parts


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
    found = []
    if missing:
        found.append(f"{len(missing)} missing keys, e.g. " + ", ".join(prefix + k for k in missing[:3]))
    if extra:
        found.append(f"{len(extra)} unexpected keys, e.g. " + ", ".join(prefix + k for k in extra[:3]))
    if wrong:
        found.append(f"{len(wrong)} shape mismatches, e.g. " + "; ".join(wrong[:2]))
    if found:
        raise CheckpointError(
            f"{path}: the {what} weights are not those of the model its keys name ({'; '.join(found)}); a "
            "narrow, distilled or otherwise reshaped model loads from its diffusers folder: load('folder/')"
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
    if cfg.family in ("sd2", "sdxl"):
        raise ValueError(
            f"save_checkpoint writes SD1-layout text keys; an {cfg.family} model cannot be saved"
        )
    out = {}
    for prefix, module in ((UNET_PREFIX, unet), (VAE_PREFIX, vae), (CLIP_PREFIX, text_encoder)):
        for k, v in module.state_dict().items():
            out[prefix + k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    with atomic_write(path) as tmp:
        save_file(out, str(tmp), metadata={META_KEY: cfg.to_json()})
