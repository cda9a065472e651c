"""Loading a model and generating images: glue between the parts, no maths of its own."""

import inspect
from collections import deque
from functools import partial

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import defaults, sampling
from .batch import make_edits
from .checks import check_device, check_dtype, check_prompt_tokens, check_prompts
from .ddim import DDIM, denoise
from .dpm import DPMSolver
from .images import to_pil, to_tensor
from .inversion import Inversion, invert
from .layers import size_conditioning
from .p2p import make_edit
from .recording import Recording, record
from .text import encode_text, tokenize
from .unet import UNet
from .vae import VAE

OUTPUTS = ("pil", "latent", "tensor")
EDIT_OPTIONS = set(inspect.signature(make_edit).parameters) - {"source", "target", "tokenizer"}


def check_output_kind(output: str):
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")


def choose_vae_dtype(cfg: ckpt.ModelConfig, dtype, vae_dtype):
    """The VAE's dtype: the one asked for, else the model's, except float32 for a VAE known to overflow in
    float16 (`cfg.vae.upcast`)."""
    if vae_dtype is not None:
        return vae_dtype
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
        vae_dtype = None if vae_dtype is None else check_dtype(vae_dtype)
        return self.place(device, dtype, choose_vae_dtype(self.config, dtype, vae_dtype))

    def place(self, device, dtype, vae_dtype):
        """`to` with its arguments checked (and the VAE's dtype chosen) -> self."""
        text = [(e, dtype) for e, _, _ in self.encoders()]
        for m, d in [(self.denoiser, dtype), *text, (self.vae, vae_dtype)]:
            m.to(device=device, dtype=d).eval().requires_grad_(False)
        return self

    @property
    def denoiser(self):
        """The network sampling calls: the UNet (SD3: the MM-DiT)."""
        return self.unet

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's and text encoder's dtype (the sampler's arithmetic is fp32 whatever it is)."""
        return next(self.denoiser.parameters()).dtype

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
    def samplers(self) -> tuple:
        """The samplers this model takes, its default first."""
        return defaults.SAMPLERS

    def default_steps(self, sampler: str | None = None) -> int:
        return defaults.DPM_STEPS if sampler == "dpm++" else defaults.STEPS

    def scheduler(self, steps: int, steps_offset=1, eta=0.0, sampler=None, follow_ddim=False):
        """The sampler of `steps` steps (checked): DDIM, or DPM-Solver++ (on DDIM's timesteps where it
        follows a DDIM inversion), with the model's prediction."""
        if sampler == "dpm++":
            timesteps = DDIM(steps, steps_offset).timesteps if follow_ddim else None
            return DPMSolver(steps, steps_offset, self.config.prediction, timesteps)
        return DDIM(steps, steps_offset, self.config.prediction, eta)

    def added_conditioning(self, pooled, height, width, sizes=(None, (0, 0), None)):
        """The model's y for (B, P) pooled text embeddings: SDXL's, with the image sizes."""
        return size_conditioning(pooled, height, width, *sizes)

    @property
    def context_shape(self) -> tuple:
        """(tokens, width) of one prompt's context; the pooled width (None: no pooled embedding)."""
        cfg = self.config
        return (cfg.text.max_length, cfg.unet.context_dim), getattr(cfg.text_2, "projection_dim", None)

    @property
    def pixels_per_cell(self) -> int:
        """Pixels per latent cell along each side (8 for SD)."""
        return self.config.vae.pixels_per_cell

    def encode_prompts(self, prompts) -> torch.Tensor:
        """Prompts -> (B, 77, D) text hidden states (the context)."""
        return self.encode_text(prompts)[0]

    def encode_text(self, prompts) -> tuple:
        """Prompts -> (context (B, 77, D), pooled (B, P) or None). SDXL: the context is both encoders' hidden
        states side by side, each from its own tokens (the second tokenizer pads with "!", not end-of-text);
        the pooled embedding is the second's."""
        prompts = check_prompts(prompts)
        for prompt in prompts:
            check_prompt_tokens(self.tokenizer, prompt, self.config.text.max_length)
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

    def latent_shape(self, height: int, width: int) -> tuple:
        cell = self.pixels_per_cell
        return (self.config.vae.z_channels, height // cell, width // cell)

    def initial_latent(self, seed: int, height: int, width: int) -> torch.Tensor:
        """One (1, C, h, w) noise latent for a seed, drawn on the CPU: the same on every device."""
        return sampling.seed_noise(self, seed, None, (height, width))[0]

    def steps(self, prompts, **options):
        """The sampling loop as a generator: one `ddim.Step` (i, t, latents after the step, predicted x0) per
        DDIM step, with classifier-free guidance and the controller's hooks. Every option is checked (and the
        prompts encoded) before this returns; the options are `sampling.Options`'.

        Every prompt starts from the same noise: `latents`, else drawn from `generator` or `seed`. With
        `inversion` (from `invert`), sampling starts from its noise and uses its per-step null embeddings,
        steps, guidance and schedule, so that the first prompt reconstructs the inverted image."""
        return self.run(*self.plan(prompts, options))

    def options(self, options: dict) -> sampling.Options:
        unknown = set(options) - sampling.OPTIONS
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)}: sampling takes {sorted(sampling.OPTIONS)}"
            )
        return sampling.Options(**options)

    def run(self, p: sampling.Plan, o: sampling.Options):
        """A plan's steps, as the generator `steps` returns."""
        model = partial(self.predict, controller=p.attends)
        records = denoise(model, p.ddim, p.latents, p.guidance, p.controller, p.noise, p.sources)
        bar = tqdm(records, total=p.ddim.steps, desc="sampling", disable=not o.progress, leave=False)
        return sampling.finite_steps(bar, p.ddim.steps, p.guidance.scale)

    @torch.no_grad()
    def sample(self, prompts, **options) -> torch.Tensor:
        """`steps` run to the end -> the final latents (B, C, h, w), in UNet (scaled) units."""
        last = deque(self.steps(prompts, **options), maxlen=1)  # runs every step, keeps the last record
        return last[0].latents

    def predict(self, x, t, context, y=None, controller=None) -> torch.Tensor:
        """The UNet's prediction for fp32 latents x at timestep t, in fp32: the model runs in its own dtype,
        the sampler's arithmetic (guidance, the DDIM update, LocalBlend) stays in fp32 whatever that is.
        y: SDXL's added conditioning (`added_conditioning`)."""
        return self.denoiser(x.to(self.dtype), t.to(self.device), context, controller, y).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet-space latents -> images (B, 3, H, W) in [-1, 1], in the VAE's dtype."""
        vae = self.config.vae
        latents = latents.float() / vae.scale_factor + vae.shift_factor
        return self.vae.decode(latents.to(self.device, self.vae_dtype))

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images ((B, 3, H, W) in [-1, 1], or PIL) -> UNet-space latents (the VAE's mean x scale factor)."""
        if not isinstance(images, torch.Tensor):
            images = to_tensor(images)
        latents = self.vae.encode(images.to(self.device, self.vae_dtype))[0]
        return (latents.float() - self.config.vae.shift_factor) * self.config.vae.scale_factor

    def generate(self, prompts, *, output: str = "pil", **options):
        """Text to image, one image per prompt, all from the same initial noise (`sample`'s options; 50 steps
        and guidance 7.5 (SDXL: 5.0) unless given). output: "pil" (a list of PIL images), "tensor" ((B, 3, H,
        W) in [-1, 1]) or "latent" (UNet-space latents, before the VAE)."""
        check_output_kind(output)
        return self.output(self.sample(prompts, **options), output)

    def invert(self, image, prompt: str, **options) -> Inversion:
        """Invert a real image (path, PIL or tensor) described by `prompt` -> `Inversion` for `generate`
        (`inversion.invert`'s options: method, steps, guidance_scale, ...)."""
        return invert(self, image, prompt, **options)

    def edit(self, source, target, **options):
        """Prompt-to-Prompt in one call -> [source image, edited image] from the same noise; with a list of
        targets, [source image, one edit per target], all in one sampling pass.

        source: the source prompt, or a `Recording` of it (`record`: only the targets are sampled). Options of
        `p2p.make_edit`: kind ("replace": a word swap, same word count; "refine": words added or removed;
        "reweight": the target's attention scaled by `reweight`, {word: scale}; by default replace for equal
        word counts, refine otherwise, reweight for identical prompts with `reweight`, which chains on the
        other kinds), cross_replace_steps, self_replace_steps (None: 0.4; an MM-DiT's 0.6), self_max_fraction,
        blend (words whose region the edit is confined to, LocalBlend, each looked up in both prompts),
        reweight, store. With several targets each option is one value for all or a list of one per target
        (`batch.per_target`). The others go to `generate` (seed, steps, sampler, inversion, ...)."""
        recording = source if isinstance(source, Recording) else options.pop("recording", None)
        source = source.prompt if isinstance(source, Recording) else source
        edit_options = {k: options.pop(k) for k in list(options) if k in EDIT_OPTIONS}
        several = isinstance(target, list)
        controller = (make_edits if several else make_edit)(source, target, self.tokenizer, **edit_options)
        targets = target if several else [target]
        if recording is None:
            return self.generate([source, *targets], controller=controller, **options)
        recording.check(self, source, controller.edits if several else [controller])
        return self.replay(recording, targets, controller, **options)

    def replay(self, recording, targets: list, controller, *, output: str = "pil", **options):
        """An edit's targets sampled alone, its source's branch from `recording` -> the images of [source,
        *targets], as `generate` gives them."""
        check_output_kind(output)
        x = self.sample(targets, controller=controller, recording=recording, **options)
        return self.output(torch.cat([recording.latents[-1].to(x), x]), output)

    def output(self, latents, output: str):
        """Final latents -> what `generate` returns for `output`."""
        if output == "latent":
            return latents
        images = self.decode(latents)
        return images if output == "tensor" else to_pil(images)

    def record(self, prompt: str | None = None, *, self_max_fraction=defaults.SELF_MAX_FRACTION, **options):
        """The source branch of later edits, sampled once -> `Recording` (its latents after every step, its
        maps at every place an edit reads; `edit(recording, target)` samples only the target). Sampling
        options as `generate`'s; with `inversion`, the inverted image's (prompt: the inversion's)."""
        return record(self, prompt, self_max_fraction, **options)

    def plan(self, prompts, options: dict) -> tuple:
        """-> (sampling.Plan, sampling.Options) for `run`: every option checked, the prompts encoded."""
        recording = options.get("recording")
        if recording is not None:  # its own noise, steps and settings, whoever samples from it
            given = {k: v for k, v in options.items() if k != "recording"}
            options = {**recording.sampling(given), "recording": recording}
        o = self.options(options)
        with torch.no_grad():
            return sampling.plan(self, prompts, o), o
