"""Where bfloat16 gains on this machine: the full-size SD1.5 UNet step timed part by part, fp32 vs bf16.

    python benchmarks/bf16_levels.py [--latent 64] [--batch 2] [--runs 3]

Forward hooks time every ResBlock, self-attention (attn1), cross-attention (attn2) and feed-forward of the
UNet (random weights, the SD1.5 layout), summed per kind and latent size over a step; the rest (convs in and
out, resampling, norms and projections around the transformers) is the step minus those. Runs are
interleaved (fp32, bf16, fp32, ...) after a warm-up; medians are printed with each part's bf16 / fp32 ratio.
"""

import argparse
import statistics
import time
from collections import defaultdict

import torch
from report import header, row

from minip2p import ModelConfig, UNet
from minip2p.testing import random_state
from minip2p.unet import CrossAttention, FeedForward, ResBlock


def build(dtype):
    with torch.device("meta"):
        unet = UNet(ModelConfig.sd1().unet)
    unet.load_state_dict(random_state(unet, seed=0), assign=True)
    return unet.eval().to(dtype)


def timed_step(unet, x, t, ctx) -> dict:
    """One step -> {(kind, latent size): seconds}, and ("step", 0): the whole step."""
    times, starts = defaultdict(float), {}

    def kind(name, module):
        if isinstance(module, ResBlock):
            return "ResBlock"
        if isinstance(module, CrossAttention):
            return name.rsplit(".", 1)[-1]  # attn1 (self) or attn2 (cross)
        return "feed-forward" if isinstance(module, FeedForward) else None

    def before(module, args):
        starts[module] = time.perf_counter()

    def after(module, args, out):
        h = args[0]
        size = h.shape[2] if h.dim() == 4 else round(h.shape[1] ** 0.5)
        times[module.kind, size] += time.perf_counter() - starts.pop(module)

    hooks = []
    for name, module in unet.named_modules():
        if kind(name, module):
            module.kind = kind(name, module)
            hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    t0 = time.perf_counter()
    with torch.no_grad():
        unet(x.to(next(unet.parameters()).dtype), t, ctx.to(next(unet.parameters()).dtype))
    times["step", 0] = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    return times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.latent, args.latent, generator=g)
    ctx, t = torch.randn(args.batch, 77, 768, generator=g), torch.tensor(500)
    models = {"float32": build(torch.float32), "bfloat16": build(torch.bfloat16)}
    for m in models.values():
        timed_step(m, x, t, ctx)  # warm-up
    runs = {d: [] for d in models}
    for _ in range(args.runs):
        for d, m in models.items():
            runs[d].append(timed_step(m, x, t, ctx))
    med = {d: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for d, rs in runs.items()}
    for d in med:
        med[d]["rest", 0] = med[d]["step", 0] - sum(v for k, v in med[d].items() if k[0] != "step")
    print(
        f"SD1.5 UNet (random weights), latent {args.latent}x{args.latent}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads; median of {args.runs} interleaved steps"
    )
    print(header("part", "latent size", "fp32 s", "bf16 s", "bf16 / fp32", "share of the fp32 step"))
    step = med["float32"]["step", 0]
    for key in sorted(med["float32"], key=lambda k: (k[0] in ("rest", "step"), k[0], -k[1])):
        a, b = med["float32"][key], med["bfloat16"][key]
        size = f"{key[1]}x{key[1]}" if key[1] else ""
        print(row(key[0], size, f"{a:.2f}", f"{b:.2f}", f"{b / a:.3f}", f"{100 * a / step:.0f}%"))


if __name__ == "__main__":
    main()
