"""DDIM sampling (Song et al. 2021) with Stable Diffusion's schedule, and its inverse for real-image
inversion.

Equal to diffusers' `DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
clip_sample=False, set_alpha_to_one=False, steps_offset=1)` ("leading" timestep spacing); `steps_offset=0`
is what the official null-text inversion code uses.
"""

import numpy as np
import torch


def guided(out_uncond: torch.Tensor, out_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): push the prediction from the unconditional one towards
    the conditional one, `scale` times as far."""
    return out_uncond + scale * (out_cond - out_uncond)


TRAIN_STEPS = 1000  # the noise schedule Stable Diffusion was trained with


class DDIM:
    def __init__(
        self,
        steps=50,
        steps_offset=1,
        prediction="epsilon",
        beta_start=0.00085,
        beta_end=0.012,
        train_steps=TRAIN_STEPS,
    ):
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction must be 'epsilon' or 'v', not {prediction!r}")
        if not 1 <= steps <= train_steps:
            raise ValueError(f"steps must be between 1 and {train_steps}, not {steps}")
        self.steps, self.prediction = steps, prediction
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, train_steps, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.final_alpha = self.alphas_cumprod[0]  # set_alpha_to_one=False: the step after t=0 uses alpha_0
        self.ratio = train_steps // steps
        ts = (np.arange(0, steps) * self.ratio).round()[::-1].astype(np.int64) + steps_offset
        self.timesteps = torch.from_numpy(ts.copy())  # descending, e.g. 981, 961, ..., 1

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

    def step(self, out, t, x, eta=0.0, noise=None, generator=None):
        """x_t -> x_{t-ratio} given the (guided) model output at (x, t). eta > 0 adds fresh noise."""
        a, a_prev = self.alpha(t), self.alpha(int(t) - self.ratio)
        x0, eps = self.split(out, x, a)
        std = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x_prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_prev = x_prev + std * noise
        return x_prev

    def inverse_step(self, out, t, x):
        """x_{t-ratio} -> x_t: the deterministic DDIM update run backwards (DDIM inversion).

        As the official null-text code, the model output is the one computed at x with timestep t.
        """
        a_from, a_to = self.alpha(int(t) - self.ratio), self.alpha(t)
        x0, eps = self.split(out, x, a_from)
        return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps
