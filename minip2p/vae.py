"""The KL autoencoder of Stable Diffusion, with module paths equal to the CompVis checkpoint keys.

`VAE(VAEConfig())` loads `first_stage_model.*` with `load_state_dict(strict=True)` after stripping the prefix.
`encode` and `decode` work on *unscaled* latents; the scale factor (0.18215 for SD1/2) lives in the config
because it is not in the weights.
"""

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import attention
from .layers import GroupNorm, Upsample


@dataclass
class VAEConfig:
    ch: int = 128  # width of the first level
    ch_mult: tuple = (1, 2, 4, 4)  # width of each level; the image shrinks by 2**(len-1)
    num_res_blocks: int = 2  # ResnetBlocks per level (decoder: one more)
    in_channels: int = 3  # image channels
    z_channels: int = 4  # latent channels
    norm_groups: int = 32  # GroupNorm groups everywhere (eps 1e-6)
    scale_factor: float = 0.18215  # latents are multiplied by this before the UNet sees them
    shift_factor: float = 0.0  # ...after this is taken off (SD3: 0.0609)
    quant_conv: bool = True  # the 1x1 convs around the latent (SD3's VAE has none)
    upcast: bool = False  # activations pass float16's 65504 (SDXL's VAE): it runs in fp32 under a fp16 model

    @property
    def pixels_per_cell(self) -> int:
        """Pixels per latent cell along each side (8 for SD)."""
        return 2 ** (len(self.ch_mult) - 1)


def group_norm(ch, groups):
    return GroupNorm(groups, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, through the one attention function."""

    def __init__(self, ch, groups):
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (rearrange(f(y), "b c h w -> b (h w) c") for f in (self.q, self.k, self.v))
        y = rearrange(attention(q, k, v, heads=1), "b (h w) c -> b c h w", h=h, w=w)
        return x + self.proj_out(y)


class PaddedDownsample(nn.Module):
    """Stride-2 conv after padding right and bottom only (the UNet's Downsample pads all sides)."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric: right and bottom only


class Mid(nn.Module):
    def __init__(self, ch, groups):
        super().__init__()
        self.block_1, self.attn_1 = ResnetBlock(ch, ch, groups), AttnBlock(ch, groups)
        self.block_2 = ResnetBlock(ch, ch, groups)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution of the encoder (`down.N`) or decoder (`up.N`): blocks, then a resampler."""

    def __init__(self, chs, groups, resample=None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b, groups) for a, b in zip(chs[:-1], chs[1:]))
        if resample is not None:
            setattr(self, "downsample" if resample is PaddedDownsample else "upsample", resample(chs[-1]))

    def forward(self, x):
        for block in self.block:
            x = block(x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        groups, chs = cfg.norm_groups, [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        ins = [cfg.ch] + chs[:-1]
        last = len(chs) - 1
        self.down = nn.ModuleList(
            Level([cin] + [cout] * cfg.num_res_blocks, groups, PaddedDownsample if i != last else None)
            for i, (cin, cout) in enumerate(zip(ins, chs))
        )
        self.mid = Mid(chs[-1], groups)
        self.norm_out = group_norm(chs[-1], groups)
        self.conv_out = nn.Conv2d(chs[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        groups, chs = cfg.norm_groups, [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, chs[-1], 3, padding=1)
        self.mid = Mid(chs[-1], groups)
        ins = chs[1:] + [chs[-1]]  # up.i takes what up.i+1 gave (the deepest takes mid's output)
        self.up = nn.ModuleList(
            Level([cin] + [cout] * (cfg.num_res_blocks + 1), groups, Upsample if i != 0 else None)
            for i, (cin, cout) in enumerate(zip(ins, chs))
        )
        self.norm_out = group_norm(chs[0], groups)
        self.conv_out = nn.Conv2d(chs[0], cfg.in_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        if cfg.quant_conv:
            self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
            self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def encode(self, x):
        """Image (B, 3, H, W) in [-1, 1] -> (mean, logvar), each (B, z, H/f, W/f), unscaled."""
        h = self.encoder(x)
        mean, logvar = (self.quant_conv(h) if self.cfg.quant_conv else h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        """Unscaled latent (B, z, h, w) -> image (B, 3, h*f, w*f), nominally in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z) if self.cfg.quant_conv else z)
