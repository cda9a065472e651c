"""Which blocks and steps of an MM-DiT should an edit take from its source? Measured on the shapes MM-DiT.

    python benchmarks/mmdit_places.py [--seeds 24] [--out runs/mmdit-places] [--weights shapes-mmdit]

The word swaps of `evaluation.SWAPS` (seed s edits swap s % 4, as `shapes_edits.py`), scored by the analyser
on the seeds whose source image shows its prompt, against plain generation of the target from the same noise:
1. which blocks take the source's image->text maps (`cross_places`: the early, middle, late third, or all),
   every block taking its image->image maps;
2. which take its image->image maps (`self_places`; none: `self_replace_steps` 0), image->text at every block;
3. for how many steps: a grid of `cross_replace_steps` x `self_replace_steps`, every block.
Run as one `minip2p.sweep` (a spec line per place setting, a grid over the windows): resumable, its images
and records in --out.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from report import header, row

import minip2p
from minip2p.evaluation import SWAPS, edit_scores
from minip2p.mmdit import THIRDS

CROSS = [0.2, 0.4, 0.6, 0.8, 1.0]  # cross_replace_steps of the window grid
SELF = [0.0, 0.2, 0.4, 0.6, 0.8]  # self_replace_steps
DEFAULT = (0.8, 0.4)  # the paper's windows: where tables 1 and 2 stand (SD3's default, 0.8 / 0.6, is in 3)
PLACES = {f"image->text at {t}": {"cross_places": [t], "self_replace_steps": DEFAULT[1]} for t in THIRDS}
PLACES.update(
    {f"image->image at {t}": {"self_places": [t], "self_replace_steps": DEFAULT[1]} for t in THIRDS}
)
PLACES["image->image nowhere"] = {"self_replace_steps": 0.0}


def spec(seeds: int) -> list:
    """The sweep: per swap, a line per place setting, and one with the window grid at every block."""
    lines = []
    for k, (source, target, _) in enumerate(SWAPS[:seeds]):
        base = dict(source=source, target=target, seeds=list(range(k, seeds, len(SWAPS))))
        for n, places in enumerate(PLACES.values()):
            lines.append(dict(base, id=f"p{n}-swap{k}", cross_replace_steps=DEFAULT[0], **places))
        lines.append(dict(base, id=f"grid-swap{k}", cross_replace_steps=CROSS, self_replace_steps=SELF))
    return lines


def scored(records) -> dict:
    """{(setting name, cross, self): [metrics of each seed whose source shows its prompt]}."""
    names = list(PLACES)
    out = {}
    for r in records:
        m, s = r["metrics"], r["settings"]
        if r.get("error") or m.get("edited") is None:
            continue
        line = r["key"].split("-swap")[0]
        name = "every block" if line == "grid" else names[int(line[1:])]
        out.setdefault((name, s["cross_replace_steps"], s["self_replace_steps"]), []).append(m)
    return out


def plain_targets(pipe, records, folder) -> list:
    """Plain generation of each target from its seed, scored against the sweep's source image."""
    out, done = [], set()
    for r in records:
        seed, (source, target, k) = r["settings"]["seed"], SWAPS[r["settings"]["seed"] % len(SWAPS)]
        if seed in done or r.get("error") or r["metrics"].get("edited") is None:
            continue
        done.add(seed)
        src = Image.open(Path(folder) / r["images"]["source"]).convert("RGB")
        plain = pipe.generate([target], seed=seed, progress=False)[0]
        out.append(edit_scores(src, plain, source, target, k))
    return out


def line(name, rows):
    if not rows:
        return row(name, 0, *["-"] * 5)
    ious = np.array([x["kept_iou"] for x in rows])
    moved = [x["moved"] for x in rows if x["moved"] is not None and not np.isnan(x["moved"])]  # NaN: lost
    return row(
        name,
        len(rows),
        f"{100 * np.mean([x['edited'] for x in rows]):.0f}%",
        f"{np.median(moved):.1f}" if moved else "-",
        f"{ious.mean():.2f}; {100 * np.mean(ious >= 0.9):.0f}%",
        f"{100 * np.mean([x['background'] for x in rows]):.0f}%",
        f"{np.mean([x['outside'] for x in rows]):.1f}",
    )


COLUMNS = (
    "seeds",
    "takes the new word",
    "centre moved (px)",
    "other object's IoU; >= 0.9",
    "background kept",
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--weights", default="shapes-mmdit", help="the shapes MM-DiT, or a file of one (its export)"
    )
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--out", default="runs/mmdit-places", help="the sweep's folder (resumed)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    sweep = dict(weights=args.weights, workers=args.workers, shapes=True)  # a file too is the shapes world
    records = minip2p.sweep(spec(args.seeds), args.out, **sweep)
    table = scored(records)
    pipe = minip2p.load(args.weights)
    plain = plain_targets(pipe, records, args.out)
    print(f"{args.weights}: word swaps on {args.seeds} seeds ({pipe.default_steps()} Euler steps)")
    print("\n1 and 2. which blocks take the source's maps (windows: cross 0.8, self 0.4)")
    print(header("edit", *COLUMNS, "change outside"))
    print(line("plain target, same noise", plain))
    print(line("every block (the paper's windows)", table.get(("every block", *DEFAULT), [])))
    for name in PLACES:
        print(line(name, table.get((name, DEFAULT[0], 0.0 if "nowhere" in name else DEFAULT[1]), [])))
    print("\n3. for how many steps (every block): cross_replace_steps x self_replace_steps")
    print(header("cross, self", *COLUMNS, "change outside"))
    for c in CROSS:
        for s in SELF:
            print(line(f"{c}, {s}", table.get(("every block", c, s), [])))


if __name__ == "__main__":
    main()
