"""What Prompt-to-Prompt edits do on the shapes model, measured with the analyser over many seeds.

    python benchmarks/shapes_edits.py [--seeds 50] [--reweight-seeds 12] [--steps 50]

- Word swap (Replace) of one object's shape or colour: does the edited object take the new attribute, does the
  other object keep its mask (IoU with the source's) and the background stay? Against plain same-seed
  generation of the target prompt. Seeds whose source image does not show its prompt are left out (and counted).
- LocalBlend: pixel change outside the edited object, with and without blending.
- Reweight: what is left of what a word names (an object, the background) as that word's attention is scaled.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minip2p  # noqa: E402
from minip2p import shapes  # noqa: E402

SWAPS = [  # (source, target, index of the edited object): two shape swaps, two colour swaps
    ("a red circle and a blue square on a white background", "a red triangle and a blue square on a white background", 0),
    ("a yellow square and a green circle on a black background", "a yellow square and a purple circle on a black background", 1),
    ("a blue triangle and an orange circle on a gray background", "a blue square and an orange circle on a gray background", 0),
    ("a green square and a red triangle on a white background", "a green square and a blue triangle on a white background", 1),
]

REWEIGHT_PROMPT = "a red circle and a blue square on a white background"
REWEIGHT_CHECKS = {  # what the analyser must find, for each word of the prompt that names something
    "blue square": lambda bg, found: any((f.colour, f.shape) == ("blue", "square") for f in found),
    "red circle": lambda bg, found: any((f.colour, f.shape) == ("red", "circle") for f in found),
    "white background": lambda bg, found: bg == "white",
}


def reweight_shown(pipe, word, scale, seeds, **kw):
    """Reweight `word` of REWEIGHT_PROMPT by `scale` -> {check: fraction of seeds whose edited image passes it}."""
    rows = []
    for seed in seeds:
        _, img = pipe.edit(REWEIGHT_PROMPT, REWEIGHT_PROMPT, kind="reweight", reweight={word: scale}, seed=seed, **kw)
        bg, found = shapes.analyse(np.asarray(img))
        rows.append([check(bg, found) for check in REWEIGHT_CHECKS.values()])
    return dict(zip(REWEIGHT_CHECKS, np.mean(rows, axis=0)))


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def find(found, obj):
    """The analysed object that matches an Obj's colour and shape, else None."""
    for f in found:
        if f.colour == obj.colour and f.shape == obj.shape:
            return f
    return None


def centre(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def swap_edit(pipe, seed, **kw):
    """Word swap SWAPS[seed % 4] from `seed` -> None if the source image does not show its prompt (an edit of a
    wrong picture measures nothing), else {method: scores}: edited (the new attribute shown), kept_iou (the other
    object's mask IoU with the source's), moved (how far, in px, the edited object's centre is from where it was;
    NaN if it is not found), background (kept) and outside (mean abs pixel change, 0-255, outside the edited
    object)."""
    source, target, k = SWAPS[seed % len(SWAPS)]
    s_spec, t_spec = shapes.parse(source), shapes.parse(target)
    src, rep = pipe.edit(source, target, seed=seed, **kw)
    s_bg, s_found = shapes.analyse(np.asarray(src))
    if not shapes.matches(s_spec, s_bg, s_found)["all"]:
        return None
    plain = pipe.generate([target], seed=seed, **kw)[0]
    _, blended = pipe.edit(source, target, seed=seed, blend=sorted({t_spec.objects[k].shape, s_spec.objects[k].shape}),
                           **kw)
    src_other, src_edited = find(s_found, t_spec.objects[1 - k]), find(s_found, s_spec.objects[k])
    outside = ~src_edited.mask
    rows = {}
    for name, img in (("Replace", rep), ("plain target", plain), ("Replace + LocalBlend", blended)):
        o_bg, o_found = shapes.analyse(np.asarray(img))
        out_other = find(o_found, t_spec.objects[1 - k])
        out_edited = find(o_found, t_spec.objects[k])
        rows[name] = {"edited": float(out_edited is not None),
                      "moved": float(np.linalg.norm(centre(out_edited.mask) - centre(src_edited.mask)))
                      if out_edited is not None else float("nan"),
                      "kept_iou": float(iou(src_other.mask, out_other.mask)) if out_other is not None else 0.0,
                      "background": float(o_bg == s_bg),
                      "outside": float(np.abs(np.asarray(img, float) - np.asarray(src, float))[outside].mean())}
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--reweight-seeds", type=int, default=12)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    pipe = minip2p.load(args.weights)
    kw = dict(steps=args.steps, progress=False)

    rows = {"Replace": [], "plain target": [], "Replace + LocalBlend": []}
    for seed in range(args.seeds):
        scores = swap_edit(pipe, seed, **kw)
        for name, r in (scores or {}).items():
            rows[name].append(r)
    n = len(rows["Replace"])
    print(f"word swaps: {n} of {args.seeds} seeds whose source image shows its prompt ({args.steps} DDIM steps, "
          f"guidance 7.5)")
    print("| method | edited object takes the new attribute | its centre moved (px, median) | other object's mask "
          "IoU (mean) | IoU >= 0.9 | background kept | pixel change outside the edited object (0-255) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        ious = np.array([x["kept_iou"] for x in r])
        print(f"| {name} | {100 * np.mean([x['edited'] for x in r]):.0f}% | "
              f"{np.nanmedian([x['moved'] for x in r]):.1f} | {ious.mean():.2f} | {100 * np.mean(ious >= 0.9):.0f}% | "
              f"{100 * np.mean([x['background'] for x in r]):.0f}% | {np.mean([x['outside'] for x in r]):.1f} |")

    print(f"\nReweight of one word of '{REWEIGHT_PROMPT}' (source: that prompt, same seed), {args.reweight_seeds} seeds:"
          " how often the analyser still finds what each word names")
    print(f"| word | scale | {' | '.join(REWEIGHT_CHECKS)} |")
    print("| --- | --- |" + " --- |" * len(REWEIGHT_CHECKS))
    for word in ("square", "white"):
        for scale in (-4.0, -2.0, 1.0, 4.0):
            shown = reweight_shown(pipe, word, scale, range(args.reweight_seeds), **kw)
            print(f"| {word} | {scale} | " + " | ".join(f"{100 * v:.0f}%" for v in shown.values()) + " |")


if __name__ == "__main__":
    main()
