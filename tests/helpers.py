"""Shared test helpers: random weights with real SD layouts, and the diffusers oracle built from the same file."""
import torch

from safetensors.torch import save_file

from minip2p import ModelConfig, TextConfig, UNet, UNetConfig, VAE, VAEConfig
from minip2p.checkpoint import META_KEY
from minip2p.checkpoint import CLIP, OPENCLIP, UNET, VAE_
from minip2p.text import build_text_encoder


def small_config(family="sd1"):
    """SD1- or SD2-shaped, but narrow: every code path of the full model at a fraction of the cost."""
    text = TextConfig(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4)
    if family == "sd1":
        unet = UNetConfig(model_channels=32, num_heads=4, context_dim=64)
    else:
        unet = UNetConfig(model_channels=32, head_dim=8, context_dim=64, use_linear_proj=True)
        text.hidden_act, text.penultimate, text.pad_token = "gelu", True, "!"
    return ModelConfig(family, unet, VAEConfig(ch=32), text, image_size=64)


def random_state(model, seed):
    """Random values for every entry of a model's state dict (works on a meta-device model): norms near 1,
    biases non-zero, weights scaled by fan-in, so no term can hide and activations stay sane."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        r = torch.randn(t.shape, generator=g)
        norm = "norm" in name or name.endswith(("in_layers.0.weight", "out_layers.0.weight", "out.0.weight",
                                                  "in_layers.0.bias", "out_layers.0.bias", "out.0.bias"))
        if t.dim() == 1 and norm:
            out[name] = (1.0 + 0.1 * r) if name.endswith("weight") else 0.1 * r
        elif t.dim() == 1:
            out[name] = 0.05 * r
        else:
            out[name] = r / t[0].numel() ** 0.5
    return out


def clip_to_openclip(sd):
    """transformers CLIPTextModel keys -> OpenCLIP keys (the inverse of checkpoint.openclip_to_clip), to write
    SD2-layout test files."""
    out = {"token_embedding.weight": sd["embeddings.token_embedding.weight"],
           "positional_embedding": sd["embeddings.position_embedding.weight"],
           "ln_final.weight": sd["final_layer_norm.weight"], "ln_final.bias": sd["final_layer_norm.bias"],
           "text_projection": torch.eye(sd["final_layer_norm.weight"].shape[0]), "logit_scale": torch.tensor(4.6)}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    layers = {k.split(".")[2] for k in sd if k.startswith("encoder.layers.")}
    for n in sorted(layers, key=int):
        pre = f"encoder.layers.{n}."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{pre}self_attn.{q}_proj.{kind}"] for q in "qkv"])
            for ours, theirs in names.items():
                out[f"transformer.resblocks.{n}.{theirs}.{kind}"] = sd[f"{pre}{ours}.{kind}"]
    return out


def random_checkpoint(cfg: ModelConfig, seed=0):
    """A full single-file state dict in CompVis layout with random weights."""
    with torch.device("meta"):
        unet, vae = UNet(cfg.unet), VAE(cfg.vae)
    text = random_state(build_text_encoder(cfg.text), seed + 2)
    sd = {UNET + k: v for k, v in random_state(unet, seed).items()}
    sd.update({VAE_ + k: v for k, v in random_state(vae, seed + 1).items()})
    if cfg.family == "sd2":
        sd.update({OPENCLIP + k: v for k, v in clip_to_openclip(text).items()})
    else:
        sd.update({CLIP + k: v for k, v in text.items()})
    return {k: v.contiguous() for k, v in sd.items()}


def ldm_yaml(cfg: ModelConfig):
    """The original LDM config (as a dict) that diffusers' converters read."""
    u, v = cfg.unet, cfg.vae
    unet_params = dict(in_channels=u.in_channels, out_channels=u.out_channels, model_channels=u.model_channels,
                       attention_resolutions=list(u.attention_resolutions), num_res_blocks=u.num_res_blocks,
                       channel_mult=list(u.channel_mult), transformer_depth=u.transformer_depth,
                       context_dim=u.context_dim, use_linear_in_transformer=u.use_linear_proj)
    if u.head_dim:
        unet_params["num_head_channels"] = u.head_dim
    else:
        unet_params["num_heads"] = u.num_heads
    ddconfig = dict(ch=v.ch, ch_mult=list(v.ch_mult), num_res_blocks=v.num_res_blocks, in_channels=3, out_ch=3,
                    z_channels=v.z_channels, double_z=True, attn_resolutions=[], resolution=256)
    return {"model": {"params": {"scale_factor": v.scale_factor, "unet_config": {"params": unet_params},
                                 "first_stage_config": {"params": {"ddconfig": ddconfig, "embed_dim": 4}}}}}


def diffusers_unet(sd, cfg):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm
    conf = create_unet_diffusers_config_from_ldm(ldm_yaml(cfg), sd, image_size=cfg.image_size)
    model = UNet2DConditionModel(**conf)
    model.load_state_dict(convert_ldm_unet_checkpoint(sd, conf), strict=True)
    return model.eval()


def diffusers_vae(sd, cfg):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm
    conf = create_vae_diffusers_config_from_ldm(ldm_yaml(cfg), sd, image_size=cfg.image_size)
    model = AutoencoderKL(**conf)
    model.load_state_dict(convert_ldm_vae_checkpoint(sd, conf), strict=True)
    return model.eval()


def diffusers_text_encoder(sd, cfg):
    """SD1: diffusers' CLIP converter. SD2: diffusers' OpenCLIP converter into a CLIPTextModel with one layer
    fewer (diffusers' way of taking the penultimate layer)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    if cfg.family == "sd2":
        short = TextConfig(**{**cfg.text.__dict__, "num_layers": cfg.text.num_layers - 1})
        model = build_text_encoder(short)
        conv = convert_open_clip_checkpoint(model, sd)
        last = f"encoder.layers.{cfg.text.num_layers - 1}."
        conv = {k.removeprefix("text_model."): v for k, v in conv.items()}
        conv = {k: v for k, v in conv.items() if not k.startswith(last) and k != "text_projection.weight"}
    else:
        model = build_text_encoder(cfg.text)
        conv = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(sd).items()}
        conv.pop("embeddings.position_ids", None)
    model.load_state_dict(conv, strict=True)
    return model.eval()


def write_checkpoint(path, cfg, seed=0, with_config=True, extra=None):
    """Save a random checkpoint; with_config=False writes it as real SD files are (no __metadata__)."""
    sd = random_checkpoint(cfg, seed)
    sd.update(extra or {})
    save_file(sd, str(path), metadata={META_KEY: cfg.to_json()} if with_config else None)
    return sd
