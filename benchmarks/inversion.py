"""Real-image inversion on the shapes model: reconstruction PSNR, time and memory per method; and an edit.

    python benchmarks/inversion.py [--scenes 20] [--edit-scenes 30] [--steps 50]
    python benchmarks/inversion.py --scenes 0 --colours green,yellow,orange,purple,blue [--control 5]
    python benchmarks/inversion.py --scenes 0 --full-sd1 [--sd1-steps 3 --sd1-inner 2]
    python benchmarks/inversion.py --weights shapes-mmdit --scenes 10 --edit-scenes 30   # Euler back, Direct
    python benchmarks/inversion.py --scenes 0 --full-sd1 --sd1-steps 50 --sd1-inner 10 --device cuda \
        --dtype float16,float32

Rendered scenes (known ground truth) are inverted with their full prompt at guidance 7.5 and reconstructed;
PSNR is against the input image, next to the VAE's own reconstruction (the ceiling). Then Replace + LocalBlend
after null-text inversion changes one object's colour: how often it changes (per background), and the PSNR of
the rest; as a control, the same edit on images the model generated itself (--colours: turned other colours
too). --full-sd1 adds time and peak memory of each method, and of an edit from the inversion, on the full SD1
config (random weights, 512x512; on the CPU by default, or --device cuda --dtype float16).
"""

import argparse
import gc
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from report import header, measured, measured_on, row

import minip2p
from minip2p import LocalBlend, Replace, defaults, shapes
from minip2p.evaluation import (
    away_from,
    colour_edit_scene,
    inverted_edit,
    psnr,
    rendered_scenes,
    turned,
    vae_round_trip,
)
from minip2p.testing import write_checkpoint

METHODS = ("ddim", "negative-prompt", "null-text", "direct")
EDIT_METHODS = ("null-text", "negative-prompt", "direct")  # inversions to edit from (--edit-methods)


def inversion_methods(pipe) -> tuple:
    """The methods this model inverts with (SD3's flow matching: the Euler steps backwards, and Direct)."""
    return ("ddim", "direct") if pipe.config.family.startswith("sd3") else METHODS


def shapes_model(pipe, args):
    methods = inversion_methods(pipe)
    scores, cost, vae = {m: [] for m in methods}, {m: [] for m in methods}, []
    for img, prompt in rendered_scenes(args.scenes):
        image = Image.fromarray(img)
        vae.append(psnr(vae_round_trip(pipe, img)[0], img))
        for m in methods:
            settings = dict(method=m, steps=args.steps, guidance_scale=args.guidance, progress=False)
            inv, dt, peak = measured(pipe.invert, image, prompt, **settings)
            rec = pipe.generate([prompt], inversion=inv, progress=False)[0]
            scores[m].append(psnr(rec, img))
            cost[m].append((dt, peak))
    steps, guidance = args.steps or pipe.default_steps(), args.guidance or pipe.guidance_scale
    print(f"{args.weights or 'shapes'}, {args.scenes} rendered scenes, {steps} steps, guidance {guidance}")
    print(header("method", "reconstruction PSNR (mean)", "time per image", "peak RSS"))
    print(row("VAE only (ceiling)", f"{np.mean(vae):.2f} dB", "", ""))
    for m in methods:
        seconds, peak = np.mean([c[0] for c in cost[m]]), max(c[1] for c in cost[m])
        print(row(m, f"{np.mean(scores[m]):.2f} dB", f"{seconds:.1f} s", f"{peak:.0f} MiB"))

    colour_edits(pipe, args)


EDITS = {
    "keep structure (self 0.8, every size)": defaults.KEEP_STRUCTURE,
    "defaults (self 0.4, SD3 0.6; up to 1/4)": dict(
        self_replace_steps=None, self_max_fraction=defaults.SELF_MAX_FRACTION
    ),
}


