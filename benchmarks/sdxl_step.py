"""SDXL UNet step: minip2p vs diffusers on the same random full-size SDXL base weights, and the projected cost
of a 1024x1024 50-step Prompt-to-Prompt edit.

    python benchmarks/sdxl_step.py [--latent 64] [--runs 3] [--dtypes float32 bfloat16] [--edit-latent 128]
    python benchmarks/sdxl_step.py --device cuda --latent 128 --dtypes float32 float16 bfloat16   # on a GPU

For each dtype: the median time of one guided UNet call (batch 2: one prompt, with its unconditional half) of
ours and of diffusers' UNet2DConditionModel (built by its own LDM converter, sharing our weight tensors so
that both fit in memory), runs interleaved after a warm-up each, and their ratio; then one step of an edit
(Replace on two prompts: batch 4, with the controller) at `--edit-latent` (128 = 1024x1024), timed once, times
50 steps: the projected edit. The peak memory of the process is printed at the end (on a GPU: of each step).
"""

import argparse
import gc
import statistics

import torch
from report import measured_on, rss_mib

import minip2p_oracle as oracle
from minip2p import ModelConfig, Replace, UNet
from minip2p.checks import DTYPES
from minip2p.layers import added_conditioning
from minip2p.testing import random_state
from minip2p.text import load_tokenizer

PROMPTS = ["a photo of a cat on a sofa", "a photo of a dog on a sofa"]


def build(cfg, device):
    """Ours and diffusers' SDXL UNet on the same fp32 tensors (diffusers' module holds ours, renamed)."""
    with torch.device("meta"):
        ours = UNet(cfg.unet)
    sd = random_state(ours, seed=0)
    ours.load_state_dict(sd, assign=True)
    return ours.eval().to(device), oracle.unet(cfg, sd, shared=True).to(device)


def inputs(batch, latent, device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, latent, latent, generator=g)
    ctx = torch.randn(batch, 77, 2048, generator=g)
    pooled = torch.randn(batch, 1280, generator=g)
    sizes = torch.tensor([[latent * 8.0, latent * 8, 0, 0, latent * 8, latent * 8]]).expand(batch, 6)
    return [v.to(device, dtype) for v in (x, ctx, pooled)] + [sizes.to(device)]


@torch.no_grad()
def step(which, model, x, ctx, pooled, sizes, controller=None):
    t = torch.tensor(500, device=x.device)
    if which == "diffusers":
        added = {"text_embeds": pooled, "time_ids": sizes.to(x.dtype)}
        return model(x, t, ctx, added_cond_kwargs=added).sample
    return model(x, t, ctx, controller, y=added_conditioning(pooled, sizes))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--edit-latent", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    cfg = ModelConfig.sdxl()
    ours, theirs = build(cfg, args.device)
    print(
        f"SDXL base UNet (random weights), batch 2, {args.latent}x{args.latent} latent, {args.device}, "
        f"{torch.get_num_threads()} threads, median of {args.runs}"
    )
    edit = Replace(PROMPTS, load_tokenizer(cfg.text))
    for dt in args.dtypes:
        dtype = DTYPES[dt]
        ours, theirs = ours.to(dtype), theirs.to(dtype)
        gc.collect()
        data = inputs(2, args.latent, args.device, dtype)
        outs = {w: step(w, m, *data) for w, m in (("ours", ours), ("diffusers", theirs))}  # warm-up
        times = {"ours": [], "diffusers": []}
        for _ in range(args.runs):
            for w, m in (("ours", ours), ("diffusers", theirs)):
                _, seconds, peak = measured_on(args.device, step, w, m, *data)
                times[w].append(seconds)
        med = {w: statistics.median(v) for w, v in times.items()}
        diff = (outs["ours"].float() - outs["diffusers"].float()).abs().max()
        print(
            f"{dt}: ours {med['ours']:.2f} s, diffusers {med['diffusers']:.2f} s, ours / diffusers "
            f"{med['ours'] / med['diffusers']:.3f}; max |ours - diffusers| {diff:.2e}; runs: ours "
            + " ".join(f"{v:.2f}" for v in times["ours"])
            + ", diffusers "
            + " ".join(f"{v:.2f}" for v in times["diffusers"])
        )
        if args.edit_latent:
            hw = (args.edit_latent, args.edit_latent)
            edit.start(50, hw, args.device)
            edit.before_step(10)
            data = inputs(4, args.edit_latent, args.device, dtype)
            _, seconds, peak = measured_on(args.device, step, "ours", ours, *data, controller=edit)
            print(
                f"{dt}: one edit step at {hw[0]}x{hw[1]} (batch 4, Replace) {seconds:.1f} s, peak "
                f"{peak:.0f} MiB -> projected 50-step {hw[0] * 8}x{hw[1] * 8} edit "
                f"{50 * seconds / 60:.1f} min"
            )
    print(f"process RSS at the end {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
