"""The one attention function of minip2p, and the controller protocol Prompt-to-Prompt plugs into.

Every attention call of the UNet (self-attention `attn1`, cross-attention `attn2`) and of the VAE goes
through `attention()`. When a controller is attached and asks for a place, the softmax map is computed
explicitly and handed to it; it may return a different map (this is where P2P edits happen). Everywhere
else the fused `scaled_dot_product_attention` kernel computes the same thing faster.

This module knows nothing of edits: it only knows *where* a call happens (`Place`) and *who* to ask.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class Place:
    """Where an attention call happens in the UNet; fixed when the UNet is built."""

    key: str  # checkpoint key of the attention module, e.g. "input_blocks.1.1.transformer_blocks.0.attn2"
    where: str  # "down", "mid" or "up"
    is_cross: bool  # True for cross-attention (attn2, keys are text tokens), False for self-attention
    downsample: int  # the latent is this many times larger per side than the map here (1, 2, 4, 8)
    heads: int  # number of attention heads: the map's first axis is batch * heads

    def tokens(self, latent_hw: tuple) -> int:
        """The number of image tokens (queries) at this place for a latent of (h, w)."""
        return (latent_hw[0] // self.downsample) * (latent_hw[1] // self.downsample)


class Controller:
    """Protocol of an attention controller (subclass it, or duck-type it).

    `wants(place)` says whether `place` needs the explicit softmax map; `__call__(attn, place)` receives the
    map (batch * heads, queries, keys) in fp32 and returns the map to use. The sampler calls `start(steps,
    latent_hw, device)` once, then `before_step(i)` and `after_step(i, latents)` around step i; `after_step`
    returns the latents to go on with (LocalBlend changes them there).
    """

    def wants(self, place: Place) -> bool:
        return True

    def __call__(self, attn: torch.Tensor, place: Place) -> torch.Tensor:
        return attn

    def start(self, steps: int, latent_hw: tuple, device=None) -> None:
        """Called once before sampling: the number of steps and the latent's (height, width)."""

    def before_step(self, i: int) -> None:
        """Called before step i (0 is the noisiest)."""

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """Called after step i with its result; returns the latents sampling goes on with."""
        return latents


def conditional_half(attn: torch.Tensor, heads: int) -> torch.Tensor:
    """(2P * heads, n, m) map of a guidance batch [unconditional..., conditional...] -> (P, heads, n, m), a
    view of the conditional half: the part of the batch a controller reads or edits."""
    return attn.view(2, -1, heads, *attn.shape[1:])[1]


def attention(
    q, k, v, heads: int, place: Place | None = None, controller: Controller | None = None
) -> torch.Tensor:
    """Multi-head attention: q (B, N, C), k and v (B, M, C) -> (B, N, C).

    out = softmax(q kᵀ / sqrt(d)) v, per head, with the softmax in fp32 whatever the model's dtype: the fused
    kernels (flash on the CPU, flash or memory-efficient on CUDA) keep their running max and sums in fp32 for
    fp16/bf16 inputs, and the explicit path upcasts. The controller (if any, and if it wants this place) sees
    and may replace the softmax map before it multiplies v.
    """
    q, k, v = (rearrange(x, "b n (h d) -> b h n d", h=heads) for x in (q, k, v))
    if controller is None or not controller.wants(place):
        out = F.scaled_dot_product_attention(q, k, v)  # 4-D input: the CPU and GPU fused kernels
    else:
        b, h, n, m = *q.shape[:3], k.shape[2]
        scale = q.shape[-1] ** -0.5
        attn = (q.float() @ k.float().transpose(-1, -2) * scale).softmax(dim=-1)
        attn = controller(attn.reshape(b * h, n, m), place).reshape(b, h, n, m)
        out = attn.to(v.dtype) @ v
    return rearrange(out, "b h n d -> b n (h d)")
