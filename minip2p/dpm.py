"""DPM-Solver++(2M) (Lu et al. 2022): Stable Diffusion in 20-25 steps where DDIM takes 50.

The solver steps in lambda = log(alpha / sigma) with the predicted x_0, using the x_0 of the step before to
make the step second order (a multistep method: one model call per step, like DDIM). The first step and the
last (to sigma 0, which lands on x_0) are first order, which is DDIM's update. Equal to diffusers'
`DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
final_sigmas_type="zero", timestep_spacing="leading", steps_offset=1)`. `DPMSolver` has DDIM's shape
(`timesteps`, `steps`, `step -> (x_prev, x0)`), so the sampling loop and every controller run on it
unchanged: a controller's step windows are fractions of the steps.
"""

import numpy as np
import torch

from .ddim import TRAIN_STEPS, alphas_cumprod


def leading_timesteps(steps: int, steps_offset: int) -> np.ndarray:
    """diffusers' "leading" spacing for this solver: steps + 1 points from 0 on, the last (0) dropped."""
    ratio = TRAIN_STEPS // (steps + 1)
    return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset


class DPMSolver:
    """The schedule of `steps` DPM-Solver++(2M) steps (checked at the edges: 1 <= steps <= 1000). timesteps:
    others than the solver's own (descending train timesteps), e.g. DDIM's to follow a DDIM inversion."""

    def __init__(self, steps=20, steps_offset=1, prediction="epsilon", timesteps=None):
        assert prediction in ("epsilon", "v") and 1 <= steps <= TRAIN_STEPS
        self.steps, self.prediction = steps, prediction
        ts = leading_timesteps(steps, steps_offset) if timesteps is None else np.asarray(timesteps)
        table = ((1 - alphas_cumprod()) / alphas_cumprod()) ** 0.5  # sigma of the variance-exploding form
        sigmas = np.interp(ts, np.arange(TRAIN_STEPS), table.numpy())
        self.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))  # (steps + 1,), to 0
        self.timesteps = torch.from_numpy(ts.astype(np.int64).copy())
        self.previous = None  # (step, x_0 predicted there): the multistep's memory

    def alpha_sigma(self, i: int) -> tuple:
        """(alpha_t, sigma_t) of the variance-preserving x_t = alpha_t x_0 + sigma_t noise at step i."""
        alpha = 1 / (self.sigmas[i] ** 2 + 1) ** 0.5
        return alpha, self.sigmas[i] * alpha

    def step(self, out, t, x, noise=None) -> tuple:
        """x at step t -> (x one step less noisy, predicted x_0) given the (guided) model output at (x, t)."""
        i = int((self.timesteps == int(t)).nonzero()[0])
        (alpha_s, sigma_s), (alpha_t, sigma_t) = self.alpha_sigma(i), self.alpha_sigma(i + 1)
        x0 = (x - sigma_s * out) / alpha_s if self.prediction == "epsilon" else alpha_s * x - sigma_s * out
        previous, self.previous = self.previous, (i, x0)
        if i == self.steps - 1:
            return x0, x0  # the last step goes to sigma 0: x_0 itself (first order)
        lam = lambda a, s: torch.log(a) - torch.log(s)  # noqa: E731
        h = lam(alpha_t, sigma_t) - lam(alpha_s, sigma_s)
        first = (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0  # DDIM's update
        if previous is None or previous[0] != i - 1:
            return first, x0
        r = (lam(alpha_s, sigma_s) - lam(*self.alpha_sigma(i - 1))) / h
        d1 = (1.0 / r) * (x0 - previous[1])  # the midpoint rule's second-order term
        return first - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1, x0
