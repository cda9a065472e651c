"""DPM-Solver++(2M) equals diffusers' DPMSolverMultistepScheduler (schedule, trajectories, the pipeline), and
the edit invariants hold on it: its steps are fewer, the edit is the same thing."""

import re

import pytest
import torch

import minip2p
import minip2p_oracle as oracle
from minip2p.dpm import DPMSolver


def fake_model(x, t):
    return torch.sin(3 * x) + 0.1 * float(t) / 1000  # smooth and timestep-dependent: the history matters


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 25, 50])
def test_trajectories_equal_diffusers(prediction, steps):
    ours, ref = DPMSolver(steps, 1, prediction), oracle.dpm_scheduler(prediction)
    ref.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    x = y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps:
        x = ours.step(fake_model(x, t), t, x)[0]
        y = ref.step(fake_model(y, t), t, y).prev_sample
        assert (x - y).abs().max() < 1e-5
    assert x.abs().mean() > 0.1


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_generate_equals_stable_diffusion_pipeline(small_ckpt, diffusers_models, family):
    pipe = minip2p.load(small_ckpt[family][0])
    unet, vae, text_encoder = diffusers_models[family]
    scheduler = oracle.dpm_scheduler(pipe.config.prediction)
    ref = oracle.sd_pipeline(unet, vae, text_encoder, pipe.tokenizer, scheduler)
    prompts, latent = ["a red circle", "a blue square"], pipe.initial_latent(3, 128, 128)
    options = dict(height=128, width=128, output="tensor", progress=False)
    ours = pipe.generate(prompts, steps=6, sampler="dpm++", latents=latent, **options)
    theirs = oracle.sd_images(ref, prompts, 6, latent)
    diff = ((ours / 2 + 0.5).clamp(0, 1) - theirs).abs().max()
    print(f"\n{family} ({pipe.config.prediction}), 6 DPM++ steps: max |minip2p - diffusers| = {diff:.2e}")
    assert diff < 1e-3 and (ours[0] - ours[1]).abs().max() > 1e-2


def run(pipe, prompts, controller=None, **kw):
    return pipe.sample(prompts, seed=3, steps=6, sampler="dpm++", controller=controller, progress=False, **kw)


def test_edit_invariants_hold_with_dpm(shapes_pipe):
    p = ["a red circle on a white background", "a blue square on a white background"]
    tok = shapes_pipe.tokenizer
    plain = run(shapes_pipe, p)
    for edit in (minip2p.Replace([p[0], p[0]], tok), minip2p.Reweight([p[0], p[0]], tok, torch.ones(77))):
        x = run(shapes_pipe, [p[0], p[0]], edit)
        assert (x[0] - x[1]).abs().max() < 1e-3  # a prompt edited into itself
    x = run(shapes_pipe, p, minip2p.Replace(p, tok, cross_replace_steps=0.0, self_replace_steps=0.0))
    assert (x - plain).abs().max() < 1e-3  # no steps: plain generation of the target
    edited = run(shapes_pipe, p, minip2p.Replace(p, tok))
    x = run(shapes_pipe, p, minip2p.Reweight(p, tok, torch.ones(77), base=minip2p.Replace(p, tok)))
    assert (x - edited).abs().max() < 1e-3  # Reweight at 1 adds nothing to the edit it chains on
    assert (edited[0] - plain[0]).abs().max() < 1e-3 and (edited[1] - plain[1]).abs().max() > 1e-2


def test_direct_inversion_reconstructs_exactly_with_dpm(pipe):
    image = pipe.generate(["a red circle"], seed=1, steps=4, output="tensor", progress=False)
    inv = pipe.invert(image, "a red circle", method="direct", steps=8, progress=False)
    x = pipe.sample(["a red circle", "a blue circle"], inversion=inv, sampler="dpm++", progress=False)
    assert torch.equal(x[0], inv.trajectory[0][0])  # the source is put back on the trajectory
    ddim = pipe.sample(["a red circle", "a blue circle"], inversion=inv, progress=False)
    assert (x[1] - ddim[1]).abs().max() > 0  # the target took DPM-Solver's steps


def test_bad_sampler_options_are_one_line_errors(pipe):
    image = pipe.generate(["a red circle"], seed=1, steps=2, output="tensor", progress=False)
    inv = pipe.invert(image, "a red circle", method="negative-prompt", steps=2, progress=False)
    cases = [
        (dict(sampler="euler"), "sampler must be one of ['ddim', 'dpm++']"),
        (dict(sampler="dpm++", eta=0.5), "eta is DDIM's noise"),
        (dict(sampler="dpm++", inversion=inv), "cannot retrace a 'negative-prompt' inversion"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            pipe.sample(["a red circle"], seed=0, progress=False, **options)  # before any work


def test_default_steps_follow_the_sampler(pipe):
    seen = [r.i for r in pipe.steps(["a red circle"], seed=0, sampler="dpm++", progress=False)]
    assert seen == list(range(minip2p.defaults.DPM_STEPS))
