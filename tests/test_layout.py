"""Our modules' state dicts have exactly the keys and shapes of real SD checkpoints (reference lists)."""

from pathlib import Path

import pytest
import torch

from minip2p import VAE, ModelConfig, UNet
from minip2p.checkpoint import CLIP_PREFIX, OPENCLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, openclip_to_clip
from minip2p.text import build_text_encoder

DATA = Path(__file__).parent / "data"


def reference(family):
    out = {}
    for line in (DATA / f"{family}_keys_shapes.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        out[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    return out


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_unet_and_vae_keys_and_shapes_equal_the_real_checkpoint(family):
    cfg = ModelConfig.sd1() if family == "sd1" else ModelConfig.sd2()
    with torch.device("meta"):
        unet, vae = UNet(cfg.unet), VAE(cfg.vae)
    ours = {UNET_PREFIX + k: tuple(v.shape) for k, v in unet.state_dict().items()}
    ours.update({VAE_PREFIX + k: tuple(v.shape) for k, v in vae.state_dict().items()})
    ref = {k: v for k, v in reference(family).items() if k.startswith((UNET_PREFIX, VAE_PREFIX))}
    assert sorted(ours) == sorted(ref)
    assert {k: s for k, s in ours.items() if ref[k] != s} == {}
    assert len(ours) == 934 and sum(
        torch.Size(s).numel() for k, s in ours.items() if k.startswith(UNET_PREFIX)
    ) == (859_520_964 if family == "sd1" else 865_910_724)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_text_encoder_keys_and_shapes_equal_the_real_checkpoint(family):
    cfg = ModelConfig.sd1() if family == "sd1" else ModelConfig.sd2()
    with torch.device("meta"):
        text = build_text_encoder(cfg.text)
    ours = {k: tuple(v.shape) for k, v in text.state_dict().items()}
    prefix = CLIP_PREFIX if family == "sd1" else OPENCLIP_PREFIX
    ref = {k[len(prefix) :]: v for k, v in reference(family).items() if k.startswith(prefix)}
    if family == "sd2":  # map the reference's OpenCLIP names through our key table (shapes via meta tensors)
        ref = {
            k: tuple(v.shape)
            for k, v in openclip_to_clip({k: torch.empty(s, device="meta") for k, s in ref.items()}).items()
        }
    assert ours == ref
