"""The MM-DiT of Stable Diffusion 3 and 3.5 (Esser et al. 2024), with module paths equal to the keys of
Stability's single files (`model.diffusion_model.joint_blocks.N.x_block.attn.qkv.weight`, ...): strict load,
no mapping table, as `unet.py` does for the UNet.

Each joint block holds two streams, `x_block` (image tokens) and `context_block` (text tokens). Each stream
projects its own q, k, v; the two are concatenated, [image; text], and attend in ONE softmax (joint
attention, through `attention()`), then each stream takes its part of the output back. The last block's
text side is "pre-only": it gives keys and values to the last attention and is then dropped. SD3.5 adds RMS
norms on q and k (`ln_q`, `ln_k`); SD3.5 Medium adds, in its first blocks, a second attention over the image
tokens alone (`attn2`, MMDiT-X "dual attention"). Every block is modulated (adaLN) by the timestep and the
pooled text embedding.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Place, attention
from .layers import timestep_embedding

THIRDS = ("early", "middle", "late")  # a block's `Place.where`: the third of the depth it is in


@dataclass
class MMDiTConfig:
    depth: int = 24  # joint blocks (SD3.5 Medium: 24; SD3 Medium: 24; SD3.5 Large: 38)
    hidden_size: int = 1536  # width of both streams: 64 x depth in Stability's models
    num_heads: int = 24  # attention heads (head width = hidden_size / num_heads)
    patch_size: int = 2  # latent cells per token along each side
    in_channels: int = 16  # latent channels (SD3's VAE: 16)
    context_dim: int = 4096  # width of the text context (T5-XXL's; the CLIPs' are zero-padded to it)
    pooled_dim: int = 2048  # width of the pooled text embedding (CLIP-L's 768 + CLIP-G's 1280)
    pos_embed_max_size: int = 384  # the stored position table covers this many tokens per side
    qk_norm: bool = True  # SD3.5: RMS norm on each head's queries and keys
    dual_attention_layers: tuple = tuple(range(13))  # SD3.5 Medium: blocks with a second image attention
    prompt_tokens: int = 77  # the context's first tokens (CLIP's): the keys an edit's token maps index

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def modulate(x, shift, scale):
    """adaLN: a LayerNorm without weights, then a scale and shift from the conditioning. (The layer_norm
    kernels keep the statistics of bf16/fp16 inputs in fp32.)"""
    x = F.layer_norm(x, x.shape[-1:], eps=1e-6)
    return x * (1 + scale[:, None]) + shift[:, None]


class RMSNorm(nn.Module):
    """RMS norm of each head's queries or keys (SD3.5's `ln_q`, `ln_k`), computed in fp32."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (y * self.weight.float()).to(x.dtype)


