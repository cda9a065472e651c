"""minip2p: a small, exact Stable Diffusion for Prompt-to-Prompt image editing."""

__version__ = "0.2.0"

import sys as _sys

try:  # Ctrl-C while torch imports (the first seconds of every command): one line, not 30 of traceback
    from .attention import Controller, Place, attention
    from .batch import EditBatch, make_edits
    from .blend import LocalBlend
    from .checkpoint import save_checkpoint
    from .config import ModelConfig
    from .ddim import DDIM
    from .dpm import DPMSolver
    from .flow import FlowMatchEuler
    from .inversion import Inversion
    from .loading import load
    from .mmdit import MMDiT, MMDiTConfig
    from .p2p import Refine, Replace, Reweight, make_edit
    from .pipeline import Pipeline
    from .recording import Recording
    from .sd3 import SD3Config, SD3Pipeline
    from .store import AttentionStore
    from .sweep import sweep
    from .text import TextConfig
    from .unet import UNet, UNetConfig
    from .vae import VAE, VAEConfig
except KeyboardInterrupt:
    if _sys.argv[:1] != ["-m"]:  # imported by a program: its interrupt to handle (-m: python -m minip2p)
        raise
    print("interrupted, nothing written", file=_sys.stderr)
    raise SystemExit(130) from None

__all__ = [
    "AttentionStore",
    "Controller",
    "DDIM",
    "DPMSolver",
    "EditBatch",
    "FlowMatchEuler",
    "Inversion",
    "LocalBlend",
    "MMDiT",
    "MMDiTConfig",
    "ModelConfig",
    "Pipeline",
    "Place",
    "Recording",
    "Refine",
    "Replace",
    "Reweight",
    "SD3Config",
    "SD3Pipeline",
    "TextConfig",
    "UNet",
    "UNetConfig",
    "VAE",
    "VAEConfig",
    "attention",
    "load",
    "make_edit",
    "make_edits",
    "save_checkpoint",
    "sweep",
]