def colour_edits(pipe, args):
    """The red -> blue circle edit after each inversion, per background; then the same edit on images the
    model generated itself (seed noise, no inversion), to tell the inversion's share of a failure from the
    model's."""
    n = args.edit_scenes or args.scenes
    methods = [m for m in args.edit_methods.split(",") if m in inversion_methods(pipe)]
    scores = {(m, name): [] for m in methods for name in EDITS}  # (background, turned, rest, rest with rim)
    for k in range(n):
        img, source, target, circle = colour_edit_scene(k)
        for m in methods:
            inv = pipe.invert(Image.fromarray(img), source, method=m, steps=args.steps, progress=False)
            for name, edited in edited_circles(pipe, source, target, inversion=inv).items():
                rest, rim = psnr(edited, img, away_from(circle)), psnr(edited, img, ~circle)
                scores[m, name].append((shapes.parse(source).background, turned(edited, circle), rest, rim))
    print(
        "\nedit after inversion, 'a red circle ...' -> 'a blue circle ...' (Replace, LocalBlend on "
        f"'circle'), {n} scenes; the rest: pixels over 2 px from the circle, and with its redrawn rim"
    )
    columns = ("circle turned blue", "on black / white / gray", "PSNR of the rest (mean, min, >= 25 dB)")
    print(header("inversion", "self-attention kept", *columns, "with the rim", "rest: black / white / gray"))
    for (m, name), rows in scores.items():
        bgs = np.array([r[0] for r in rows])
        changed, rest, rim = (np.array(c, float) for c in list(zip(*rows))[1:])
        backgrounds = ("black", "white", "gray")
        per_bg = " / ".join(f"{int(changed[bgs == b].sum())}/{int((bgs == b).sum())}" for b in backgrounds)
        rest_bg = " / ".join(f"{rest[bgs == b].mean():.1f}" for b in backgrounds)
        kept = f"{rest.mean():.2f} dB, {rest.min():.2f}, {100 * np.mean(rest >= 25):.0f}%"
        print(row(m, name, f"{100 * changed.mean():.0f}%", per_bg, kept, f"{rim.mean():.2f} dB", rest_bg))
    print(
        "\nthe same edit on generated images (seed noise, no inversion): "
        f"{args.control} seeds per background whose image shows the red circle"
    )
    print(header("self-attention kept", "black", "white", "gray"))
    counts = {name: {bg: 0 for bg in ("black", "white", "gray")} for name in EDITS}
    for bg in ("black", "white", "gray"):
        for source, target, seed, circle in generated_red_circles(pipe, bg, args.control):
            for name, edited in edited_circles(pipe, source, target, seed=seed).items():
                counts[name][bg] += turned(edited, circle)
    for name, c in counts.items():
        print(row(name, *(f"{v}/{args.control}" for v in c.values())))


def colour_control(pipe, n, colours):
    """The keep-structure edit on generated images, the red circle turned each colour in turn: which swaps
    this model can make, per background."""
    print(
        "\nthe keep-structure edit on generated images, 'a red circle' -> 'a <colour> circle', "
        f"{n} seeds per background"
    )
    print(header("to", "black", "white", "gray"))
    found = {bg: generated_red_circles(pipe, bg, n) for bg in ("black", "white", "gray")}
    for colour in colours:
        counts = []
        for cases in found.values():
            ok = 0
            for source, _, seed, circle in cases:
                target = source.replace("a red circle", f"a {colour} circle", 1)
                edit = inverted_edit(pipe.tokenizer, source, target)  # keep structure
                ok += turned(
                    pipe.generate([source, target], controller=edit, seed=seed, progress=False)[1],
                    circle,
                    colour,
                )
            counts.append(f"{ok}/{n}")
        print(row(colour, *counts), flush=True)
    print("\nthe VAE latent (UNet units) at the centre of a rendered circle, mean per channel")
    print(header("circle", "black", "white", "gray"))
    for colour in [None, "red"] + colours:
        cells = []
        for bg in ("black", "white", "gray"):
            img = np.empty((shapes.SIZE, shapes.SIZE, 3), np.uint8)
            img[:] = shapes.BACKGROUNDS[bg]
            if colour:
                img[shapes.shape_mask("circle", 32, 32, 30)] = shapes.COLOURS[colour]
            z = pipe.encode(Image.fromarray(img))[0, :, 6:10, 6:10].mean((1, 2))  # cells 6-9: pixels 24-39
            cells.append(" ".join(f"{v:+.2f}" for v in z.tolist()))
        print(row(colour or "(background)", *cells))


def edited_circles(pipe, source, target, **generate):
    """{EDITS name: the edited image}, from an inversion (inversion=) or from seed noise (seed=)."""
    return {
        name: pipe.generate(
            [source, target],
            controller=inverted_edit(pipe.tokenizer, source, target, **kw),
            progress=False,
            **generate,
        )[1]
        for name, kw in EDITS.items()
    }


