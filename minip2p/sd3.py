"""Stable Diffusion 3 / 3.5: what the model is (`SD3Config`), its three text encoders, and its pipeline.

The text side, as diffusers' `StableDiffusion3Pipeline.encode_prompt`: CLIP-L and CLIP-G read at their
penultimate layer, side by side (768 + 1280 = 2048 wide), zero-padded to T5's width (4096); then T5-XXL's
tokens (256 by default), or zeros where there is no T5. The context is [CLIP tokens (77); T5 tokens]; the
pooled embedding is both CLIPs' projected end tokens side by side. An edit's token maps index the 77 CLIP
tokens (the first text keys of every joint map, `Place.prompt_tokens`); the T5 tokens keep the target's own
attention (see `attention.joint_edit`).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import T5Config, T5EncoderModel

from . import defaults
from .checks import check_prompt_tokens, check_prompts
from .flow import SHIFT, FlowMatchEuler
from .mmdit import MMDiT, MMDiTConfig
from .pipeline import Pipeline
from .text import TextConfig, encode_text, tokenize
from .vae import VAEConfig


@dataclass
class T5Settings:
    """T5-XXL's encoder (transformers' T5EncoderModel, "gated-gelu")."""

    vocab_size: int = 32128
    d_model: int = 4096  # width: the context the MM-DiT reads
    d_kv: int = 64  # width of a head
    d_ff: int = 10240  # MLP width
    num_layers: int = 24
    num_heads: int = 64


def clip_l() -> TextConfig:
    """CLIP ViT-L with its projection (the pooled 768), read at the penultimate layer, no final norm."""
    return TextConfig(penultimate=True, final_norm=False, projection_dim=768)


def clip_g() -> TextConfig:
    """OpenCLIP ViT-bigG with its projection (the pooled 1280), as SDXL's second encoder."""
    return TextConfig.sdxl_2()


@dataclass
class SD3Config:
    family: str = "sd3.5"  # "sd3" (SD3 Medium) or "sd3.5" (q/k norm; Medium: dual attention)
    mmdit: MMDiTConfig = field(default_factory=MMDiTConfig)
    vae: VAEConfig = field(
        default_factory=lambda: VAEConfig(
            z_channels=16, scale_factor=1.5305, shift_factor=0.0609, quant_conv=False
        )
    )
    text: TextConfig = field(default_factory=clip_l)  # CLIP-L
    text_2: TextConfig | None = field(default_factory=clip_g)  # CLIP-G (None: one CLIP, our own models)
    t5: T5Settings | None = field(default_factory=T5Settings)  # None: no T5 (zeros in its place)
    t5_tokens: int = 256  # T5's tokens per prompt (diffusers' max_sequence_length); without T5, zeros
    image_size: int = 1024  # default height and width
    shift: float = SHIFT  # the flow schedule's shift
    prediction: str = "flow"  # a velocity (not visible in the weights)
    zero_negative: bool = False  # SD3 encodes "" for no negative prompt
    size_reason = "MM-DiT's patches"

    @property
    def size_step(self) -> int:
        return self.vae.pixels_per_cell * self.mmdit.patch_size

    @property
    def largest(self) -> int:
        """The largest image side the position table covers."""
        return self.size_step * self.mmdit.pos_embed_max_size

    @property
    def encoders(self) -> list:
        return [self.text] if self.text_2 is None else [self.text, self.text_2]


def build_t5(t: T5Settings) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=t.vocab_size,
            d_model=t.d_model,
            d_kv=t.d_kv,
            d_ff=t.d_ff,
            num_layers=t.num_layers,
            num_heads=t.num_heads,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
        )
    )


class SD3Pipeline(Pipeline):
    """A loaded SD3 / SD3.5: `transformer` (the MM-DiT), `vae`, `text_encoder` (CLIP-L), `text_encoder_2`
    (CLIP-G), `text_encoder_3` (T5, or None) and their tokenizers; `generate`, `edit`, `invert` as for SD."""

    def __init__(self, config, transformer, vae, clip_l, tok_l, clip_g=None, tok_g=None, t5=None, tok_3=None):
        super().__init__(config, None, vae, clip_l, tok_l, clip_g, tok_g)
        self.transformer, self.text_encoder_3, self.tokenizer_3 = transformer, t5, tok_3

    @property
    def denoiser(self) -> MMDiT:
        return self.transformer

    def encoders(self) -> list:
        pairs = super().encoders()
        return pairs + (
            [] if self.text_encoder_3 is None else [(self.text_encoder_3, self.tokenizer_3, None)]
        )

    def probe(self) -> torch.Tensor:
        return self.transformer.final_layer.linear.weight.detach().flatten()[:64].float().cpu()

    @property
    def guidance_scale(self) -> float:
        return defaults.SD3_GUIDANCE_SCALE

    @property
    def samplers(self) -> tuple:
        return defaults.SD3_SAMPLERS

    def default_steps(self, sampler: str | None = None) -> int:
        return defaults.SD3_STEPS

    def scheduler(self, steps, steps_offset=1, eta=0.0, sampler=None, follow_ddim=False):
        return FlowMatchEuler(steps, self.config.shift)

    def added_conditioning(self, pooled, height, width, sizes=None):
        return pooled  # the pooled text alone

    @property
    def context_shape(self) -> tuple:
        cfg = self.config
        tokens = cfg.text.max_length + cfg.t5_tokens
        return (tokens, cfg.mmdit.context_dim), cfg.mmdit.pooled_dim

    def encode_text(self, prompts) -> tuple:
        """Prompts -> (context (B, 77 + T5 tokens, 4096), pooled (B, 2048)), as diffusers' encode_prompt."""
        prompts, cfg = check_prompts(prompts), self.config
        for prompt in prompts:  # with T5, words past the CLIPs' 77 tokens reach the model through T5 alone
            if self.tokenizer_3 is None:
                check_prompt_tokens(self.tokenizer, prompt, cfg.text.max_length)
            else:
                check_prompt_tokens(self.tokenizer_3, prompt, cfg.t5_tokens)
        hidden, pooled = [], []
        for encoder, tokenizer, c in super().encoders():
            h, p = encode_text(encoder, tokenize(tokenizer, prompts, c.max_length).to(self.device), c)
            hidden.append(h)
            pooled.append(p)
        clip = torch.cat(hidden, dim=-1)
        width = cfg.mmdit.context_dim
        t5 = self.encode_t5(prompts, clip)
        context = torch.cat([F.pad(clip, (0, width - clip.shape[-1])), t5.to(clip)], dim=1)
        return context.to(self.dtype), torch.cat(pooled, dim=-1)

    @torch.no_grad()
    def encode_t5(self, prompts, like: torch.Tensor) -> torch.Tensor:
        """T5's hidden states (B, t5_tokens, 4096), or zeros without T5 (as diffusers' pipeline)."""
        cfg = self.config
        if self.text_encoder_3 is None:
            return like.new_zeros(len(prompts), cfg.t5_tokens, cfg.mmdit.context_dim)
        ids = tokenize(self.tokenizer_3, prompts, cfg.t5_tokens).to(self.device)
        return self.text_encoder_3(ids).last_hidden_state

    def encode_negative(self, negative_prompt: str | None) -> tuple:
        return self.encode_text(["" if negative_prompt is None else negative_prompt])
