"""Flow matching (rectified flow) sampling for Stable Diffusion 3: Euler steps along the predicted velocity,
on SD3's shifted schedule, and the same steps run backwards for inversion.

The model sees x_sigma = (1 - sigma) x_0 + sigma noise and predicts the velocity v = noise - x_0; an Euler
step from sigma to sigma' is x + (sigma' - sigma) v. Equal to diffusers' `FlowMatchEulerDiscreteScheduler(
num_train_timesteps=1000, shift=3.0)` (no dynamic shifting, as SD3 and 3.5): the model's timestep is
1000 sigma. `FlowMatchEuler` has DDIM's shape (`timesteps`, `steps`, `step`, `inverse_step`), so the
sampling loop (`ddim.denoise`), the controllers and Direct Inversion run on it unchanged.
"""

import numpy as np
import torch

TRAIN_STEPS = 1000  # timesteps are 1000 sigma
SHIFT = 3.0  # SD3's schedule shift: more of the steps at high noise


def shifted(sigmas, shift: float):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMatchEuler:
    """The schedule of `steps` Euler steps from sigma 1 to 0 (checked at the edges: 1 <= steps <= 1000)."""

    def __init__(self, steps=28, shift=SHIFT):
        assert 1 <= steps <= TRAIN_STEPS and shift > 0
        self.steps = steps
        # as diffusers: the training schedule's end points (already shifted), spaced evenly, shifted again
        low = shifted(1 / TRAIN_STEPS, shift)
        sigmas = shifted(np.linspace(1.0, low, steps), shift)
        self.sigmas = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])  # (steps + 1,), to 0
        self.timesteps = self.sigmas[:-1] * TRAIN_STEPS
        # inversion evaluates the velocity where it stands, from sigma 0 up: 0, sigma_{N-1}, ..., sigma_1
        self.inverse_timesteps = self.sigmas[1:].flip(0) * TRAIN_STEPS

    def index(self, t) -> int:
        """The schedule position of timestep t (one of `timesteps`, or 0 for the clean end)."""
        return int(torch.argmin((self.sigmas * TRAIN_STEPS - float(t)).abs()))

    def step(self, out, t, x, noise=None) -> tuple:
        """x at timestep t -> (x one step less noisy, predicted x_0) given the (guided) velocity at (x, t)."""
        i = self.index(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        return x + (sigma_next - sigma) * out, x - sigma * out

    def inverse_step(self, out, t, x):
        """x at timestep t -> x one step noisier, given the velocity at (x, t): the Euler step backwards."""
        i = self.index(t)
        return x + (self.sigmas[i - 1] - self.sigmas[i]) * out
