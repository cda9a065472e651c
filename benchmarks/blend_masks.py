"""How well does LocalBlend's mask cover the object its word names? On the UNet model, and on the MM-DiT per
block and per direction of its joint attention.

    python benchmarks/blend_masks.py [--seeds 24]

The sources of `evaluation.SWAPS` (seed s draws swap s % 4) on the seeds whose image shows its prompt: the
edited object's shape word (LocalBlend's word in `shapes_edits.py`), its map at the places read, averaged over
the steps and heads, cut at a share of its maximum and max-pooled as LocalBlend cuts it (`blend.region`),
against the analyser's mask of that object: IoU, and the mask's area over the object's.
"""

import argparse

import numpy as np
from report import header, row

import minip2p
from minip2p import shapes
from minip2p.blend import region, token_alphas
from minip2p.evaluation import SWAPS, find
from minip2p.mmdit import THIRDS
from minip2p.store import AttentionStore

THRESHOLDS = (0.3, 0.5, 0.7)  # the first is LocalBlend's default


def sources(pipe, seeds: int):
    """-> [(store, source, shape word, its object's (64, 64) mask)] of the seeds whose image shows it."""
    out = []
    for seed in range(seeds):
        source, _, k = SWAPS[seed % len(SWAPS)]
        store = AttentionStore()
        image = pipe.generate([source], seed=seed, controller=store, progress=False)[0]
        spec, (bg, found) = shapes.parse(source), shapes.analyse(np.asarray(image))
        obj = find(found, spec.objects[k])
        if shapes.matches(spec, bg, found)["all"] and obj is not None:
            out.append((store, source, spec.objects[k].shape, obj.mask))
    return out


def scores(pipe, cases, places, part=None) -> list:
    """Per threshold: (mean IoU, mean mask area / object area) of the masks read at `places`."""
    out = []
    for t in THRESHOLDS:
        ious, areas = [], []
        for store, source, word, truth in cases:
            maps = store.aggregate(8, places, part=part)
            alpha = token_alphas([word], [source], pipe.tokenizer)
            mask = region(maps, alpha, store.latent_hw, t, pool=True)[0, 0].numpy()
            mask = mask.repeat(64 // mask.shape[0], 0).repeat(64 // mask.shape[1], 1)
            ious.append((mask & truth).sum() / (mask | truth).sum())
            areas.append(mask.sum() / truth.sum())
        out.append((np.mean(ious), np.mean(areas)))
    return out


def line(name, n, results):
    return row(name, n, *[f"{iou:.2f} ({area:.1f}x)" for iou, area in results])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=24)
    args = p.parse_args()
    cols = [f"IoU at {t:g} (mask / object area)" for t in THRESHOLDS]
    print(f"LocalBlend's mask against the analyser's object, sources of {args.seeds} seeds")
    print(header("model: maps read", "sources", *cols))
    unet = minip2p.load("shapes")
    cases = sources(unet, args.seeds)
    unet_maps = scores(unet, cases, ("down", "up"))
    print(line("UNet: down + up cross-attention, 8x8 (LocalBlend's)", len(cases), unet_maps))
    mmdit = minip2p.load("shapes-mmdit")
    cases = sources(mmdit, args.seeds)
    for part in ("image->text", "text->image"):
        wanted = None if part == "image->text" else part
        print(line(f"MM-DiT: {part}, every block", len(cases), scores(mmdit, cases, None, wanted)))
        for third in THIRDS:
            print(line(f"MM-DiT: {part}, {third} third", len(cases), scores(mmdit, cases, (third,), wanted)))
        for b in range(mmdit.transformer.cfg.depth):
            print(line(f"MM-DiT: {part}, block {b}", len(cases), scores(mmdit, cases, [b], wanted)))


if __name__ == "__main__":
    main()
