"""A small random-weight model of the SD architecture, for the demo until the bundled shapes model lands.

It runs every part of the pipeline (tokenizer, CLIP text encoder, UNet, DDIM, VAE decoder) at laptop speed;
its images are patterns, not pictures.
"""
import torch

from .checkpoint import ModelConfig
from .pipeline import Pipeline
from .text import TextConfig, build_text_encoder, load_tokenizer
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig


def random_pipeline(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig("custom", UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_heads=4, context_dim=64),
                      VAEConfig(ch=32, ch_mult=(1, 2, 2)),
                      TextConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4), image_size=64)
    modules = [m.eval().requires_grad_(False) for m in (UNet(cfg.unet), VAE(cfg.vae), build_text_encoder(cfg.text))]
    return Pipeline(cfg, *modules, load_tokenizer(cfg.text))
