"""DDIM sampling (Song et al. 2021) with Stable Diffusion's schedule, its inverse for real-image inversion,
and the sampling loop of Prompt-to-Prompt as a generator of steps.

Equal to diffusers' `DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
clip_sample=False, set_alpha_to_one=False, steps_offset=1)` ("leading" timestep spacing); `steps_offset=0`
is what the official null-text inversion code uses.
"""

from dataclasses import dataclass

import numpy as np
import torch

TRAIN_STEPS = 1000  # the noise schedule Stable Diffusion was trained with
BETA_START, BETA_END = 0.00085, 0.012  # its "scaled_linear" betas


def alphas_cumprod() -> torch.Tensor:
    """(1000,) the cumulative alphas of Stable Diffusion's training schedule."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def guided(out_uncond: torch.Tensor, out_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): push the prediction from the unconditional one towards
    the conditional one, `scale` times as far."""
    return out_uncond + scale * (out_cond - out_uncond)


class DDIM:
    """The schedule of `steps` DDIM steps (checked at the edges: 1 <= steps <= train_steps)."""

    def __init__(self, steps=50, steps_offset=1, prediction="epsilon", eta=0.0):
        assert prediction in ("epsilon", "v") and 1 <= steps <= TRAIN_STEPS and 0 <= eta <= 1
        self.steps, self.prediction, self.eta = steps, prediction, eta  # eta: 0 deterministic, 1 DDPM's noise
        self.alphas_cumprod = alphas_cumprod()
        self.final_alpha = self.alphas_cumprod[0]  # set_alpha_to_one=False: the step after t=0 uses alpha_0
        self.ratio = TRAIN_STEPS // steps
        ts = (np.arange(0, steps) * self.ratio).round()[::-1].astype(np.int64) + steps_offset
        self.timesteps = torch.from_numpy(ts.copy())  # descending, e.g. 981, 961, ..., 1
        self.inverse_timesteps = self.timesteps.flip(0)  # inversion: the model at the level it goes to

    def alpha(self, t):
        """Cumulative alpha at train timestep t; t < 0 means 'after the last step'. With steps_offset 1, a
        1000-step schedule starts at t = 1000, one past the table: it takes the last alpha (diffusers fails).
        """
        t = min(int(t), len(self.alphas_cumprod) - 1)
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha

    def split(self, out, x, a):
        """The model's output at x, alpha a -> (predicted x_0, predicted noise)."""
        if self.prediction == "epsilon":
            return (x - (1 - a) ** 0.5 * out) / a**0.5, out
        return a**0.5 * x - (1 - a) ** 0.5 * out, a**0.5 * out + (1 - a) ** 0.5 * x

    def step(self, out, t, x, noise=None) -> tuple:
        """x_t -> (x_{t-ratio}, predicted x_0) given the (guided) model output at (x, t). With eta > 0,
        `noise` (shaped as x) is added, eta times DDPM's amount."""
        a, a_prev = self.alpha(t), self.alpha(int(t) - self.ratio)
        x0, eps = self.split(out, x, a)
        std = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x_prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        return (x_prev + std * noise if self.eta > 0 else x_prev), x0

    def inverse_step(self, out, t, x):
        """x_{t-ratio} -> x_t: the deterministic DDIM update run backwards (DDIM inversion).

        As the official null-text code, the model output is the one computed at x with timestep t.
        """
        a_from, a_to = self.alpha(int(t) - self.ratio), self.alpha(t)
        x0, eps = self.split(out, x, a_from)
        return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps


@dataclass
class Guidance:
    """What classifier-free guidance conditions the model on, for every step."""

    cond: torch.Tensor  # (B, tokens, D): the prompts' context
    nulls: torch.Tensor  # (steps, 1, tokens, D): the unconditional context of each step (null-text: its own)
    scale: float  # guidance scale
    y: torch.Tensor | None = None  # SDXL: (2B, adm) added conditioning of the batch [unconditional, cond]

    def context(self, i: int) -> torch.Tensor:
        """The context of step i for the guidance batch [x, x]: unconditional half, then conditional."""
        return torch.cat([self.nulls[i].expand_as(self.cond).to(self.cond), self.cond])


@dataclass
class Step:
    """What one sampling step gives (one record of `Pipeline.steps`)."""

    i: int  # the step, 0 the noisiest
    t: int  # its train timestep
    latents: torch.Tensor  # (B, C, h, w) x after the step, controller applied (UNet-space, fp32)
    x0: torch.Tensor  # (B, C, h, w) the clean latents the step predicted


@torch.no_grad()
def denoise(model, ddim: DDIM, x, guidance: Guidance, controller, noise=None, sources=None):
    """The sampling loop of Prompt-to-Prompt: all prompts denoised together from x_T, yielding each `Step`.

    model(x, t, context, y) is the UNet, which calls `controller` at every attention; noise(): DDIM's fresh
    noise for eta > 0 (None for eta 0); sources (steps, 1, C, h, w): Direct Inversion's trajectory, where the
    source branch is put back after each step, before the controller (LocalBlend) reads it."""
    for i, t in enumerate(ddim.timesteps):
        controller.before_step(i)
        out_uncond, out_cond = model(torch.cat([x, x]), t, guidance.context(i), guidance.y).chunk(2)
        x, x0 = ddim.step(guided(out_uncond, out_cond, guidance.scale), t, x, noise() if noise else None)
        if sources is not None:
            x[:1] = sources[i]
        x = controller.after_step(i, x)
        yield Step(i, int(t), x, x0)
