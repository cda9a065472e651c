"""UNet step time and peak memory: minip2p vs diffusers, same random full-size SD1.5 weights, CPU.

    python benchmarks/unet_step.py [--latent 64] [--batch 2] [--runs 3]

Prints the median step time of each (runs interleaved, after one warm-up each), the ratio ours / diffusers for
the fused path (no controller) and for the explicit-softmax path (a controller that wants every map), and, in
a fresh process for each, the RSS with the model loaded and the peak RSS during one step.
"""

import argparse
import gc
import statistics
import subprocess
import sys
import time

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)
from report import measured, rss_mib

from minip2p import Controller, ModelConfig, UNet
from minip2p.checkpoint import UNET_PREFIX
from minip2p.testing import ldm_config, random_state


def build(which, cfg):
    """The full-size SD1 UNet with the same random weights: ours, or diffusers' (by its LDM converter)."""
    with torch.device("meta"):
        unet = UNet(cfg.unet)
    sd = random_state(unet, seed=0)
    if which == "diffusers":
        ldm = {UNET_PREFIX + k: v for k, v in sd.items()}
        config = create_unet_diffusers_config_from_ldm(ldm_config(cfg), ldm, image_size=cfg.image_size)
        model = UNet2DConditionModel(**config)
        model.load_state_dict(convert_ldm_unet_checkpoint(ldm, config), strict=True)
        return model.eval()
    unet.load_state_dict(sd, assign=True)
    return unet.eval()


def inputs(args):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(args.batch, 4, args.latent, args.latent, generator=g),
        torch.tensor(500),
        torch.randn(args.batch, 77, 768, generator=g),
    )


def step(which, model, x, t, ctx):
    with torch.no_grad():
        if which == "diffusers":
            return model(x, t, ctx).sample
        return model(x, t, ctx, Controller() if which == "explicit" else None)


def peak_rss(which, args):
    """(RSS with the model loaded, peak RSS during one step), MiB, in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--latent",
        str(args.latent),
        "--batch",
        str(args.batch),
        "--child",
        which,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return tuple(float(v) for v in out.strip().splitlines()[-1].split())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--child")
    args = p.parse_args()
    cfg = ModelConfig.sd1()
    if args.child:
        model = build("diffusers" if args.child == "diffusers" else "ours", cfg)
        gc.collect()
        x, t, ctx = inputs(args)
        base = rss_mib()
        _, _, peak = measured(step, args.child, model, x, t, ctx)
        print(base, max(peak, base))
        return
    x, t, ctx = inputs(args)
    models = {"ours": build("ours", cfg), "diffusers": build("diffusers", cfg)}
    models["explicit"] = models["ours"]
    names = ["ours", "explicit", "diffusers"]
    outs = {n: step(n, models[n], x, t, ctx) for n in names}  # warm-up, and a parity check
    times = {n: [] for n in names}
    for _ in range(args.runs):
        for n in names:
            t0 = time.perf_counter()
            step(n, models[n], x, t, ctx)
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(
        f"SD1.5 UNet, batch {args.batch}, {args.latent}x{args.latent} latent, fp32, CPU, "
        f"{torch.get_num_threads()} threads, median of {args.runs}"
    )
    print(
        f"max |ours - diffusers| = {(outs['ours'] - outs['diffusers']).abs().max():.2e}, "
        f"max |explicit - diffusers| = {(outs['explicit'] - outs['diffusers']).abs().max():.2e}"
    )
    for n in names:
        print(f"  {n:9s} {med[n]:7.2f} s/step   runs: " + " ".join(f"{v:.2f}" for v in times[n]))
    print(f"ratio ours (fused, no controller) / diffusers: {med['ours'] / med['diffusers']:.3f}")
    print(f"ratio ours (explicit softmax)     / diffusers: {med['explicit'] / med['diffusers']:.3f}")
    del models
    rss = {n: peak_rss(n, args) for n in names}
    for n in names:
        print(
            f"  RSS {n:9s} model loaded {rss[n][0]:7.0f} MiB, peak during the step {rss[n][1]:7.0f} MiB "
            f"(+{rss[n][1] - rss[n][0]:.0f})"
        )
    print(f"ratio peak RSS ours / diffusers: {rss['ours'][1] / rss['diffusers'][1]:.3f}")


if __name__ == "__main__":
    main()
