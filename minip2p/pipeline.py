"""Loading a model and generating images: glue between the parts, no maths of its own."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checkpoint as ckpt
from .ddim import DDIM
from .progress import Progress
from .text import TOKENIZER_DIR, build_text_encoder, encode_text, load_tokenizer, tokenize
from .unet import UNet
from .vae import VAE


def load(path=None, device="cpu", dtype=torch.float32, prediction=None):
    """Load a model: a single-file .safetensors (SD1.x, SD2.x, or ours), or a diffusers folder.

    path=None loads the bundled shapes-world model. `prediction` ("epsilon" or "v") overrides what the file
    says or implies: v-prediction (SD2 768-v models) is not visible in the weights.
    """
    if path is None:
        path = ckpt.BUNDLED
        if not path.exists():
            raise FileNotFoundError(f"the bundled model {path} is not in this checkout; pass the path of a "
                                    f"Stable Diffusion checkpoint (see weights/README.md)")
    path = Path(path)
    tokenizer_dir = None
    if path.is_dir():
        from .diffusers_folder import read_diffusers_folder
        cfg, (unet_sd, vae_sd, text_sd), tokenizer_dir = read_diffusers_folder(path, prediction)
    else:
        tensors, meta = ckpt.read_safetensors(path)
        cfg = ckpt.infer_config(tensors, meta, path, prediction)
        unet_sd, vae_sd, text_sd = ckpt.split_parts(tensors, cfg)
        del tensors
    with torch.device("meta"):
        unet, vae = UNet(cfg.unet), VAE(cfg.vae)
    text_encoder = build_text_encoder(cfg.text)
    prefixes = (ckpt.UNET, ckpt.VAE_, ckpt.OPENCLIP if cfg.family == "sd2" else ckpt.CLIP)
    for sd, model, what, prefix in zip((unet_sd, vae_sd, text_sd), (unet, vae, text_encoder),
                                       ("UNet", "VAE", "text encoder"), prefixes):
        expected = {k: v.shape for k, v in model.state_dict().items()}
        ckpt.check_state_dict(sd, expected, path, what, "" if path.is_dir() else prefix)
    tokenizer = load_tokenizer(cfg.text, tokenizer_dir or TOKENIZER_DIR)
    cast = lambda sd: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    unet.load_state_dict(cast(unet_sd), strict=True, assign=True)
    vae.load_state_dict(cast(vae_sd), strict=True, assign=True)
    text_encoder.load_state_dict(cast(text_sd), strict=True)
    modules = [m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in (unet, vae, text_encoder)]
    return Pipeline(cfg, *modules, tokenizer)


def to_pil(images):
    """(B, 3, H, W) in [-1, 1] -> list of PIL images."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in x]


def default_edit_kind(source_prompt, target_prompt, reweight=None):
    """replace for equal word counts, refine otherwise, reweight for identical prompts with a reweight."""
    if reweight and source_prompt == target_prompt:
        return "reweight"
    return "replace" if len(source_prompt.split()) == len(target_prompt.split()) else "refine"


