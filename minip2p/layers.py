"""Small building blocks shared by the UNet and the VAE."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GroupNorm(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the weights' dtype (fp16 statistics overflow)."""

    def forward(self, x):
        w, b = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, for the same reason."""

    def forward(self, x):
        w, b = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (UNet `output_blocks.N.M.conv`, VAE
    `decoder.up.N.upsample.conv`)."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of (B,) timesteps -> (B, dim): cat([cos, sin]), as CompVis (not [sin, cos])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def added_conditioning(pooled, sizes, dim=256):
    """SDXL's added conditioning y: the pooled text embedding (B, P), then each of the 6 numbers of `sizes`
    (B, 6: original height and width, crop top and left, target height and width) as a `dim`-wide sinusoid
    -> (B, P + 6 * dim), in the order of SGM's ConcatTimestepEmbedderND and diffusers' time ids."""
    waves = timestep_embedding(sizes.flatten(), dim).reshape(sizes.shape[0], -1)
    return torch.cat([pooled.float(), waves], dim=-1)


def size_conditioning(pooled, height, width, original_size=None, crop=(0, 0), target_size=None):
    """SDXL's y for a (B, P) pooled embedding and an image of (height, width): `added_conditioning` with the
    micro-conditioning sizes (diffusers' defaults: the image's size, (0, 0), the image's size)."""
    sizes = (*(original_size or (height, width)), *crop, *(target_size or (height, width)))
    sizes = torch.tensor([sizes], dtype=torch.float32, device=pooled.device)
    return added_conditioning(pooled, sizes.expand(pooled.shape[0], -1))
