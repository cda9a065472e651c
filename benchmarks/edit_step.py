"""Cost of a Prompt-to-Prompt edit: UNet step time of a Replace edit vs plain generation of the same prompts.

    python benchmarks/edit_step.py [--latent 32] [--runs 3]

Full-size SD1 UNet, random weights, CPU, fp32. Two prompts with classifier-free guidance are a UNet batch of
4. The edit step is measured at step 0, inside both the cross- and the self-attention replacement windows (the
most expensive steps); it runs the explicit softmax only where the edit needs the map (all cross-attention,
and self-attention at 1/4 of the latent size and below), the fused kernel elsewhere. Also peak RSS during a
step.
"""

import argparse
import statistics

import torch
from report import measured

from minip2p import AttentionStore, ModelConfig, Replace, TextConfig, UNet
from minip2p.testing import random_state
from minip2p.text import load_tokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    cfg = ModelConfig.sd1()
    with torch.device("meta"):
        unet = UNet(cfg.unet)
    unet.load_state_dict(random_state(unet, 0), assign=True)
    unet.eval()
    tok = load_tokenizer(TextConfig.sd1())
    prompts = ["a photo of a cat riding a bicycle", "a photo of a dog riding a bicycle"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, args.latent, args.latent, generator=g)
    ctx = torch.randn(4, 77, 768, generator=g)
    edits = {"plain": None, "replace": Replace(prompts, tok), "store": AttentionStore()}
    for c in edits.values():
        if c is not None:
            c.start(50, (args.latent, args.latent))
            c.before_step(0)

    def step(c):
        with torch.no_grad():
            unet(x, 981, ctx, c)

    for c in edits.values():
        step(c)  # warm-up
    res = {k: [] for k in edits}
    for _ in range(args.runs):
        for k, c in edits.items():
            res[k].append(measured(step, c)[1:])
    med = {k: statistics.median(t for t, _ in v) for k, v in res.items()}
    peak = {k: max(m for _, m in v) for k, v in res.items()}
    print(
        f"SD1 UNet, 2 prompts (UNet batch 4), {args.latent}x{args.latent} latent, fp32, CPU, "
        f"{torch.get_num_threads()} threads, median of {args.runs} interleaved runs"
    )
    for k in edits:
        print(
            f"  {k:8s} {med[k]:6.2f} s/step   peak RSS {peak[k]:7.0f} MiB   runs: "
            + " ".join(f"{t:.2f}" for t, _ in res[k])
        )
    print(f"ratio Replace edit / plain generation: {med['replace'] / med['plain']:.3f}")
    print(f"ratio AttentionStore / plain generation: {med['store'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
