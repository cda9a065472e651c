"""minip2p: a small, exact Stable Diffusion for Prompt-to-Prompt image editing."""
from .attention import Controller, Place, attention
from .checkpoint import ModelConfig, save_checkpoint
from .ddim import DDIM
from .pipeline import Pipeline, load
from .text import TextConfig
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig

__all__ = ["Controller", "Place", "attention", "ModelConfig", "save_checkpoint", "DDIM", "Pipeline", "load",
           "TextConfig", "UNet", "UNetConfig", "VAE", "VAEConfig"]
