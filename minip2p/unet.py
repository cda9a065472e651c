"""The Stable Diffusion UNet (v1.x, v2.x and XL), with module paths equal to the CompVis/SGM checkpoint keys.

`UNet(UNetConfig.sd1())` loads `model.diffusion_model.*` of a v1 checkpoint with
`load_state_dict(strict=True)` after stripping that prefix (`UNetConfig.sdxl()`: of an SDXL base checkpoint).
Every attention goes through `minip2p.attention.attention`, each with a fixed `Place` (its key, down/mid/up,
cross or self, how much smaller than the latent), so a controller knows where it is.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import Place, attention
from .layers import GroupNorm, LayerNorm, Upsample, timestep_embedding


@dataclass
class UNetConfig:
    in_channels: int = 4  # latent channels in
    out_channels: int = 4  # channels out (eps or v)
    model_channels: int = 320  # width of the first level
    channel_mult: tuple = (1, 2, 4, 4)  # width of each level, times model_channels
    num_res_blocks: int = 2  # ResBlocks per level on the way down (one more on the way up)
    attention_resolutions: tuple = (1, 2, 4)  # levels with a SpatialTransformer, by downsample
    num_heads: int = 8  # heads per attention (SD1), used when head_dim is None
    head_dim: int | None = None  # channels per head (SD2: 64); None: num_heads heads
    context_dim: int = 768  # width of the text encoder's hidden states
    use_linear_proj: bool = False  # proj_in/proj_out as Linear (SD2) instead of 1x1 conv (SD1)
    transformer_depth: int | tuple = 1  # transformer blocks per SpatialTransformer; or one number per level
    norm_groups: int = 32  # GroupNorm groups everywhere
    adm_in_channels: int | None = None  # SDXL: width of the added conditioning `y` (label_emb); None: no y

    @classmethod
    def sd1(cls):
        return cls()

    @classmethod
    def sd2(cls):
        return cls(head_dim=64, context_dim=1024, use_linear_proj=True)

    @classmethod
    def sdxl(cls):
        """SDXL base: 3 levels, no attention at the first, 2 and 10 blocks deep at the others (and middle)."""
        return cls(
            channel_mult=(1, 2, 4),
            attention_resolutions=(2, 4),
            head_dim=64,
            context_dim=2048,
            use_linear_proj=True,
            transformer_depth=(1, 2, 10),
            adm_in_channels=2816,
        )

    def heads(self, ch):
        return ch // self.head_dim if self.head_dim is not None else self.num_heads

    def depth(self, level: int) -> int:
        """Transformer blocks per SpatialTransformer at a level (the middle block: the last level's)."""
        d = self.transformer_depth
        return d[level] if isinstance(d, tuple) else d


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, groups):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm(groups, out_ch),
            nn.SiLU(),
            nn.Identity(),  # was Dropout; keeps key indices
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if ch == out_ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, dim, heads, context_dim=None):
        super().__init__()
        self.heads, self.is_cross = heads, context_dim is not None
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Identity())  # .1 was Dropout; keeps keys
        self.place = None  # set by UNet once the module's key is known

    def forward(self, x, context=None, controller=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out(attention(q, k, v, self.heads, self.place, controller))


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        # .1 was Dropout: an Identity keeps the key indices
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads)  # self-attention
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, context_dim)  # cross-attention to the text
        self.norm1, self.norm2, self.norm3 = LayerNorm(dim), LayerNorm(dim), LayerNorm(dim)

    def forward(self, x, context, controller):
        x = x + self.attn1(self.norm1(x), controller=controller)
        x = x + self.attn2(self.norm2(x), context, controller)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, ch, heads, cfg: UNetConfig, downsample, depth):
        super().__init__()
        self.linear, self.downsample = cfg.use_linear_proj, downsample
        self.norm = GroupNorm(cfg.norm_groups, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, ch) if self.linear else nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(ch, heads, cfg.context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(ch, ch) if self.linear else nn.Conv2d(ch, ch, 1)

    def forward(self, x, context, controller):
        b, c, h, w = x.shape
        x_in, x = x, self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, controller)
        if self.linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.linear:
            x = self.proj_out(x)
        return x + x_in


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Block(nn.Sequential):
    """CompVis' TimestepEmbedSequential: hands each layer what it needs."""

    def forward(self, x, emb, context, controller):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, controller)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        width, groups = cfg.model_channels, cfg.norm_groups
        emb_ch = width * 4
        self.time_embed = nn.Sequential(nn.Linear(width, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if cfg.adm_in_channels:  # SGM's "sequential" label embedding: y -> added to the time embedding
            adm = cfg.adm_in_channels
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(adm, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
            )

        def transformer(ch, down, level):
            return SpatialTransformer(ch, cfg.heads(ch), cfg, down, cfg.depth(level))

        self.input_blocks = nn.ModuleList([Block(nn.Conv2d(cfg.in_channels, width, 3, padding=1))])
        skip_chs, ch, down = [width], width, 1  # down: how much smaller than the latent this level is
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_ch, mult * width, groups)]
                ch = mult * width
                if down in cfg.attention_resolutions:
                    layers.append(transformer(ch, down, level))
                self.input_blocks.append(Block(*layers))
                skip_chs.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Block(Downsample(ch)))
                skip_chs.append(ch)
                down *= 2

        last = len(cfg.channel_mult) - 1
        mid = [
            ResBlock(ch, emb_ch, ch, groups),
            transformer(ch, down, last),
            ResBlock(ch, emb_ch, ch, groups),
        ]
        self.middle_block = Block(*mid)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chs.pop(), emb_ch, mult * width, groups)]
                ch = mult * width
                if down in cfg.attention_resolutions:
                    layers.append(transformer(ch, down, level))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    down //= 2
                self.output_blocks.append(Block(*layers))

        self.out = nn.Sequential(
            GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(width, cfg.out_channels, 3, padding=1)
        )
        self.mark_places()

    def mark_places(self):
        """Give every attention module its Place: its checkpoint key, where, cross or self, size, heads."""
        where = {"input_blocks": "down", "middle_block": "mid", "output_blocks": "up"}
        for name, m in self.named_modules():
            if isinstance(m, SpatialTransformer):
                for i, block in enumerate(m.transformer_blocks):
                    for attn_name in ("attn1", "attn2"):
                        attn = getattr(block, attn_name)
                        key = f"{name}.transformer_blocks.{i}.{attn_name}"
                        attn.place = Place(
                            key, where[name.split(".")[0]], attn.is_cross, m.downsample, attn.heads
                        )

    def places(self):
        """Every attention Place of this UNet, in call order."""
        return [m.place for m in self.modules() if isinstance(m, CrossAttention)]

    def forward(self, x, t, context, controller=None, y=None):
        """x (B, C, H, W) latents, t timestep(s), context (B, 77, D) -> (B, C, H, W) eps (or v). SDXL: y (B,
        adm_in_channels), the added conditioning (pooled text embedding and size embeddings)."""
        assert (y is None) == (self.cfg.adm_in_channels is None), "y is SDXL's added conditioning"
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context, controller)
            hs.append(h)
        h = self.middle_block(h, emb, context, controller)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, controller)
        return self.out(h)