class Pipeline:
    """A loaded model: `unet(x, t, context)`, `vae.encode/decode` (unscaled latents), `text_encoder`,
    `tokenizer`, `config`; and `generate`, the text-to-image loop."""

    def __init__(self, config, unet, vae, text_encoder, tokenizer):
        self.config, self.unet, self.vae, self.text_encoder, self.tokenizer = config, unet, vae, text_encoder, tokenizer

    @property
    def device(self):
        return next(self.unet.parameters()).device

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype

    @property
    def factor(self):
        """Pixels per latent cell (8 for SD)."""
        return self.config.vae.factor

    def encode_prompts(self, prompts):
        """Prompts -> (B, 77, D) text hidden states."""
        ids = tokenize(self.tokenizer, prompts, self.config.text.max_length).to(self.device)
        return encode_text(self.text_encoder, ids, self.config.text.penultimate).to(self.dtype)

    def initial_latent(self, seed, height, width):
        """One (1, C, h, w) noise latent for a seed, drawn on the CPU so it is the same on every device."""
        g = torch.Generator("cpu").manual_seed(seed)
        shape = (1, self.config.unet.in_channels, height // self.factor, width // self.factor)
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)

    def check_size(self, height, width):
        step = self.factor * 2 ** (len(self.config.unet.channel_mult) - 1)
        for name, v in (("height", height), ("width", width)):
            if v <= 0 or v % step:
                raise ValueError(f"{name}={v}: image sizes must be positive multiples of {step} for this model "
                                 f"(VAE factor {self.factor} x UNet factor {step // self.factor})")

    @torch.no_grad()
    def sample(self, prompts, seed=None, steps=None, guidance_scale=None, height=None, width=None, negative_prompt="",
               latents=None, controller=None, progress=True, eta=0.0, steps_offset=1, inversion=None):
        """The DDIM loop with classifier-free guidance -> final latents (B, C, h, w), in UNet (scaled) units.

        With `inversion` (from `invert`), sampling starts from its noise and uses its per-step null embeddings,
        steps, guidance and schedule, so that the first prompt reconstructs the inverted image."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("give at least one prompt")
        if inversion is not None:
            for name, given, own in (("steps", steps, inversion.steps), ("guidance_scale", guidance_scale,
                                                                          inversion.guidance_scale)):
                if given is not None and given != own:
                    raise ValueError(f"{name}={given} differs from the inversion's {own}; leave it out")
            if negative_prompt:
                raise ValueError("negative_prompt cannot be used with an inversion: its null embeddings take that place")
            steps, guidance_scale, steps_offset = inversion.steps, inversion.guidance_scale, inversion.steps_offset
            latents, seed = inversion.latent, 0
            height, width = (s * self.factor for s in inversion.latent.shape[2:])
        steps, guidance_scale = steps or 50, 7.5 if guidance_scale is None else guidance_scale
        height, width = height or self.config.image_size, width or self.config.image_size
        self.check_size(height, width)
        ddim = DDIM(steps, steps_offset, self.config.prediction)
        cond = self.encode_prompts(prompts)
        if inversion is None:
            context = torch.cat([self.encode_prompts([negative_prompt]).expand_as(cond), cond])
        b, shape = len(prompts), (self.config.unet.in_channels, height // self.factor, width // self.factor)
        if latents is None:
            seed = int(torch.randint(0, 2 ** 31 - 1, ())) if seed is None else seed
            latents = self.initial_latent(seed, height, width)
        if tuple(latents.shape[1:]) != shape or latents.shape[0] not in (1, b):
            raise ValueError(f"latents must have shape (1 or {b}, {', '.join(map(str, shape))}), "
                             f"not {tuple(latents.shape)}")
        x = latents.to(self.device, self.dtype).expand(b, *shape).clone()
        gen = torch.Generator("cpu").manual_seed(0 if seed is None else seed + 1)
        bar = Progress(steps, progress)
        if controller is not None:
            controller.start(steps, shape[1:], self.device)
        for i, t in enumerate(ddim.timesteps):
            if controller is not None:
                controller.begin_step(i)
            if inversion is not None:
                context = torch.cat([inversion.null_embeddings[i].to(cond).expand_as(cond), cond])
            out = self.unet(torch.cat([x, x]), t.to(self.device), context, controller)
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
            noise = torch.randn(x.shape, generator=gen).to(x) if eta > 0 else None
            x = ddim.step(out, t, x, eta, noise)
            if controller is not None:
                x = controller.step_end(i, x)
            bar.update()
        return x

    @torch.no_grad()
    def decode(self, latents):
        """UNet-space latents -> images (B, 3, H, W) in [-1, 1]."""
        return self.vae.decode(latents / self.config.vae.scale_factor)

    @torch.no_grad()
    def encode(self, images):
        """Images ((B, 3, H, W) in [-1, 1], or a PIL image) -> UNet-space latents (VAE mean x scale factor)."""
        if isinstance(images, Image.Image):
            from .inversion import to_tensor
            images = to_tensor(images.convert("RGB"))
        return self.vae.encode(images.to(self.device, self.dtype))[0] * self.config.vae.scale_factor

    def generate(self, prompts, seed=None, steps=None, guidance_scale=None, height=None, width=None,
                 negative_prompt="", latents=None, controller=None, progress=True, eta=0.0, inversion=None):
        """Text to image: a list of PIL images, one per prompt, all from the same initial noise (50 steps and
        guidance 7.5 unless given)."""
        x = self.sample(prompts, seed, steps, guidance_scale, height, width, negative_prompt, latents, controller,
                        progress, eta, inversion=inversion)
        return to_pil(self.decode(x))

    def invert(self, image, prompt, method="null-text", steps=50, guidance_scale=7.5, **kw):
        """Invert a real image (path, PIL or tensor) described by `prompt` -> `Inversion` for `generate`."""
        from .inversion import invert
        return invert(self, image, prompt, method, steps, guidance_scale, **kw)

    def edit(self, source_prompt, target_prompt, kind=None, seed=None, cross_replace_steps=0.8,
             self_replace_steps=0.4, blend=None, reweight=None, store=None, self_max_fraction=0.25,
             **generate_kwargs):
        """Prompt-to-Prompt in one call -> [source image, edited image] from the same noise.

        kind: "replace" (word swap, same word count), "refine" (words added or removed) or "reweight" (target
        prompt's attention scaled by `reweight`, {word: scale}); by default replace for equal word counts,
        refine otherwise, reweight for identical prompts with `reweight`. `reweight` with another kind chains.
        blend: words whose region the edit is confined to (LocalBlend); each is looked up in both prompts.
        Defaults are the paper notebook's: cross_replace_steps 0.8, self_replace_steps 0.4, self-attention replaced
        up to self_max_fraction 1/4 of the latent size (after an inversion, 0.8 and 1.0 hold the structure better).
        """
        controller = self.edit_controller(source_prompt, target_prompt, kind, cross_replace_steps, self_replace_steps,
                                          blend, reweight, store, self_max_fraction)
        return self.generate([source_prompt, target_prompt], seed=seed, controller=controller, **generate_kwargs)

    def edit_controller(self, source_prompt, target_prompt, kind=None, cross_replace_steps=0.8,
                        self_replace_steps=0.4, blend=None, reweight=None, store=None, self_max_fraction=0.25):
        """The controller `edit` runs (see there); building it checks every word and setting, so a caller about to
        do slow work first (an inversion) can fail before it."""
        from .align import clean
        from .p2p import LocalBlend, Refine, Replace, Reweight, reweight_scales
        prompts = [source_prompt, target_prompt]
        local_blend = None
        if blend:
            per_prompt = [[w for w in blend if clean(w) in map(clean, p.split())] for p in prompts]
            missing = [w for w in blend if not any(w in ws for ws in per_prompt)]
            if missing:
                raise ValueError(f"blend word(s) {missing} are in neither prompt: {prompts}")
            local_blend = LocalBlend([ws or [0] for ws in per_prompt])
        kw = dict(cross_replace_steps=cross_replace_steps, self_replace_steps=self_replace_steps,
                  self_max_fraction=self_max_fraction, local_blend=local_blend, store=store)
        kind = kind or default_edit_kind(source_prompt, target_prompt, reweight)
        kinds = {"replace": Replace, "refine": Refine}
        if kind not in (*kinds, "reweight"):
            raise ValueError(f"kind must be 'replace', 'refine' or 'reweight', not {kind!r}")
        if kind == "reweight" and not reweight:
            raise ValueError("kind='reweight' needs reweight={word: scale}")
        controller = kinds[kind](prompts, self.tokenizer, **kw) if kind in kinds else None
        if reweight:
            scales = reweight_scales(target_prompt, list(reweight), list(reweight.values()), self.tokenizer)
            controller = Reweight(prompts, self.tokenizer, scales, base=controller, **kw)
        return controller
