"""DDIM equals diffusers' DDIMScheduler: timesteps, alphas, and trajectories (eps and v, eta 0 and > 0)."""

import pytest
import torch

import minip2p_oracle as oracle
from minip2p import DDIM


def reference(steps_offset=1, prediction="epsilon"):
    return oracle.ddim_scheduler(steps_offset, prediction)


@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_timesteps_and_alphas(steps, steps_offset):
    ours, ref = DDIM(steps, steps_offset), reference(steps_offset)
    ref.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert ours.final_alpha == ref.final_alpha_cumprod


def fake_model(x, t):
    return 0.3 * x + 0.01 * float(t) ** 0.5


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ten_step_trajectory(prediction, eta):
    ours, ref = DDIM(10, 1, prediction, eta), reference(1, prediction)
    ref.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = y = torch.randn(2, 4, 8, 8, generator=g)
    for t in ours.timesteps:
        noise = torch.randn(x.shape, generator=g)
        x = ours.step(fake_model(x, t), t, x, noise)[0]
        y = ref.step(fake_model(y, t), t, y, eta=eta, variance_noise=noise if eta else None).prev_sample
        assert (x - y).abs().max() < 1e-5
    assert x.abs().mean() > 0.1


def test_inverse_step_undoes_step_for_a_constant_prediction():
    """With the same noise prediction, inverse_step(step(x)) == x: DDIM is invertible step by step."""
    ddim = DDIM(50, 0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for t in ddim.timesteps[[0, 25, 49]]:
        assert (ddim.inverse_step(eps, t, ddim.step(eps, t, x)[0]) - x).abs().max() < 1e-4


def test_inverse_step_matches_the_official_null_text_next_step():
    """The null-text notebook's next_step: from alpha(t - ratio) (alpha_0 after the end) up to alpha(t)."""
    ddim = DDIM(50, 0)
    x, eps, t = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), 1
    a_prev, a_next = ddim.final_alpha, ddim.alphas_cumprod[1]
    x0 = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    expected = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
    assert torch.allclose(ddim.inverse_step(eps, t, x), expected)
