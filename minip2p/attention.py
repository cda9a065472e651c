"""The one attention function of minip2p, and the controller protocol Prompt-to-Prompt plugs into.

Every attention call of the UNet (self-attention `attn1`, cross-attention `attn2`), of the MM-DiT (joint
attention over [image; text] tokens) and of the VAE goes through `attention()`. When a controller is
attached and asks for a place, the softmax map is computed explicitly and handed to it; it may return a
different map (this is where P2P edits happen). Everywhere else the fused `scaled_dot_product_attention`
kernel computes the same thing faster.

This module knows nothing of edits: it only knows *where* a call happens (`Place`) and *who* to ask.
"""

from dataclasses import dataclass, replace
from functools import cache

import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class Place:
    """Where an attention call happens in the model; fixed when the model is built."""

    key: str  # checkpoint key of the attention module, e.g. "input_blocks.1.1.transformer_blocks.0.attn2"
    where: str  # UNet: "down", "mid" or "up"; MM-DiT: "early", "middle" or "late" (third of the blocks)
    is_cross: bool  # True where the keys are text tokens (UNet attn2; MM-DiT image->text), else False
    downsample: int  # the latent is this many times larger per side than the map here (1, 2, 4, 8)
    heads: int  # number of attention heads: the map's first axis is batch * heads
    part: str = ""  # MM-DiT: "joint" (a whole joint map) or the block of it a controller sees (JOINT_PARTS)
    layer: int = -1  # MM-DiT: the joint block (0 the first)
    prompt_tokens: int = 0  # joint: the text keys an edit's token maps index (CLIP's 77, first in the text)

    @property
    def name(self) -> str:
        """The key maps are stored under: the checkpoint key, and the part of a joint map."""
        return f"{self.key}:{self.part}" if self.part in JOINT_PARTS else self.key

    def tokens(self, latent_hw: tuple) -> int:
        """The number of image tokens (queries) at this place for a latent of (h, w)."""
        return (latent_hw[0] // self.downsample) * (latent_hw[1] // self.downsample)


JOINT_PARTS = ("image->text", "image->image", "text->image")  # queries->keys; text->text is left alone


@cache
def joint_parts(place: Place) -> dict:
    """The places a controller sees for a joint map: image queries x prompt keys (a cross-attention map over
    the 77 CLIP tokens), image x image (a self-attention map), prompt queries x image keys."""
    return {part: replace(place, part=part, is_cross=part == "image->text") for part in JOINT_PARTS}


def joint_block(part: str, n: int, prompt: int) -> tuple:
    """(rows, columns) of a part in a joint map of n image tokens, then text (prompt tokens first)."""
    image, text = slice(0, n), slice(n, n + prompt)
    return {"image->text": (image, text), "image->image": (image, image), "text->image": (text, image)}[part]


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


def joint_edit(attn, place: Place, controller: Controller, n: int) -> torch.Tensor:
    """A joint softmax map (B, heads, n + T, n + T) edited block by block. Each part a controller wants is
    handed over as a map of its own, rows renormalised to sum to 1 (as the UNet's maps do), and what the
    controller returns is scaled back by the row's own mass in that block: the target keeps its split of
    attention between image, prompt and T5 tokens, and within a block follows the edit. A map the controller
    only read (the same tensor back, its version counter unchanged: nothing written into it) is not written
    back, so that watching changes no bit."""
    b, h = attn.shape[:2]
    for part, sub in joint_parts(place).items():
        if controller.wants(sub):
            rows, cols = joint_block(part, n, place.prompt_tokens)
            block = attn[:, :, rows, cols]
            mass = block.sum(-1, keepdim=True)
            shown = (block / mass.clamp(min=1e-30)).reshape(b * h, *block.shape[2:])
            version = shown._version
            out = controller(shown, sub)
            if out is not shown or shown._version != version:
                attn[:, :, rows, cols] = out.reshape(block.shape) * mass
    return attn


def attention(
    q,
    k,
    v,
    heads: int,
    place: Place | None = None,
    controller: Controller | None = None,
    image_tokens: int | None = None,
) -> torch.Tensor:
    """Multi-head attention: q (B, N, C), k and v (B, M, C) -> (B, N, C).

    out = softmax(q kᵀ / sqrt(d)) v, per head, with the softmax in fp32 whatever the model's dtype: the fused
    kernels (flash on the CPU, flash or memory-efficient on CUDA) keep their running max and sums in fp32 for
    fp16/bf16 inputs, and the explicit path upcasts. The controller (if any, and if it wants this place) sees
    and may replace the softmax map before it multiplies v. A joint place (MM-DiT: the first `image_tokens` of
    q, k, v are the image's, the rest the text's) shows the controller the blocks it wants (`joint_edit`).
    """
    q, k, v = (rearrange(x, "b n (h d) -> b h n d", h=heads) for x in (q, k, v))
    joint = place is not None and place.part == "joint"
    if controller is not None and joint:
        wanted = any(controller.wants(p) for p in joint_parts(place).values())
    else:
        wanted = controller is not None and controller.wants(place)
    if not wanted:
        out = F.scaled_dot_product_attention(q, k, v)  # 4-D input: the CPU and GPU fused kernels
    else:
        b, h, n, m = *q.shape[:3], k.shape[2]
        scale = q.shape[-1] ** -0.5
        attn = (q.float() @ k.float().transpose(-1, -2) * scale).softmax(dim=-1)
        if joint:
            attn = joint_edit(attn, place, controller, image_tokens)
        else:
            attn = controller(attn.reshape(b * h, n, m), place).reshape(b, h, n, m)
        out = attn.to(v.dtype) @ v
    return rearrange(out, "b h n d -> b n (h d)")
