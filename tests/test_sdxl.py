"""SDXL, first part: the UNet. Its modules have the keys and shapes of sd_xl_base_1.0.safetensors, and a
narrow random SDXL-shaped UNet equals diffusers' UNet2DConditionModel converted by diffusers' own LDM
converter, through both of diffusers' ways of adding the conditioning y (SDXL's text_time, and the class
projection of other "sequential" models)."""

from pathlib import Path

import pytest
import torch

import minip2p_oracle as oracle
from minip2p import ModelConfig, UNet, UNetConfig, VAEConfig
from minip2p.checkpoint import UNET_PREFIX
from minip2p.config import CheckpointError, check_config
from minip2p.layers import added_conditioning
from minip2p.testing import random_state, small_config

DATA = Path(__file__).parent / "data"
SIZES = 6  # original (h, w), crop (top, left), target (h, w)


def reference_unet():
    out = {}
    for line in (DATA / "sdxl_keys_shapes.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        if key.startswith(UNET_PREFIX):
            out[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    return out


def test_sdxl_unet_keys_and_shapes_equal_the_real_checkpoint():
    with torch.device("meta"):
        unet = UNet(UNetConfig.sdxl())
    ours = {UNET_PREFIX + k: tuple(v.shape) for k, v in unet.state_dict().items()}
    ref = reference_unet()
    assert sorted(ours) == sorted(ref)
    assert {k: s for k, s in ours.items() if ref[k] != s} == {}
    assert len(ours) == 1680 and sum(torch.Size(s).numel() for s in ours.values()) == 2_567_463_684


@pytest.mark.parametrize("context_dim", [64, 2048])  # 2048: diffusers reads y as SDXL's text_time
def test_narrow_sdxl_unet_equals_diffusers(context_dim):
    pooled_dim = 32
    cfg = UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 4),
        attention_resolutions=(2, 4),
        head_dim=8,
        context_dim=context_dim,
        use_linear_proj=True,
        transformer_depth=(1, 2, 3),
        adm_in_channels=pooled_dim + SIZES * 256,
    )
    with torch.device("meta"):
        unet = UNet(cfg)
    sd = random_state(unet, seed=11)
    unet.load_state_dict(sd, assign=True)
    model = ModelConfig("custom", cfg, VAEConfig(ch=32), small_config("sd1").text, image_size=64)
    theirs = oracle.unet(model, sd)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 77, context_dim, generator=g)
    pooled = torch.randn(2, pooled_dim, generator=g)
    sizes = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768, 512, 64, 32, 512, 512]])
    t = torch.tensor([981, 21])
    with torch.no_grad():
        ours = unet.eval()(x, t, ctx, y=added_conditioning(pooled, sizes))
        if context_dim == 2048:
            assert theirs.config.addition_embed_type == "text_time"
            added = {"text_embeds": pooled, "time_ids": sizes}
            ref = theirs(x, t, ctx, added_cond_kwargs=added).sample
        else:
            assert theirs.config.class_embed_type == "projection"
            ref = theirs(x, t, ctx, class_labels=added_conditioning(pooled, sizes)).sample
        other = unet(x, t, ctx, y=added_conditioning(pooled, sizes.flip(0)))
    assert ours.abs().mean() > 0.1 and (other - ours).abs().max() > 1e-3  # y matters
    diff = (ours - ref).abs().max()
    print(f"\nnarrow SDXL UNet, context {context_dim}: max |minip2p - diffusers| = {diff:.2e}")
    assert diff < 1e-4


def test_y_is_required_exactly_by_sdxl(pipe):
    with pytest.raises(AssertionError, match="y is SDXL.s added conditioning"):  # a bug, not user input
        pipe.unet(torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 77, 64), y=torch.zeros(1, 8))


@pytest.mark.parametrize(
    "depth, message",
    [((1, 2), "one depth per level"), ((1, 0, 1, 1), "transformer_depth entry"), ([1, 1, 1, 1], "")],
)
def test_depths_per_level_are_checked(depth, message):
    cfg = small_config("sd1")
    cfg.unet.transformer_depth = depth
    if not message:  # a list (JSON) where a tuple is expected: from_json turns it into one
        cfg = ModelConfig.from_json(cfg.to_json())
        assert cfg.unet.transformer_depth == (1, 1, 1, 1)
        return
    with pytest.raises(CheckpointError, match=message):
        check_config(cfg, "the config")
