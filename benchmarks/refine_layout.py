"""Does Refine keep the layout? Refine edits that add a colour word on the shapes model, by the analyser.

    python benchmarks/refine_layout.py [--seeds 24] [--steps 50]
    python benchmarks/refine_layout.py --weights shapes-mmdit       # the MM-DiT sibling (28 Euler steps)

For each of evaluation.REFINES and each seed whose source image shows its prompt: does the object take the
colour, and how far (px, of 64) did its centre move, against plain generation of the target from the same
noise; for Refine with the defaults (the paper's windows; self-attention at maps up to 1/4 of the latent per
side and at every map of at most 16x16, which on this model's 16x16 latent is every map), and keeping the
source's self-attention for longer (KEEP_STRUCTURE).
"""

import argparse

import numpy as np
from report import header, row

import minip2p
from minip2p import defaults, shapes
from minip2p.evaluation import REFINES, edit_variants

VARIANTS = {
    "Refine, defaults (0.8 / 0.4; SD3: 0.8 / 0.6)": {},
    "plain target, same noise": None,
    "Refine, keep structure (self 0.8)": defaults.KEEP_STRUCTURE,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", help="a model file, or a bundled model's name (default: shapes)")
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--steps", type=int, help="default: the model's (DDIM 50; SD3 28)")
    args = p.parse_args()
    pipe = minip2p.load(args.weights)
    rows = {name: [] for name in VARIANTS}  # (background, scores)
    for seed in range(args.seeds):
        for source, target, k in REFINES:
            scores = edit_variants(pipe, source, target, k, seed, VARIANTS, steps=args.steps, progress=False)
            for name, s in (scores or {}).items():
                rows[name].append((shapes.parse(source).background, s))
    n = len(rows[next(iter(VARIANTS))])
    print(
        f"Refine, a colour word added: {n} of {args.seeds * len(REFINES)} cases whose source shows its prompt"
    )
    print(
        header(
            "edit",
            "took the colour",
            "centre moved (median px)",
            "moved > 8 px",
            "> 8 px: black / white / gray",
        )
    )
    for name, r in rows.items():
        took = [s for _, s in r if s["edited"]]
        moved = np.array([s["moved"] for s in took])
        far = {
            bg: np.mean([s["moved"] > 8 for b, s in r if s["edited"] and b == bg])
            for bg in shapes.BACKGROUNDS
        }
        per_bg = " / ".join(f"{100 * far[bg]:.0f}%" for bg in ("black", "white", "gray"))
        print(
            row(
                name,
                f"{100 * len(took) / len(r):.0f}%",
                f"{np.median(moved):.1f}",
                f"{100 * np.mean(moved > 8):.0f}%",
                per_bg,
            )
        )


if __name__ == "__main__":
    main()
