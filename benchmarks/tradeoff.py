"""The paper's trade-off, on the bundled model: sweep cross_replace_steps from 0 to 1 over the shapes world's
word swaps and seeds, and plot how often the edit takes effect against what it keeps (the other object's
mask, the background, the pixels outside the edited object). A sweep like any user's: resumable, spread over
`--workers`.

    python benchmarks/tradeoff.py [--seeds 10] [--steps 50] [--workers 2] [--plot docs/tradeoff.png]
"""

import argparse

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from report import header, row

import minip2p
from minip2p.evaluation import SWAPS
from minip2p.files import atomic_write

GRID = [round(0.1 * i, 1) for i in range(11)]
SERIES = {  # metric: (label, colour, scale to put it on 0..1)
    "edited": ("edit takes effect (share of edits)", (200, 40, 40), 1),
    "kept_iou": ("other object's mask IoU", (30, 90, 200), 1),
    "background": ("background kept (share)", (40, 160, 60), 1),
    "outside": ("pixel change outside the edited object (0-255) / 16", (200, 120, 20), 1 / 16),
}


def mean(values) -> float:
    """The mean of the values that apply (None: the edit had no such score)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def plot(rows: dict, path):
    """x: cross_replace_steps; y: each series, on 0..1."""
    w, h, m = 720, 480, 60
    image = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)

    def xy(x, y):
        return m + x * (w - 2 * m), h - m - y * (h - 2 * m)

    d.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    for v in (0, 0.25, 0.5, 0.75, 1):
        d.text((xy(v, 0)[0] - 10, h - m + 6), f"{v:g}", fill="black", font=font)
        d.text((m - 34, xy(0, v)[1] - 7), f"{v:g}", fill="black", font=font)
    d.text((w / 2 - 120, h - 28), "cross_replace_steps  ->", fill="black", font=font)
    d.text((m, 12), "Replace on the shapes model: what the edit does and keeps", fill="black", font=font)
    for k, (metric, (label, colour, scale)) in enumerate(SERIES.items()):
        line = [xy(cross, float(np.clip(values[metric] * scale, 0, 1))) for cross, values in rows.items()]
        d.line(line, fill=colour, width=2)
        for px, py in line:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        d.text((m + 10, xy(0, 0.45)[1] + 16 * k), label, fill=colour, font=font)
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="/tmp/tradeoff")
    p.add_argument("--plot", default="docs/tradeoff.png")
    args = p.parse_args()
    spec = [
        {
            "id": f"swap{k}",
            "source": s,
            "target": t,
            "seeds": list(range(args.seeds)),
            "cross_replace_steps": GRID,
            "steps": args.steps,
        }
        for k, (s, t, _) in enumerate(SWAPS)
    ]
    records = minip2p.sweep(spec, args.out, workers=args.workers)
    scored = [r for r in records if r["metrics"]["edited"] is not None]  # the source shows its prompt
    seeds = len({(r["id"], r["settings"]["seed"]) for r in scored})
    print(
        f"{len(records)} edits; {seeds} of {len(SWAPS) * args.seeds} (swap, seed) pairs have a source image "
        f"that shows its prompt; {args.steps} DDIM steps, self_replace_steps 0.4"
    )
    labels = ["edit takes effect", "other object's IoU", "background kept", "pixel change outside (0-255)"]
    print(header("cross_replace_steps", *labels))
    rows = {}
    for cross in GRID:
        metrics = [r["metrics"] for r in scored if r["settings"]["cross_replace_steps"] == cross]
        rows[cross] = {metric: mean(m[metric] for m in metrics) for metric in SERIES}
        print(row(f"{cross:g}", *(f"{rows[cross][k]:.3f}" for k in SERIES)))
    plot(rows, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
