"""What a user asks of sampling, checked once where it enters (`Pipeline.steps`), and turned into what the
sampling loop (`ddim.denoise`) runs: the schedule, the start latents, the guidance, the controller."""

import sys
from dataclasses import dataclass, fields

import torch

from . import defaults
from .attention import Controller
from .checks import (
    SEED_LIMIT,
    check_finite,
    check_image_size,
    check_prompts,
    check_range,
    check_seed,
    check_size_pair,
    check_whole,
)
from .ddim import TRAIN_STEPS, Guidance
from .inversion import Inversion
from .recording import Recording, Replay


@dataclass(frozen=True)
class Options:
    """The options of `Pipeline.steps`, `sample`, `generate` and `edit` (keyword arguments), with defaults."""

    seed: int | None = None  # the start noise (None: drawn at random and reported on stderr)
    generator: torch.Generator | None = None  # or draw the start noise (and eta's) from this generator
    steps: int | None = None  # sampling steps (None: 50 DDIM steps; SD3: 28 Euler steps)
    guidance_scale: float | None = None  # classifier-free guidance (None: 7.5; SDXL 5.0; SD3 7.0)
    height: int | None = None  # image size in pixels (None: the model's)
    width: int | None = None
    negative_prompt: str | None = None  # the unconditional half (None: "" for SD and SD3, zeros for SDXL)
    latents: torch.Tensor | None = None  # (1 or B, C, h, w) start latents instead of a seed's noise
    controller: Controller | None = None  # an edit or an AttentionStore, called at every attention
    progress: bool = True  # a tqdm progress bar
    eta: float = defaults.ETA  # DDIM's eta: 0 is deterministic, 1 adds DDPM's noise
    sampler: str | None = None  # "ddim" or "dpm++" (DPM-Solver++(2M)); None: the model's (DDIM; SD3 Euler)
    steps_offset: int = 1  # 1: diffusers' schedule; 0: the null-text code's
    inversion: Inversion | None = None  # sample from an inverted real image (its noise, nulls, steps)
    recording: Recording | None = None  # the source's branch, recorded: only the prompts given are sampled
    max_size: int | None = None  # the largest height or width allowed (None: 4x the model's size)
    original_size: tuple | None = None  # SDXL micro-conditioning (None: the image's size)
    crops_coords_top_left: tuple = (0, 0)  # SDXL micro-conditioning
    target_size: tuple | None = None  # SDXL micro-conditioning (None: the image's size)


OPTIONS = {f.name for f in fields(Options)}


@dataclass
class Plan:
    """What `ddim.denoise` runs, every input checked."""

    ddim: object  # the sampler: ddim.DDIM, or flow.FlowMatchEuler for SD3
    latents: torch.Tensor  # (B, C, h, w) fp32 start latents, one noise shared by all prompts
    guidance: Guidance
    controller: Controller  # its step hooks run always (with no controller: do-nothing ones)
    attends: Controller | None  # what attention asks (None: nothing asks; the fused kernels everywhere)
    noise: object  # () -> fresh noise for eta > 0, or None
    sources: torch.Tensor | None  # Direct Inversion: (steps, 1, C, h, w) where the source is after each step


def plan(pipe, prompts, o: Options) -> Plan:
    """Options -> Plan: every check first (one line each), then the text encoders and the start noise."""
    prompts, inv, rec = check_prompts(prompts), o.inversion, o.recording
    steps, scale, offset, latents = o.steps, o.guidance_scale, o.steps_offset, o.latents
    if inv is not None:
        inv.check(pipe, prompts[0] if rec is None else rec.prompt)
        steps, scale, offset, latents = inv.settings(steps, scale, o.negative_prompt)
    sampler, eta = check_sampler(pipe, o.sampler, o.eta, inv)
    steps = check_whole(pipe.default_steps(sampler) if steps is None else steps, "steps", 1, TRAIN_STEPS)
    scale = check_finite(pipe.guidance_scale if scale is None else scale, "guidance")
    if inv is not None:
        height, width = (s * pipe.pixels_per_cell for s in latents.shape[2:])
    else:
        height, width = (pipe.config.image_size if s is None else s for s in (o.height, o.width))
    height, width = check_image_size(pipe.config, height, width, o.max_size)
    sizes = micro_conditioning(pipe, o)
    x, generator = start_latents(pipe, len(prompts), o, latents, (height, width))
    cond, pooled = pipe.encode_text(prompts)
    if inv is None:
        null, null_pooled = pipe.encode_negative(o.negative_prompt)
        nulls = null[None].expand(steps, -1, -1, -1)
    else:
        nulls, null_pooled = inv.null_embeddings[:, None], inv.null_pooled
    y = None
    if pooled is not None:
        y = torch.cat([null_pooled.to(pooled).expand_as(pooled), pooled])
        y = pipe.added_conditioning(y, height, width, sizes)
    noise = None if eta == 0 else lambda: torch.randn(x.shape, generator=generator).to(x)
    direct = inv is not None and inv.method == "direct" and rec is None  # a recording holds the source
    sources = inv.trajectory.flip(0)[1:].to(x) if direct else None
    controller = o.controller or Controller()  # with no controller, its hooks do nothing
    controller = controller if rec is None else Replay(controller, rec)
    controller.start(steps, x.shape[2:], pipe.device)
    attends = None if o.controller is None and rec is None else controller
    ddim = pipe.scheduler(steps, offset, eta, sampler, follow_ddim=inv is not None)
    return Plan(ddim, x, Guidance(cond, nulls, scale, y), controller, attends, noise, sources)


