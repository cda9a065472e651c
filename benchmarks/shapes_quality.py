"""Quality of the shapes-world model: prompt adherence per attribute, and VAE reconstruction PSNR.

    python benchmarks/shapes_quality.py [--weights weights/shapes.safetensors] [--prompts 200] [--steps 50]

Prompts are sampled from the grammar with a fixed seed (attributes left open with probability 0.2, which the
check then accepts whatever the image shows); each image starts from its own seeded noise.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minip2p  # noqa: E402
from minip2p import shapes  # noqa: E402


def adherence(pipe, n=200, seed=0, steps=50, guidance=7.5, batch=25, p_omit=0.2):
    """-> (dict attribute -> fraction right, list of (prompt, PIL image, result dict))."""
    rng = np.random.default_rng(seed)
    specs = [shapes.sample_spec(rng, p_omit) for _ in range(n)]
    results = []
    for i in range(0, n, batch):
        chunk = specs[i:i + batch]
        noise = torch.cat([pipe.initial_latent(seed * 100_000 + i + j, 64, 64) for j in range(len(chunk))])
        images = pipe.generate([s.prompt() for s in chunk], latents=noise, steps=steps, guidance_scale=guidance,
                               height=64, width=64, progress=False)
        for spec, im in zip(chunk, images):
            bg, found = shapes.analyse(np.asarray(im))
            results.append((spec.prompt(), im, shapes.matches(spec, bg, found)))
    keys = results[0][2].keys()
    return {k: float(np.mean([r[2][k] for r in results])) for k in keys}, results


def attention_shares(pipe, n=8, seed=3, steps=50):
    """Where cross-attention goes, averaged over n sampled prompts, all places and steps -> dict of shares:
    start token, the prompt's words, the end token and the padding after it. The end and padding tokens see
    the whole prompt (causal text encoder), so what the UNet reads there is not where any one word is."""
    from minip2p.p2p import AttentionStore
    rng = np.random.default_rng(seed)
    shares = []
    for k in range(n):
        prompt = shapes.sample_spec(rng, 0.0).prompt()
        m = len(pipe.tokenizer(prompt).input_ids)
        store = AttentionStore()
        pipe.generate([prompt], seed=k, steps=steps, controller=store, progress=False)
        a = torch.stack([store.mean(key)[0].mean(0) for key in store.keys()]).mean(0)  # (77,) over places, queries
        shares.append([a[0].item(), a[1:m - 1].sum().item(), a[m - 1].item(), a[m:].sum().item()])
    return dict(zip(("start", "words", "end", "padding"), np.mean(shares, 0)))


def vae_psnr(pipe, n=256, seed=999):
    rng = np.random.default_rng(seed)
    imgs = np.stack([shapes.render(shapes.sample_spec(rng, 0.0), rng)[0] for _ in range(n)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        rec = torch.cat([pipe.vae.decode(pipe.vae.encode(x[i:i + 64])[0]) for i in range(0, n, 64)])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # as saved images are
    mse = ((rec - x) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--grid", help="save a grid of the first 16 images here")
    args = p.parse_args()
    pipe = minip2p.load(args.weights)
    t0 = time.time()
    rates, results = adherence(pipe, args.prompts, steps=args.steps, guidance=args.guidance)
    dt = time.time() - t0
    print(f"shapes model: {args.prompts} prompts, {args.steps} DDIM steps, guidance {args.guidance} "
          f"({dt / args.prompts:.2f} s/image)")
    print("| attribute | right |\n| --- | --- |")
    for k, v in rates.items():
        print(f"| {k} | {100 * v:.1f}% |")
    print(f"VAE reconstruction PSNR on 256 held-out renders: {vae_psnr(pipe):.2f} dB")
    print("cross-attention shares (8 prompts, all places and steps): " +
          ", ".join(f"{k} {100 * v:.0f}%" for k, v in attention_shares(pipe).items()))
    if args.grid:
        from minip2p.viz import image_grid
        image_grid([r[1] for r in results[:16]], min_size=64).save(args.grid)
        for r in results[:16]:
            print(("ok  " if r[2]["all"] else "BAD ") + r[0])


if __name__ == "__main__":
    main()
