"""Quality of the shapes-world model: prompt adherence per attribute, and VAE reconstruction PSNR.

    python benchmarks/shapes_quality.py [--weights PATH] [--prompts 200] [--steps 50] [--dtype bfloat16]
    python benchmarks/shapes_quality.py --weights shapes-mmdit     # the MM-DiT sibling; --guidance 1 for none

Prompts are sampled from the grammar with a fixed seed (attributes left open with probability 0.2, which the
check then accepts whatever the image shows); each image starts from its own seeded noise.
"""

import argparse
import time

import numpy as np
import torch

import minip2p
from minip2p import AttentionStore, shapes
from minip2p.checks import DTYPES
from minip2p.evaluation import adherence, vae_psnr
from minip2p.viz import image_grid


def attention_shares(pipe, n=8, seed=3, steps=50):
    """Where cross-attention goes, averaged over n sampled prompts, all places and steps -> dict of shares:
    start token, the prompt's words, the end token and the padding after it. The end and padding tokens see
    the whole prompt (causal text encoder), so what the UNet reads there is not where any one word is."""
    rng = np.random.default_rng(seed)
    shares = []
    for k in range(n):
        prompt = shapes.sample_spec(rng, 0.0).prompt()
        m = len(pipe.tokenizer(prompt).input_ids)
        store = AttentionStore()
        pipe.generate([prompt], seed=k, steps=steps, controller=store, progress=False)
        per_place = [store.mean(key)[0].mean(0) for key in store.keys()]  # (77,) each, over the queries
        a = torch.stack(per_place).mean(0)
        shares.append([a[0].item(), a[1 : m - 1].sum().item(), a[m - 1].item(), a[m:].sum().item()])
    return dict(zip(("start", "words", "end", "padding"), np.mean(shares, 0)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", help="a model file, or a bundled model's name (default: shapes)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the model's precision")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--steps", type=int, help="default: the model's (DDIM 50; SD3 Euler 28)")
    p.add_argument("--guidance", type=float, help="default: the model's (7.5; SD3 7.0)")
    p.add_argument("--grid", help="save a grid of the first 16 images here")
    args = p.parse_args()
    pipe = minip2p.load(args.weights, dtype=args.dtype)
    args.steps, args.guidance = args.steps or pipe.default_steps(), args.guidance or pipe.guidance_scale
    t0 = time.time()
    rates, results = adherence(
        pipe, args.prompts, steps=args.steps, guidance_scale=args.guidance, progress=False
    )
    dt = time.time() - t0
    print(
        f"{args.weights or 'shapes'} ({args.dtype}): {args.prompts} prompts, "
        f"{args.steps} {pipe.samplers[0]} steps, "
        f"guidance {args.guidance} ({dt / args.prompts:.2f} s/image)"
    )
    print("| attribute | right |\n| --- | --- |")
    for k, v in rates.items():
        print(f"| {k} | {100 * v:.1f}% |")
    print(f"VAE reconstruction PSNR on 256 held-out renders: {vae_psnr(pipe):.2f} dB")
    print(
        "cross-attention shares (8 prompts, all places and steps): "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in attention_shares(pipe).items())
    )
    if args.grid:
        image_grid([r[1] for r in results[:16]], min_size=64).save(args.grid)
        for r in results[:16]:
            print(("ok  " if r[2]["all"] else "BAD ") + r[0])


if __name__ == "__main__":
    main()
