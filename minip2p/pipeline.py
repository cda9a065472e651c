"""Loading a model and generating images: glue between the parts, no maths of its own."""

import inspect
import sys

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import defaults
from .attention import Controller
from .checks import (
    SEED_LIMIT,
    check_device,
    check_dtype,
    check_prompts,
    finite,
    in_range,
    size_pair,
    whole,
)
from .checks import seed as check_seed
from .ddim import DDIM, TRAIN_STEPS, guided
from .images import to_pil, to_tensor
from .inversion import Inversion, invert
from .layers import added_conditioning
from .p2p import make_edit
from .text import encode_text, tokenize
from .unet import UNet
from .vae import VAE

OUTPUTS = ("pil", "latent", "tensor")
EDIT_OPTIONS = set(inspect.signature(make_edit).parameters) - {"source", "target", "tokenizer"}


def choose_vae_dtype(cfg: ckpt.ModelConfig, dtype, vae_dtype):
    """The VAE's dtype: the one asked for, else the model's, except float32 for a VAE known to overflow in
    float16 (`cfg.vae.upcast`)."""
    if vae_dtype is not None:
        return check_dtype(vae_dtype)
    return torch.float32 if dtype == torch.float16 and cfg.vae.upcast else dtype


class Pipeline:
    """A loaded model: `unet(x, t, context)`, `vae.encode/decode` (unscaled latents), `text_encoder`,
    `tokenizer` (SDXL: also `text_encoder_2`, `tokenizer_2`), `config`; `generate` (text to image), `edit`
    (Prompt-to-Prompt) and `invert` (real images).
    """

    def __init__(
        self,
        config: ckpt.ModelConfig,
        unet: UNet,
        vae: VAE,
        text_encoder,
        tokenizer,
        text_encoder_2=None,
        tokenizer_2=None,
    ):
        self.config, self.unet, self.vae = config, unet, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2

    def encoders(self) -> list:
        """(text encoder, tokenizer, its config) for each text encoder, in the order of the context."""
        pairs = [(self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)]
        return [(e, t, c) for (e, t), c in zip(pairs, self.config.encoders)]

    def to(self, device=None, dtype: torch.dtype | None = None, vae_dtype: torch.dtype | None = None):
        """Move the models to a device and/or cast them to a dtype (in place) -> self.

        The VAE follows `dtype` unless `vae_dtype` says otherwise, or unless the model's VAE is known to
        overflow in float16 (`config.vae.upcast`): then it stays float32 under a float16 model."""
        device = None if device is None else check_device(device)
        dtype = None if dtype is None else check_dtype(dtype)
        vae_dtype = choose_vae_dtype(self.config, dtype, vae_dtype)
        text = [(e, dtype) for e, _, _ in self.encoders()]
        for m, d in [(self.unet, dtype), *text, (self.vae, vae_dtype)]:
            m.to(device=device, dtype=d).eval().requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's and text encoder's dtype (the sampler's arithmetic is fp32 whatever it is)."""
        return next(self.unet.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def probe(self) -> torch.Tensor:
        """A few of the model's weights (64 of the UNet's last conv), to tell one model from another."""
        return self.unet.out[2].weight.detach().flatten()[:64].float().cpu()

    @property
    def guidance_scale(self) -> float:
        """The default guidance: SD's 7.5, SDXL's 5.0 (diffusers' pipelines)."""
        sdxl = self.config.family == "sdxl"
        return defaults.SDXL_GUIDANCE_SCALE if sdxl else defaults.GUIDANCE_SCALE

    @property
    def factor(self) -> int:
        """Pixels per latent cell (8 for SD)."""
        return self.config.vae.factor

    def encode_prompts(self, prompts) -> torch.Tensor:
        """Prompts -> (B, 77, D) text hidden states (the context)."""
        return self.encode_text(prompts)[0]

    def encode_text(self, prompts) -> tuple:
        """Prompts -> (context (B, 77, D), pooled (B, P) or None). SDXL: the context is both encoders' hidden
        states side by side, each from its own tokens (the second tokenizer pads with "!", not end-of-text);
        the pooled embedding is the second's."""
        prompts = check_prompts(prompts)
        hidden, pooled = [], None
        for encoder, tokenizer, cfg in self.encoders():
            ids = tokenize(tokenizer, prompts, cfg.max_length).to(self.device)
            h, pooled = encode_text(encoder, ids, cfg)
            hidden.append(h)
        return torch.cat(hidden, dim=-1).to(self.dtype), pooled

    def encode_negative(self, negative_prompt: str | None) -> tuple:
        """The unconditional half of guidance -> (context (1, 77, D), pooled (1, P) or None). No negative
        prompt (None): zeros where the model was trained so (SDXL: diffusers' force_zeros_for_empty_prompt),
        else the empty prompt's embedding."""
        if negative_prompt is None and self.config.zero_negative:
            cfg, device = self.config, self.device
            context = torch.zeros(
                1, cfg.text.max_length, cfg.unet.context_dim, device=device, dtype=self.dtype
            )
            pooled = None if cfg.text_2 is None else torch.zeros(1, cfg.text_2.projection_dim, device=device)
            return context, pooled
        return self.encode_text(["" if negative_prompt is None else negative_prompt])

    def added_conditioning(self, pooled, height, width, original_size=None, crop=(0, 0), target_size=None):
        """SDXL's y for a (B, P) pooled embedding: pooled + the micro-conditioning sizes (as checked by
        `micro_conditioning`; by default the image's size, (0, 0), the image's size); None for a model
        without it."""
        if pooled is None:
            return None
        sizes = (*(original_size or (height, width)), *crop, *(target_size or (height, width)))
        sizes = torch.tensor([sizes], dtype=torch.float32, device=self.device)
        return added_conditioning(pooled, sizes.expand(pooled.shape[0], -1))

    def latent_shape(self, height: int, width: int) -> tuple:
        return (self.config.unet.in_channels, height // self.factor, width // self.factor)

    def initial_latent(self, seed: int, height: int, width: int) -> torch.Tensor:
        """One (1, C, h, w) noise latent for a seed, drawn on the CPU: the same on every device."""
        return self.noise(seed, None, height, width)[0]

    def check_size(self, height, width, max_size: int | None = None) -> tuple:
        """Image sizes -> (height, width), checked: positive multiples of what the model needs, at most
        max_size (by default 4x the model's own size: past it memory grows fast; going there is a choice)."""
        step = self.factor * 2 ** (len(self.config.unet.channel_mult) - 1)
        limit = 4 * self.config.image_size if max_size is None else whole(max_size, "max_size")
        for name, v in (("height", height), ("width", width)):
            whole(v, name)
            if v % step:
                raise ValueError(
                    f"{name}={v}: image sizes must be positive multiples of {step} for this model "
                    f"(VAE factor {self.factor} x UNet factor {step // self.factor})"
                )
            if v > limit:
                raise ValueError(
                    f"{name}={v} is more than {limit}, 4x this model's {self.config.image_size} px; pass "
                    f"max_size={v} (--max-size {v}) to go past it"
                )
        return height, width

    def noise(self, seed, generator, height, width) -> tuple:
        """The start latent (1, C, h, w) and the generator that later noise (eta) comes from. With neither
        seed nor generator, a seed is drawn and reported on stderr, so that a good image can be made again."""
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, SEED_LIMIT, ()))
                print(f"seed {seed} (drawn at random; pass seed={seed} to repeat)", file=sys.stderr)
            generator = torch.Generator("cpu").manual_seed(check_seed(seed))
        shape = (1, *self.latent_shape(height, width))
        noise = torch.randn(shape, generator=generator, device=generator.device)
        return noise.to(self.device), generator

    def start_latents(self, prompts: int, seed, generator, latents, height, width) -> tuple:
        """(prompts, C, h, w) start latents, one noise shared by all prompts; the generator of later noise."""
        shape = self.latent_shape(height, width)
        if latents is None:
            latents, generator = self.noise(seed, generator, height, width)
        elif generator is None:
            generator = torch.Generator("cpu").manual_seed(check_seed(0 if seed is None else seed))
        if tuple(latents.shape[1:]) != shape or latents.shape[0] not in (1, prompts):
            raise ValueError(
                f"latents must have shape (1 or {prompts}, {', '.join(map(str, shape))}), "
                f"not {tuple(latents.shape)}"
            )
        if not torch.isfinite(latents).all():
            raise ValueError("latents hold NaN or infinite values")
        return latents.to(self.device, torch.float32).expand(prompts, *shape).clone(), generator

    @torch.no_grad()
    def sample(
        self,
        prompts,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | None = None,
        latents: torch.Tensor | None = None,
        controller: Controller | None = None,
        progress: bool = True,
        eta: float = defaults.ETA,
        steps_offset: int = 1,
        inversion: Inversion | None = None,
        max_size: int | None = None,
        original_size: tuple | None = None,
        crops_coords_top_left: tuple = (0, 0),
        target_size: tuple | None = None,
    ) -> torch.Tensor:
        """The DDIM loop with classifier-free guidance -> final latents (B, C, h, w), in UNet (scaled) units.

        Every prompt starts from the same noise: `latents`, else drawn from `generator` or `seed`. With
        `inversion` (from `invert`), sampling starts from its noise and uses its per-step null embeddings,
        steps, guidance and schedule, so that the first prompt reconstructs the inverted image. No
        negative_prompt: the empty prompt (SD), zero embeddings (SDXL), as diffusers' pipelines do. SDXL only:
        original_size, crops_coords_top_left, target_size (micro-conditioning; diffusers' names and
        defaults: the image's size, (0, 0), the image's size)."""
        prompts = check_prompts(prompts)
        if inversion is not None:
            inversion.check(self, prompts[0])
            steps, guidance_scale, steps_offset, latents = inversion.settings(
                steps, guidance_scale, negative_prompt
            )
            height, width = (s * self.factor for s in latents.shape[2:])
        steps = whole(defaults.STEPS if steps is None else steps, "steps", 1, TRAIN_STEPS)
        guidance_scale = self.guidance_scale if guidance_scale is None else guidance_scale
        guidance_scale = finite(guidance_scale, "guidance")
        eta = in_range(eta, "eta", 0.0, 1.0)
        default = self.config.image_size
        height = default if height is None else height
        width = default if width is None else width
        height, width = self.check_size(height, width, max_size)
        sizes = self.micro_conditioning(original_size, crops_coords_top_left, target_size, inversion)
        ddim = DDIM(steps, steps_offset, self.config.prediction)
        cond, pooled = self.encode_text(prompts)
        if inversion is None:
            uncond, uncond_pooled = self.encode_negative(negative_prompt)
        else:
            uncond_pooled = inversion.null_pooled
        y = None
        if pooled is not None:
            y = torch.cat([uncond_pooled.to(pooled).expand_as(pooled), pooled])
            y = self.added_conditioning(y, height, width, *sizes)
        x, generator = self.start_latents(len(prompts), seed, generator, latents, height, width)
        if controller is not None:
            controller.start(steps, x.shape[2:], self.device)
        for i, t in enumerate(tqdm(ddim.timesteps, desc="sampling", disable=not progress, leave=False)):
            source = None
            if inversion is not None:
                uncond = inversion.null_embeddings[i]
                source = inversion.source_latent(i)
            context = torch.cat([uncond.to(cond).expand_as(cond), cond])
            x = self.denoise_step(
                ddim, i, t, x, context, guidance_scale, eta, generator, controller, source, y
            )
        return x

    def micro_conditioning(self, original_size, crop, target_size, inversion) -> tuple:
        """SDXL's size arguments, checked before any work; an error for other models, and with an inversion
        (made with the defaults)."""
        sizes = (
            None if original_size is None else size_pair(original_size, "original_size"),
            size_pair(crop, "crops_coords_top_left"),
            None if target_size is None else size_pair(target_size, "target_size"),
        )
        if sizes != (None, (0, 0), None):
            names = "original_size, crops_coords_top_left, target_size"
            if self.config.text_2 is None:
                raise ValueError(f"{names}: only SDXL takes them (micro-conditioning)")
            if inversion is not None:
                raise ValueError(
                    f"{names}: an inversion was made with the defaults (the image's size, (0, 0)); sampling "
                    "from it must use them too"
                )
        return sizes

    def denoise_step(
        self, ddim, i, t, x, context, guidance_scale, eta, generator, controller, source=None, y=None
    ) -> torch.Tensor:
        """Step i: the controller's hooks around one UNet call on the guidance batch [x, x], then DDIM. With
        `source` (Direct Inversion), the source branch is put there before the controller sees the step, so
        that LocalBlend copies the exact reconstruction."""
        if controller is not None:
            controller.before_step(i)
        out_uncond, out_cond = self.predict(torch.cat([x, x]), t, context, controller, y).chunk(2)
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x) if eta > 0 else None
        x = ddim.step(guided(out_uncond, out_cond, guidance_scale), t, x, eta, noise)
        if source is not None:
            x[:1] = source.to(x)
        if controller is not None:
            x = controller.after_step(i, x)
        if not torch.isfinite(x).all():
            raise ValueError(
                f"sampling gave NaN or infinite latents at step {i + 1} of {len(ddim.timesteps)}: the model "
                f"overflowed (float16 does where bfloat16 and float32 do not: load with dtype=torch.float32) "
                f"or a setting is extreme (guidance_scale={guidance_scale:g})"
            )
        return x

    def predict(self, x, t, context, controller=None, y=None) -> torch.Tensor:
        """The UNet's prediction for fp32 latents x at timestep t, in fp32: the model runs in its own dtype,
        the sampler's arithmetic (guidance, the DDIM update, LocalBlend) stays in fp32 whatever that is.
        y: SDXL's added conditioning (`added_conditioning`)."""
        return self.unet(x.to(self.dtype), t.to(self.device), context, controller, y).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet-space latents -> images (B, 3, H, W) in [-1, 1], in the VAE's dtype."""
        latents = latents.float() / self.config.vae.scale_factor
        return self.vae.decode(latents.to(self.device, self.vae_dtype))

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images ((B, 3, H, W) in [-1, 1], or PIL) -> UNet-space latents (the VAE's mean x scale factor)."""
        if not isinstance(images, torch.Tensor):
            images = to_tensor(images)
        latents = self.vae.encode(images.to(self.device, self.vae_dtype))[0]
        return latents.float() * self.config.vae.scale_factor

    def generate(self, prompts, *, output: str = "pil", **sampling):
        """Text to image, one image per prompt, all from the same initial noise (`sample`'s options; 50 steps
        and guidance 7.5 (SDXL: 5.0) unless given). output: "pil" (a list of PIL images), "tensor" ((B, 3, H,
        W) in [-1, 1]) or "latent" (UNet-space latents, before the VAE)."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
        x = self.sample(prompts, **sampling)
        if output == "latent":
            return x
        images = self.decode(x)
        return images if output == "tensor" else to_pil(images)

    def invert(self, image, prompt: str, **options) -> Inversion:
        """Invert a real image (path, PIL or tensor) described by `prompt` -> `Inversion` for `generate`
        (`inversion.invert`'s options: method, steps, guidance_scale, ...)."""
        return invert(self, image, prompt, **options)

    def edit(self, source_prompt: str, target_prompt: str, **options):
        """Prompt-to-Prompt in one call -> [source image, edited image] from the same noise.

        Options of `p2p.make_edit`: kind ("replace": a word swap, same word count; "refine": words added or
        removed; "reweight": the target's attention scaled by `reweight`, {word: scale}; by default replace
        for equal word counts, refine otherwise, reweight for identical prompts with `reweight`, which chains
        on the other kinds), cross_replace_steps, self_replace_steps, self_max_fraction, blend (words whose
        region the edit is confined to, LocalBlend, each looked up in both prompts), reweight, store. The
        others go to `generate` (seed, steps, inversion, ...)."""
        edit_options = {k: options.pop(k) for k in list(options) if k in EDIT_OPTIONS}
        controller = make_edit(source_prompt, target_prompt, self.tokenizer, **edit_options)
        return self.generate([source_prompt, target_prompt], controller=controller, **options)
