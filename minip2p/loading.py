"""Loading a model: a file or folder, checked part by part against the model it is taken to be before any
memory is taken, then the parts built, filled and put on their device and dtype."""

import torch

from . import checkpoint as ckpt
from .checks import check_device, check_dtype
from .diffusers_folder import read_diffusers_folder
from .pipeline import Pipeline, choose_vae_dtype
from .sd3_folder import is_sd3_folder, read_sd3_folder
from .sd3_loading import is_sd3, load_sd3
from .text import TOKENIZER_DIR, build_text_encoder, load_tokenizer
from .unet import UNet
from .vae import VAE


def load(
    path=None,
    *,
    device="cpu",
    dtype=torch.float32,
    vae_dtype: torch.dtype | None = None,
    prediction: str | None = None,
    text_encoders=None,
    tokenizers=None,
) -> Pipeline:
    """Load a model: a single-file .safetensors (SD1.x, SD2.x, SDXL base, SD3 / SD3.5, or ours), or a
    diffusers folder (SD1, SD2, SDXL base, SD3 / SD3.5).

    path=None (or "shapes") loads the bundled shapes-world model, "shapes-mmdit" its MM-DiT (SD3-family)
    sibling (`scripts/train_shapes.py export --arch mmdit` writes it; a file of that name: "./shapes").
    `dtype` is the UNet's and text encoders'; `vae_dtype` the
    VAE's (see `Pipeline.to`). `prediction` ("epsilon" or "v") overrides what the file says or implies:
    v-prediction (SD2 768-v models) is not visible in the weights. SD3 files only (an SD3 folder holds its
    own): `text_encoders`, a folder with the text encoders a file lacks (clip_l.safetensors,
    clip_g.safetensors, t5xxl_fp16.safetensors); `tokenizers`, a folder with T5's tokenizer (tokenizer_3/;
    the CLIPs' ship with minip2p).
    """
    device, dtype = check_device(device), check_dtype(dtype)
    vae_dtype = None if vae_dtype is None else check_dtype(vae_dtype)
    if ckpt.is_bundled(path) and not ckpt.model_path(path).exists():
        raise FileNotFoundError(
            f"the bundled model {path!r} is not in this install: train it with scripts/train_shapes.py "
            "(phases latents --vae bundled --arch mmdit, mmdit, export --arch mmdit)"
        )
    path = ckpt.model_path(path)
    tokenizer_dirs = {}
    if path.is_dir() and is_sd3_folder(path):
        if prediction is not None or text_encoders is not None or tokenizers is not None:
            raise ValueError(
                f"{path} is a diffusers SD3 folder: it predicts a velocity and holds its own text encoders "
                "and tokenizers (prediction, text_encoders, tokenizers do not apply)"
            )
        return load_sd3(path, read_sd3_folder(path), device, dtype, vae_dtype, None, tokenizers=path)
    if path.is_dir():
        cfg, parts, tokenizer_dirs = read_diffusers_folder(path, prediction)
    else:
        tensors, meta = ckpt.read_safetensors(path)
        if is_sd3(tensors):
            if prediction is not None:
                raise ValueError(f"prediction={prediction!r}: SD3 predicts a velocity (flow matching)")
            return load_sd3(path, tensors, device, dtype, vae_dtype, text_encoders, tokenizers, meta)
        cfg = ckpt.infer_config(tensors, meta, path, prediction)
        parts = ckpt.split_parts(tensors, cfg)
        del tensors
    if text_encoders is not None or tokenizers is not None:
        raise ValueError(f"text_encoders, tokenizers: only SD3 files take them; {path} is {cfg.family}'s")
    return build(path, cfg, parts, tokenizer_dirs, device, dtype, vae_dtype)


def build(path, cfg, parts, tokenizer_dirs, device, dtype, vae_dtype) -> Pipeline:
    """A UNet model's parts (SD1, SD2, SDXL, ours) checked against the models they are taken to be, then
    built, filled and placed."""
    text_cfgs = {"text": cfg.text, "text_2": cfg.text_2} if cfg.text_2 else {"text": cfg.text}
    with torch.device("meta"):  # every part is checked against the file before any memory is taken
        models = {"unet": UNet(cfg.unet), "vae": VAE(cfg.vae)}
        models.update({name: build_text_encoder(c) for name, c in text_cfgs.items()})
    prefixes = {"unet": ckpt.UNET_PREFIX, "vae": ckpt.VAE_PREFIX, **ckpt.text_prefixes(cfg)}
    names = {"unet": "UNet", "vae": "VAE", "text": "text encoder", "text_2": "second text encoder"}
    for name, model in models.items():
        prefix = "" if path.is_dir() else prefixes[name]
        ckpt.check_state_dict(parts[name], model.state_dict(), path, names[name], prefix)
    tokenizers = {}
    for name, c in text_cfgs.items():
        tokenizers[name] = load_tokenizer(c, tokenizer_dirs.get(name) or TOKENIZER_DIR)
        if len(tokenizers[name]) > c.vocab_size:
            raise ckpt.CheckpointError(
                f"{path}: the tokenizer has {len(tokenizers[name])} tokens, the {names[name]} only "
                f"{c.vocab_size}"
            )
    vae_dtype = choose_vae_dtype(cfg, dtype, vae_dtype)
    for name, model in models.items():
        part_dtype = vae_dtype if name == "vae" else dtype
        if name.startswith("text"):  # as large as the file's own tensors: they were checked
            model = models[name] = build_text_encoder(text_cfgs[name])
        model.load_state_dict(ckpt.cast(parts.pop(name), part_dtype), strict=True, assign=True)
    encoders = [(models[n], tokenizers[n]) for n in text_cfgs]
    pipe = Pipeline(cfg, models["unet"], models["vae"], *encoders[0], *(encoders[1] if cfg.text_2 else ()))
    return pipe.place(device, dtype, vae_dtype)