def generated_red_circles(pipe, background, n, others=("green triangle", "purple square", "yellow triangle")):
    """The first n seeds whose generated 'a red circle and a <other> on a <background> background' shows a red
    circle on that background -> [(source, target, seed, the circle's mask)]."""
    out, seed = [], 0
    while len(out) < n:
        source = f"a red circle and a {others[seed % len(others)]} on a {background} background"
        bg, found = shapes.analyse(np.asarray(pipe.generate([source], seed=seed, progress=False)[0]))
        circles = [f.mask for f in found if (f.colour, f.shape) == ("red", "circle")]
        if circles and bg == background:
            out.append((source, source.replace("a red circle", "a blue circle", 1), seed, circles[0]))
        seed += 1
        if seed > 20 * n:
            raise RuntimeError(
                f"the model drew a red circle on {background} in only {len(out)} of {seed} seeds"
            )
    return out


def full_sd1(args):
    """Time and peak memory of each method, and of an edit from the inversion, on the full SD1 config."""
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(Path(d) / "sd1.safetensors", minip2p.ModelConfig.sd1(), with_config=False)
        for dtype in args.dtype.split(","):
            pipe = minip2p.load(Path(d) / "sd1.safetensors", device=args.device, dtype=getattr(torch, dtype))
            full_sd1_costs(pipe, args.sd1_steps, args.sd1_inner, dtype)
            del pipe
            gc.collect()


def full_sd1_costs(pipe, steps, inner, dtype):
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    memory = "peak RSS" if pipe.device.type == "cpu" else "peak GPU memory allocated"
    print(
        f"\nfull SD1 config (random weights), 512x512, {steps} steps, {inner} inner steps "
        f"(random weights never stop early: every inner step runs), {pipe.device.type} {dtype}"
    )
    print(header("method", "time", memory))
    source, target = "a photo of a cat", "a photo of a dog"
    options = dict(steps=steps, inner_steps=inner, progress=False)
    for m in METHODS:
        inv, dt, peak = measured_on(pipe.device, pipe.invert, image, source, method=m, **options)
        assert torch.isfinite(inv.null_embeddings).all() and torch.isfinite(inv.latent).all(), m
        print(row(m, f"{dt:.1f} s", f"{peak:.0f} MiB"), flush=True)
    edit = Replace([source, target], pipe.tokenizer, local_blend=LocalBlend(["cat", "dog"]))
    _, dt, peak = measured_on(
        pipe.device, pipe.generate, [source, target], inversion=inv, controller=edit, progress=False
    )
    print(
        row(
            f"Replace + LocalBlend edit from the {METHODS[-1]} inversion (2 images)",
            f"{dt:.1f} s",
            f"{peak:.0f} MiB",
        )
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", help="a model file, or a bundled model's name (default: shapes)")
    p.add_argument("--scenes", type=int, default=20, help="shapes-model scenes (0: only --full-sd1)")
    p.add_argument("--steps", type=int, help="default: the model's (DDIM 50; SD3 28)")
    p.add_argument("--guidance", type=float, help="default: the model's (7.5; SD3 7.0)")
    p.add_argument("--edit-scenes", type=int, default=0, help="scenes for the colour edit (0: --scenes)")
    p.add_argument("--edit-methods", default=",".join(EDIT_METHODS), help="inversions to edit from")
    p.add_argument(
        "--control", type=int, default=5, help="generated images per background for the edit's control"
    )
    p.add_argument(
        "--colours",
        default="",
        help="also the control with the red circle turned each of these "
        "colours (e.g. green,yellow,orange,purple,blue)",
    )
    p.add_argument("--full-sd1", action="store_true")
    p.add_argument("--sd1-steps", type=int, default=3, help="--full-sd1: DDIM steps")
    p.add_argument("--sd1-inner", type=int, default=2, help="--full-sd1: null-text inner steps")
    p.add_argument("--device", default="cpu", help="--full-sd1: device (cuda for GPU figures)")
    p.add_argument(
        "--dtype",
        default="float32",
        help="--full-sd1: float32, float16 or bfloat16, or several: float16,float32",
    )
    args = p.parse_args()
    pipe = minip2p.load(args.weights) if args.scenes or args.colours else None
    if args.scenes:
        shapes_model(pipe, args)
    if args.colours:
        colour_control(pipe, args.control, args.colours.split(","))
    if args.full_sd1:
        full_sd1(args)


if __name__ == "__main__":
    main()
