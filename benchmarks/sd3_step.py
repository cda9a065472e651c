"""SD3.5 Medium MM-DiT step: minip2p vs diffusers on the same random full-size weights, and what an edit's
explicit joint maps cost.

    python benchmarks/sd3_step.py [--size 256] [--runs 3] [--dtypes float32 bfloat16]
    python benchmarks/sd3_step.py --device cuda --size 1024 --dtypes float32 bfloat16   # on a GPU

For each dtype: the median time of one guided transformer call (batch 2: one prompt and its unconditional
half; 77 CLIP + 256 T5 tokens) of ours and of diffusers' SD3Transformer2DModel (built by its own converter,
holding our tensors so that both fit in memory), runs interleaved after a warm-up each, and their ratio. Then
an edit's step (Replace on two prompts: batch 4) with and without its controller, interleaved: the explicit
joint softmax maps at every block against the fused kernel, for the blocks an edit asks by default (all) and
for the late third only (`cross_places=["late"]`, `self_places=["late"]`).
"""

import argparse
import gc
import statistics

import torch
from report import measured_on, rss_mib

import minip2p_oracle as oracle
from minip2p import defaults, make_edit
from minip2p.checkpoint import UNET_PREFIX
from minip2p.checks import DTYPES
from minip2p.mmdit import MMDiT
from minip2p.sd3 import SD3Config
from minip2p.testing import random_state
from minip2p.text import load_tokenizer

PROMPTS = ["a photo of a cat on a sofa", "a photo of a dog on a sofa"]


def build(cfg, device):
    """Ours and diffusers' SD3.5 Medium transformer on the same fp32 tensors (all but diffusers' q, k, v)."""
    with torch.device("meta"):
        ours = MMDiT(cfg.mmdit)
    sd = random_state(ours, seed=0)
    ours.load_state_dict(sd, assign=True)
    theirs = oracle.sd3_transformer({UNET_PREFIX + k: v for k, v in sd.items()}, cfg, shared=True)
    return ours.eval().to(device), theirs.to(device)


def inputs(batch, size, device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, size // 8, size // 8, generator=g)
    ctx = torch.randn(batch, 77 + 256, 4096, generator=g)
    pooled = torch.randn(batch, 2048, generator=g)
    return [v.to(device, dtype) for v in (x, ctx, pooled)]


@torch.no_grad()
def step(which, model, x, ctx, pooled, controller=None):
    t = torch.full((x.shape[0],), 500.0, device=x.device)
    if which == "diffusers":
        return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled).sample
    return model(x, t, ctx, controller, pooled)


def interleaved(runs, calls: dict, device) -> dict:
    """Each call once to warm up, then `runs` rounds of all of them in turn -> median seconds per call, and
    under "rounds" each round's times relative to the first call's."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            times[name].append(measured_on(device, fn)[1])
    first = next(iter(times.values()))
    rounds = [" ".join(f"{v[r] / first[r]:.3f}" for v in times.values()) for r in range(runs)]
    return {name: statistics.median(v) for name, v in times.items()} | {"rounds": "; ".join(rounds)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256, help="image size in pixels (latent: size / 8)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=24, help="fewer blocks, to try the script (24: the model)")
    args = p.parse_args()
    cfg = SD3Config()
    cfg.mmdit.depth = args.depth
    cfg.mmdit.dual_attention_layers = tuple(i for i in cfg.mmdit.dual_attention_layers if i < args.depth)
    ours, theirs = build(cfg, args.device)
    tokens = (args.size // 16) ** 2
    print(
        f"SD3.5 Medium MM-DiT (random weights, {sum(v.numel() for v in ours.parameters()) / 1e9:.2f} B), "
        f"{args.size}x{args.size} ({tokens} image + 333 text tokens), {args.device}, "
        f"{torch.get_num_threads()} threads, median of {args.runs}"
    )
    tokenizer = load_tokenizer(cfg.text)
    edits = {
        "all blocks": make_edit(*PROMPTS, tokenizer),
        "late third": make_edit(*PROMPTS, tokenizer, cross_places=["late"], self_places=["late"]),
    }
    hw = (args.size // 8, args.size // 8)
    for e in edits.values():
        e.start(defaults.SD3_STEPS, hw, args.device)
        e.before_step(2)  # inside both windows: cross and self maps replaced
    for dt in args.dtypes:
        dtype = DTYPES[dt]
        ours, theirs = ours.to(dtype), theirs.to(dtype)
        gc.collect()
        data = inputs(2, args.size, args.device, dtype)
        diff = (step("ours", ours, *data).float() - step("diffusers", theirs, *data).float()).abs().max()
        med = interleaved(
            args.runs,
            {
                w: (lambda w=w, m=m, d=data: step(w, m, *d))
                for w, m in (("ours", ours), ("diffusers", theirs))
            },
            args.device,
        )
        print(
            f"{dt}: ours {med['ours']:.2f} s, diffusers {med['diffusers']:.2f} s, ours / diffusers "
            f"{med['ours'] / med['diffusers']:.3f}; max |ours - diffusers| {diff:.2e}; per round (ours 1, "
            f"diffusers): {med['rounds']}"
        )
        data = inputs(4, args.size, args.device, dtype)
        calls = {"plain": lambda m=ours, d=data: step("ours", m, *d)}
        calls.update(
            {k: (lambda e=e, m=ours, d=data: step("ours", m, *d, controller=e)) for k, e in edits.items()}
        )
        med = interleaved(args.runs, calls, args.device)
        print(
            f"{dt}: edit step (batch 4) plain {med['plain']:.2f} s; with the edit's maps: "
            + ", ".join(f"{k} {med[k]:.2f} s ({med[k] / med['plain']:.2f}x)" for k in edits)
            + f"; per round, relative to plain: {med['rounds']}"
        )
    print(f"process RSS at the end {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