class SelfAttention(nn.Module):
    """One stream's q, k, v projection (`qkv`) and output projection (`proj`, absent when pre-only)."""

    def __init__(self, dim, heads, qk_norm, pre_only=False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        if qk_norm:
            self.ln_q, self.ln_k = RMSNorm(dim // heads), RMSNorm(dim // heads)

    def project(self, x) -> tuple:
        """(B, N, D) -> q, k, v (B, N, D), q and k normed per head where the model does. Three products with
        thirds of `qkv` (views), not one three times as wide: the same numbers, faster on the CPU."""
        parts = zip(self.qkv.weight.chunk(3), self.qkv.bias.chunk(3))
        q, k, v = (F.linear(x, w, b) for w, b in parts)
        if hasattr(self, "ln_q"):
            b, n, d = q.shape
            q = self.ln_q(q.view(b, n, self.heads, -1)).view(b, n, d)
            k = self.ln_k(k.view(b, n, self.heads, -1)).view(b, n, d)
        return q, k, v


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DismantledBlock(nn.Module):
    """One stream of a joint block: its modulation, attention projections and MLP (Stability's name)."""

    def __init__(self, cfg: MMDiTConfig, pre_only=False, dual=False):
        super().__init__()
        dim = cfg.hidden_size
        self.pre_only, self.dual = pre_only, dual
        self.attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, pre_only)
        if dual:
            self.attn2 = SelfAttention(dim, cfg.num_heads, cfg.qk_norm)
        n = 2 if pre_only else 9 if dual else 6  # (shift, scale[, gate]) for attention, MLP[, attn2]
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, n * dim))
        if not pre_only:
            self.mlp = MLP(dim)

    def finish(self, x, out, mod, out2=None):
        """After the attention: the gated residual of its output (and of attn2's), then the gated MLP."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[:6]
        x = x + gate_msa[:, None] * self.attn.proj(out)
        if out2 is not None:
            x = x + mod[8][:, None] * self.attn2.proj(out2)
        return x + gate_mlp[:, None] * self.mlp(modulate(x, shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    def __init__(self, cfg: MMDiTConfig, i: int):
        super().__init__()
        self.x_block = DismantledBlock(cfg, dual=i in cfg.dual_attention_layers)
        self.context_block = DismantledBlock(cfg, pre_only=i == cfg.depth - 1)

    def forward(self, x, c, emb, controller=None):
        """Image tokens x (B, N, D), text tokens c (B, T, D), conditioning emb (B, D) -> (x, c or None)."""
        xb, cb = self.x_block, self.context_block
        mx = xb.adaLN_modulation(emb).chunk(9 if xb.dual else 6, dim=1)
        mc = cb.adaLN_modulation(emb).chunk(2 if cb.pre_only else 6, dim=1)
        qx, kx, vx = xb.attn.project(modulate(x, mx[0], mx[1]))
        qc, kc, vc = cb.attn.project(modulate(c, mc[0], mc[1]))
        q, k, v = (torch.cat(pair, dim=1) for pair in ((qx, qc), (kx, kc), (vx, vc)))
        out = attention(q, k, v, xb.attn.heads, self.place, controller, image_tokens=x.shape[1])
        n, out2 = x.shape[1], None
        if xb.dual:  # a second attention over the image tokens alone, from x before the first one
            x2 = modulate(x, mx[6], mx[7])
            out2 = attention(*xb.attn2.project(x2), xb.attn2.heads, self.place2, controller)
        y = xb.finish(x, out[:, :n], mx, out2)
        return y, None if cb.pre_only else cb.finish(c, out[:, n:], mc)


class Embedder(nn.Module):
    """Linear, SiLU, linear (`mlp.0`, `mlp.2`): the timestep and pooled-text embedders."""

    def __init__(self, cin, dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cin, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, x):
        return self.mlp(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, p, stride=p)


class FinalLayer(nn.Module):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        dim, p = cfg.hidden_size, cfg.patch_size
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, p * p * cfg.in_channels)

    def forward(self, x, emb):
        shift, scale = self.adaLN_modulation(emb).chunk(2, dim=1)
        return self.linear(modulate(x, shift, scale))


class MMDiT(nn.Module):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("pos_embed", torch.zeros(1, cfg.pos_embed_max_size**2, cfg.hidden_size))
        self.x_embedder = PatchEmbed(cfg)
        self.t_embedder = Embedder(256, cfg.hidden_size)
        self.y_embedder = Embedder(cfg.pooled_dim, cfg.hidden_size)
        self.context_embedder = nn.Linear(cfg.context_dim, cfg.hidden_size)
        self.joint_blocks = nn.ModuleList(JointBlock(cfg, i) for i in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        self.mark_places()

    def mark_places(self):
        """Each block's joint attention (and dual attention) gets its Place: key, third, block number."""
        cfg = self.cfg
        for i, block in enumerate(self.joint_blocks):
            key, where, heads = f"joint_blocks.{i}.x_block.attn", THIRDS[3 * i // cfg.depth], cfg.num_heads
            block.place = Place(key, where, True, cfg.patch_size, heads, "joint", i, cfg.prompt_tokens)
            block.place2 = Place(key + "2", where, False, cfg.patch_size, heads, "image->image", i)

    def places(self) -> list:
        """Every attention Place, in call order."""
        blocks = self.joint_blocks
        return [p for b in blocks for p in ([b.place] + ([b.place2] if b.x_block.dual else []))]

    def positions(self, h, w) -> torch.Tensor:
        """The stored position table cropped to the middle (h, w) tokens -> (1, h * w, D)."""
        m = self.cfg.pos_embed_max_size
        top, left = (m - h) // 2, (m - w) // 2
        table = self.pos_embed.reshape(1, m, m, -1)[:, top : top + h, left : left + w]
        return table.reshape(1, h * w, -1)

    def forward(self, x, t, context, controller=None, y=None):
        """Latents x (B, C, H, W), timesteps t (sigma x 1000), context (B, T, context_dim), pooled text y
        (B, pooled_dim) -> (B, C, H, W) the velocity."""
        b, _, height, width = x.shape
        p = self.cfg.patch_size
        h, w = height // p, width // p
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        tokens = self.x_embedder.proj(x).flatten(2).transpose(1, 2)
        tokens = (tokens.float() + self.positions(h, w).float()).to(x.dtype)
        emb = self.t_embedder(timestep_embedding(t, 256).to(x.dtype)) + self.y_embedder(y.to(x.dtype))
        c = self.context_embedder(context.to(x.dtype))
        for block in self.joint_blocks:
            tokens, c = block(tokens, c, emb, controller)
        out = self.final_layer(tokens, emb).reshape(b, h, w, p, p, -1)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(b, -1, height, width)


def config_from_keys(shapes: dict) -> MMDiTConfig:
    """The config of an MM-DiT from its keys' shapes (prefix stripped; every key checked after, by a strict
    comparison with the model built from this): depth, width, patch, table size, q/k norm, dual blocks."""
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("joint_blocks."))
    dim, cin, p, _ = shapes["x_embedder.proj.weight"]
    dual = tuple(sorted({int(k.split(".")[1]) for k in shapes if ".x_block.attn2." in k}))
    return MMDiTConfig(
        depth=depth,
        hidden_size=dim,
        num_heads=dim // 64,
        patch_size=p,
        in_channels=cin,
        context_dim=shapes["context_embedder.weight"][1],
        pooled_dim=shapes["y_embedder.mlp.0.weight"][1],
        pos_embed_max_size=math.isqrt(shapes["pos_embed"][1]),
        qk_norm="joint_blocks.0.x_block.attn.ln_q.weight" in shapes,
        dual_attention_layers=dual,
    )


def sincos_positions(dim: int, n: int) -> torch.Tensor:
    """SD3's fixed 2D sine-cosine position table for n x n tokens -> (1, n * n, dim): half the channels for
    the row, half for the column."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4).double() / (dim // 4))
    angles = torch.arange(n).double()[:, None] * omega[None]
    one = torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim / 2)
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return torch.cat([one[rows.flatten()], one[cols.flatten()]], dim=1)[None].float()


@torch.no_grad()
def initialise(model: MMDiT) -> MMDiT:
    """An MM-DiT to train from scratch: the position table filled, and adaLN-Zero (every block starts as the
    identity, the output at zero), as DiT trains."""
    cfg = model.cfg
    model.pos_embed.copy_(sincos_positions(cfg.hidden_size, cfg.pos_embed_max_size))
    for block in model.joint_blocks:
        for stream in (block.x_block, block.context_block):
            nn.init.zeros_(stream.adaLN_modulation[1].weight), nn.init.zeros_(stream.adaLN_modulation[1].bias)
    for layer in (model.final_layer.adaLN_modulation[1], model.final_layer.linear):
        nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
    return model
