"""The numerical traps of SD, pinned one by one (each would pass unnoticed by a shape check)."""

import torch
import torch.nn.functional as F

from minip2p import VAE, UNet, UNetConfig, VAEConfig
from minip2p.layers import GroupNorm, timestep_embedding
from minip2p.unet import ResBlock, SpatialTransformer
from minip2p.vae import PaddedDownsample


def test_vae_downsample_pads_right_and_bottom_only():
    down = PaddedDownsample(1)
    with torch.no_grad():
        down.conv.weight.fill_(1.0)
        down.conv.bias.zero_()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = down(x)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0] == x[0, 0, :3, :3].sum()  # top-left window: no padding above or left
    assert y[0, 0, 1, 1] == x[0, 0, 2:, 2:].sum()  # bottom-right window: the zero pad is right/bottom
    assert not torch.equal(y, F.conv2d(x, down.conv.weight, stride=2, padding=1)[..., :2, :2])


def test_group_norm_eps():
    vae = VAE(VAEConfig(ch=32, ch_mult=(1, 2)))
    unet = UNet(UNetConfig(model_channels=32, channel_mult=(1, 2), num_heads=4, context_dim=8))
    vae_eps = {m.eps for m in vae.modules() if isinstance(m, GroupNorm)}
    st_eps = {m.norm.eps for m in unet.modules() if isinstance(m, SpatialTransformer)}
    res_eps = (
        {m.in_layers[0].eps for m in unet.modules() if isinstance(m, ResBlock)}
        | {m.out_layers[0].eps for m in unet.modules() if isinstance(m, ResBlock)}
        | {unet.out[0].eps}
    )
    assert vae_eps == {1e-6} and st_eps == {1e-6} and res_eps == {1e-5}


def test_timestep_embedding_is_cos_then_sin():
    e = timestep_embedding(torch.tensor([0, 10]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(e[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))


def test_group_norm_runs_in_fp32_for_half_inputs():
    gn = GroupNorm(2, 4, eps=1e-6).to(torch.float16)
    x = (torch.randn(1, 4, 8, 8) * 300).to(torch.float16)  # x**2 overflows fp16
    y = gn(x)
    ref = F.group_norm(x.float(), 2, eps=1e-6)
    assert y.dtype == torch.float16 and torch.isfinite(y).all() and (y.float() - ref).abs().max() < 1e-2