def check_sampler(pipe, sampler, eta, inversion) -> tuple:
    """(sampler, eta), checked: one of the model's samplers (None: its default); eta is DDIM's; an inversion
    is DDIM's steps run backwards, which DPM-Solver++ can only follow with Direct Inversion's resets."""
    sampler = pipe.samplers[0] if sampler is None else sampler
    if sampler not in pipe.samplers:
        raise ValueError(f"sampler must be one of {list(pipe.samplers)} for this model, not {sampler!r}")
    eta = check_range(eta, "eta", 0.0, 1.0)
    if eta and sampler != "ddim":
        raise ValueError(
            f"eta is DDIM's noise; sampler {sampler!r} samples deterministically: leave eta at 0"
        )
    if sampler == "dpm++" and inversion is not None and inversion.method != "direct":
        raise ValueError(
            f"sampler 'dpm++' cannot retrace a {inversion.method!r} inversion (made of DDIM steps): sample "
            "it with sampler='ddim', or invert with method='direct', whose source is put back on the "
            "inverted trajectory after every step"
        )
    return sampler, eta


def micro_conditioning(pipe, o: Options) -> tuple:
    """SDXL's size arguments, checked before any work; an error for other models, and with an inversion
    (made with the defaults)."""
    sizes = (
        None if o.original_size is None else check_size_pair(o.original_size, "original_size"),
        check_size_pair(o.crops_coords_top_left, "crops_coords_top_left"),
        None if o.target_size is None else check_size_pair(o.target_size, "target_size"),
    )
    if sizes != (None, (0, 0), None):
        names = "original_size, crops_coords_top_left, target_size"
        if pipe.config.family != "sdxl":
            raise ValueError(f"{names}: only SDXL takes them (micro-conditioning)")
        if o.inversion is not None:
            raise ValueError(
                f"{names}: an inversion was made with the defaults (the image's size, (0, 0)); sampling "
                "from it must use them too"
            )
    return sizes


def seed_noise(pipe, seed, generator, size) -> tuple:
    """The start latent (1, C, h, w) for an image `size` (height, width) and the generator that later noise
    (eta) comes from, drawn on the CPU: the same on every device. With neither seed nor generator, a seed is
    drawn and reported on stderr, so that a good image can be made again."""
    if generator is None:
        if seed is None:
            seed = int(torch.randint(0, SEED_LIMIT, ()))
            print(f"seed {seed} (drawn at random; pass seed={seed} to repeat)", file=sys.stderr)
        generator = torch.Generator("cpu").manual_seed(check_seed(seed))
    shape = (1, *pipe.latent_shape(*size))
    noise = torch.randn(shape, generator=generator, device=generator.device)
    return noise.to(pipe.device), generator


def start_latents(pipe, prompts: int, o: Options, latents, size) -> tuple:
    """(prompts, C, h, w) start latents, one noise shared by all prompts; the generator of later noise."""
    shape, generator = pipe.latent_shape(*size), o.generator
    if latents is None:
        latents, generator = seed_noise(pipe, o.seed, generator, size)
    elif generator is None:
        generator = torch.Generator("cpu").manual_seed(check_seed(0 if o.seed is None else o.seed))
    if tuple(latents.shape[1:]) != shape or latents.shape[0] not in (1, prompts):
        raise ValueError(
            f"latents must have shape (1 or {prompts}, {', '.join(map(str, shape))}), "
            f"not {tuple(latents.shape)}"
        )
    if not torch.isfinite(latents).all():
        raise ValueError("latents hold NaN or infinite values")
    return latents.to(pipe.device, torch.float32).expand(prompts, *shape).clone(), generator


def finite_steps(records, steps: int, scale: float):
    """The records of `ddim.denoise`, stopped with a cause where the latents go non-finite."""
    for r in records:
        if not torch.isfinite(r.latents).all():
            raise ValueError(
                f"sampling gave NaN or infinite latents at step {r.i + 1} of {steps}: the model overflowed "
                f"(float16 does where bfloat16 and float32 do not: load with dtype=torch.float32) or a "
                f"setting is extreme (guidance_scale={scale:g})"
            )
        yield r
