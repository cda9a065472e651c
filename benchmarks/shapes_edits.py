"""What Prompt-to-Prompt edits do on the shapes model, measured with the analyser over many seeds.

    python benchmarks/shapes_edits.py [--seeds 50] [--reweight-seeds 12] [--steps 50] [--dtype bfloat16]
    python benchmarks/shapes_edits.py --sampler dpm++ --steps 20
    python benchmarks/shapes_edits.py --weights shapes-mmdit      # the MM-DiT sibling (SD3's Euler, 28 steps)

- Word swap (Replace) of one object's shape or colour: does the edited object take the new attribute, does the
  other object keep its mask (IoU with the source's) and the background stay? Against plain same-seed
  generation of the target prompt. Seeds whose source image does not show its prompt are left out (and
  counted).
- LocalBlend: pixel change outside the edited object, with and without blending.
- Reweight: what is left of what a word names (an object, the background) as that word's attention is scaled.
"""

import argparse

import numpy as np
from report import header, row

import minip2p
from minip2p import defaults
from minip2p.checks import DTYPES
from minip2p.evaluation import REWEIGHT_PROMPT, REWEIGHT_SHOWS, reweight_shown, swap_edit


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", help="a model file, or a bundled model's name (default: shapes)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the model's precision")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--reweight-seeds", type=int, default=12)
    p.add_argument("--steps", type=int, help="sampling steps (default: the sampler's: DDIM 50, DPM++ 20)")
    p.add_argument("--sampler", choices=list(defaults.ALL_SAMPLERS), help="default: the model's first")
    args = p.parse_args()
    pipe = minip2p.load(args.weights, dtype=args.dtype)
    args.sampler = args.sampler or pipe.samplers[0]
    args.steps = args.steps or pipe.default_steps(args.sampler)
    options = dict(steps=args.steps, sampler=args.sampler, progress=False)

    rows = {"Replace": [], "plain target": [], "Replace + LocalBlend": []}
    for seed in range(args.seeds):
        for name, r in (swap_edit(pipe, seed, **options) or {}).items():
            rows[name].append(r)
    n = len(rows["Replace"])
    print(
        f"word swaps: {n} of {args.seeds} seeds whose source image shows its prompt "
        f"({args.steps} {args.sampler} steps, guidance {pipe.guidance_scale}, {args.dtype})"
    )
    print(
        header(
            "method",
            "edited object takes the new attribute",
            "its centre moved (px, median)",
            "other object's mask IoU (mean)",
            "IoU >= 0.9",
            "background kept",
            "pixel change outside the edited object (0-255)",
        )
    )
    for name, r in rows.items():
        ious = np.array([x["kept_iou"] for x in r])
        edited, moved = np.mean([x["edited"] for x in r]), np.nanmedian([x["moved"] for x in r])
        kept, outside = np.mean([x["background"] for x in r]), np.mean([x["outside"] for x in r])
        print(
            row(
                name,
                f"{100 * edited:.0f}%",
                f"{moved:.1f}",
                f"{ious.mean():.2f}",
                f"{100 * np.mean(ious >= 0.9):.0f}%",
                f"{100 * kept:.0f}%",
                f"{outside:.1f}",
            )
        )

    print(
        f"\nReweight of one word of '{REWEIGHT_PROMPT}' (source: that prompt, same seed), "
        f"{args.reweight_seeds} seeds: how often the analyser still finds what each word names"
    )
    print(header("word", "scale", *REWEIGHT_SHOWS))
    for word in ("square", "white"):
        for scale in (-4.0, -2.0, 1.0, 4.0):
            shown = reweight_shown(pipe, word, scale, range(args.reweight_seeds), **options)
            print(row(word, scale, *(f"{100 * v:.0f}%" for v in shown.values())))


if __name__ == "__main__":
    main()
