"""UNet step time and peak memory: minip2p vs diffusers, same random full-size SD1.5 weights, CPU.

    python benchmarks/unet_step.py [--latent 64] [--batch 2] [--runs 3] [--dtypes float32 bfloat16]

Prints the median step time of each (runs interleaved, after one warm-up each), the ratio ours / diffusers for
the fused path (no controller) and for the explicit-softmax path (a controller that wants every map), in each
dtype; the relative error of each side's output in a 16-bit dtype against its own fp32 output; and, in a fresh
process for each, the RSS with the model loaded and the peak RSS during one step.
"""

import argparse
import gc
import statistics
import subprocess
import sys
import time

import torch
from report import measured, rss_mib

import minip2p_oracle as oracle
from minip2p import Controller, ModelConfig, UNet
from minip2p.checks import DTYPES
from minip2p.testing import random_state


def build(which, cfg, dtype="float32"):
    """The full-size SD1 UNet with the same random weights: ours, or diffusers' (by its LDM converter)."""
    with torch.device("meta"):
        unet = UNet(cfg.unet)
    sd = random_state(unet, seed=0)
    if which == "diffusers":
        return oracle.unet(cfg, sd).to(DTYPES[dtype])
    unet.load_state_dict(sd, assign=True)
    return unet.eval().to(DTYPES[dtype])


def inputs(args):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(args.batch, 4, args.latent, args.latent, generator=g),
        torch.tensor(500),
        torch.randn(args.batch, 77, 768, generator=g),
    )


def step(which, model, x, t, ctx):
    x, ctx = (v.to(next(model.parameters()).dtype) for v in (x, ctx))
    with torch.no_grad():
        if which == "diffusers":
            return model(x, t, ctx).sample
        return model(x, t, ctx, Controller() if which == "explicit" else None)


def relative_error(x, reference):
    return float((x.float() - reference.float()).abs().mean() / reference.float().abs().mean())


def peak_rss(which, dtype, args):
    """(RSS with the model loaded, peak RSS during one step), MiB, in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--latent",
        str(args.latent),
        "--batch",
        str(args.batch),
        "--child",
        f"{which}:{dtype}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return tuple(float(v) for v in out.strip().splitlines()[-1].split())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES))
    p.add_argument("--child")
    args = p.parse_args()
    cfg = ModelConfig.sd1()
    if args.child:
        which, dtype = args.child.split(":")
        model = build("diffusers" if which == "diffusers" else "ours", cfg, dtype)
        gc.collect()
        x, t, ctx = inputs(args)
        base = rss_mib()
        _, _, peak = measured(step, which, model, x, t, ctx)
        print(base, max(peak, base))
        return
    x, t, ctx = inputs(args)
    names = [(n, dt) for dt in args.dtypes for n in ("ours", "explicit", "diffusers")]
    models = {}
    for n, dt in names:
        models[n, dt] = models["ours", dt] if n == "explicit" else build(n, cfg, dt)
    outs = {k: step(k[0], models[k], x, t, ctx) for k in names}  # warm-up, and a parity check
    times = {k: [] for k in names}
    for _ in range(args.runs):
        for k in names:
            t0 = time.perf_counter()
            step(k[0], models[k], x, t, ctx)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"SD1.5 UNet, batch {args.batch}, {args.latent}x{args.latent} latent, CPU, "
        f"{torch.get_num_threads()} threads, median of {args.runs}"
    )
    for dt in args.dtypes:
        ours, explicit, theirs = (outs[n, dt].float() for n in ("ours", "explicit", "diffusers"))
        print(
            f"{dt}: max |ours - diffusers| = {(ours - theirs).abs().max():.2e}, "
            f"max |explicit - diffusers| = {(explicit - theirs).abs().max():.2e}"
        )
    for dt in args.dtypes[1:] if args.dtypes[0] == "float32" else []:
        errors = {
            n: relative_error(outs[n, dt], outs[n, "float32"]) for n in ("ours", "explicit", "diffusers")
        }
        print(
            f"{dt} vs float32 (mean relative error of the output): "
            + ", ".join(f"{n} {e:.2e}" for n, e in errors.items())
        )
    for k in names:
        print(f"  {k[0]:9s} {k[1]:8s} {med[k]:7.2f} s/step   runs: " + " ".join(f"{v:.2f}" for v in times[k]))
    for dt in args.dtypes:
        print(
            f"{dt}: ours (fused) / diffusers {med['ours', dt] / med['diffusers', dt]:.3f}, "
            f"ours (explicit softmax) / diffusers {med['explicit', dt] / med['diffusers', dt]:.3f}"
        )
        if dt != args.dtypes[0]:
            ref = args.dtypes[0]
            print(
                f"{dt} / {ref}: ours {med['ours', dt] / med['ours', ref]:.3f}, "
                f"diffusers {med['diffusers', dt] / med['diffusers', ref]:.3f}"
            )
    del models
    rss = {k: peak_rss(*k, args) for k in names}
    for k in names:
        print(
            f"  RSS {k[0]:9s} {k[1]:8s} model loaded {rss[k][0]:7.0f} MiB, peak during the step "
            f"{rss[k][1]:7.0f} MiB (+{rss[k][1] - rss[k][0]:.0f})"
        )
    for dt in args.dtypes:
        print(f"{dt}: peak RSS ours / diffusers: {rss['ours', dt][1] / rss['diffusers', dt][1]:.3f}")


if __name__ == "__main__":
    main()
