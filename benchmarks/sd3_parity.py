"""SD3 / SD3.5 against diffusers on narrow random weights: every difference `tests/test_sd3.py` asserts on,
printed as the rows of docs/RESULTS.md's parity table.

    python benchmarks/sd3_parity.py
"""

import tempfile
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file

import minip2p
import minip2p_oracle as oracle
from minip2p.flow import FlowMatchEuler
from minip2p.testing import random_sd3_checkpoint, small_sd3_config, write_t5_tokenizer

WORDS = "a red blue green circle square triangle on white black background big small".split()
PROMPT = "a red circle on white background"
LONG = " ".join(WORDS * 8)  # 112 words: past the CLIPs' 77 tokens, within T5's 256


def row(what, value):
    print(f"| {what} | {value:.1e} |")


@torch.no_grad()
def model_rows(family, t5, folder):
    cfg = small_sd3_config(family, t5=t5)
    sd = random_sd3_checkpoint(cfg, seed=3)
    save_file(sd, str(folder / f"{family}.safetensors"))
    pipe = minip2p.load(folder / f"{family}.safetensors", tokenizers=folder)
    name = f"{family} ({'with' if t5 else 'without'} T5)"
    ref = oracle.sd3_pipeline(sd, pipe.config, pipe)
    g = torch.Generator().manual_seed(0)
    x, y, ctx = (
        torch.randn(2, 16, 16, 12, generator=g),
        torch.randn(2, 64, generator=g),
        torch.randn(2, 333, 160),
    )
    t = torch.tensor([997.0, 31.5])
    theirs = ref.transformer(
        hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=y
    ).sample
    row(f"MM-DiT, {name}, batch 2, 16x12 latent", (pipe.transformer(x, t, ctx, None, y) - theirs).abs().max())
    for prompt, label in [(PROMPT, "a prompt")] + ([(LONG, "112 words (CLIPs cut at 77)")] if t5 else []):
        c, p = pipe.encode_text([prompt])
        rc, _, rp, _ = ref.encode_prompt(prompt, prompt, prompt, do_classifier_free_guidance=False)
        row(
            f"context, pooled vs `encode_prompt`, {name}, {label}",
            max((c - rc).abs().max(), (p - rp).abs().max()),
        )
        ours = pipe.generate(
            [prompt], seed=1, steps=4, output="tensor", progress=False, height=128, width=128
        )
        noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
        out = ref(
            prompt, num_inference_steps=4, latents=noise, output_type="pt", height=128, width=128
        ).images
        row(
            f"`generate` vs `StableDiffusion3Pipeline`, {name}, {label}, 4 steps",
            ((ours / 2 + 0.5).clamp(0, 1) - out).abs().max(),
        )
    z = torch.randn(1, 16, 16, 16)
    row(
        f"VAE decode (scale, shift), {name}",
        (pipe.decode(z) - ref.vae.decode(z / 1.5305 + 0.0609).sample).abs().max(),
    )


def main():
    folder = Path(tempfile.mkdtemp())
    write_t5_tokenizer(folder / "tokenizer_3", WORDS)
    for family, t5 in (("sd3", False), ("sd3.5", True)):
        model_rows(family, t5, folder)
    worst = 0.0
    for steps in (1, 4, 28, 50):
        ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
        ref.set_timesteps(steps)
        ours = FlowMatchEuler(steps)
        worst = max(
            worst, (ours.sigmas - ref.sigmas).abs().max(), (ours.timesteps - ref.timesteps).abs().max()
        )
    row("flow schedule: sigmas and timesteps at 1, 4, 28, 50 steps", worst)


if __name__ == "__main__":
    main()
