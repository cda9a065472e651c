"""Command line: `python -m minip2p generate|demo ...` (also installed as `minip2p`)."""
import argparse
from pathlib import Path

import torch

from .viz import image_grid


def check_out(path):
    out = Path(path)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise SystemExit(f"--out {out}: give an image file name ending in .png, .jpg or .webp")
    if not out.parent.exists():
        raise SystemExit(f"--out {out}: the folder {out.parent} does not exist")
    return out


def cmd_generate(args):
    import minip2p
    out = check_out(args.out)
    pipe = minip2p.load(args.weights, device=args.device, prediction=args.prediction)
    images = pipe.generate(args.prompt, seed=args.seed, steps=args.steps, guidance_scale=args.guidance,
                           height=args.height, width=args.width, negative_prompt=args.negative)
    image = images[0] if len(images) == 1 else image_grid(images, args.prompt)
    image.save(out)
    print(f"wrote {out}")


DEMO = [  # (label, source, target, edit arguments): Prompt-to-Prompt on the shapes world
    ("Replace: circle -> triangle", "a red circle and a blue square on a white background",
     "a red triangle and a blue square on a white background", {}),
    ("Replace + LocalBlend: red -> green", "a red circle and a blue square on a white background",
     "a green circle and a blue square on a white background", {"blend": ["circle"]}),
    ("Reweight: square x-4", "a red circle and a blue square on a white background",
     "a red circle and a blue square on a white background", {"kind": "reweight", "reweight": {"square": -4.0}}),
    ("Refine: + yellow", "a circle on a black background", "a yellow circle on a black background",
     {"kind": "refine"}),
]


def cmd_demo(args):
    import minip2p
    out = check_out(args.out)
    pipe = minip2p.load()  # the bundled shapes-world model
    images, captions, shown = [], [], set()
    for label, source, target, kw in DEMO:
        src, edited = pipe.edit(source, target, seed=args.seed, steps=args.steps, progress=False, **kw)
        if source not in shown:
            shown.add(source)
            images.append(src)
            captions.append(f"source: {source}")
        images.append(edited)
        captions.append(label)
    image_grid(images, captions, min_size=384, columns=len(images)).save(out)
    print(f"wrote {out.resolve()}: {len(DEMO)} Prompt-to-Prompt edits of {len(shown)} source images")


def parse_reweight(items):
    out = {}
    for item in items or []:
        word, sep, value = item.partition("=")
        try:
            out[word] = float(value)
        except ValueError:
            raise SystemExit(f"--reweight {item!r}: write WORD=SCALE, e.g. --reweight red=2") from None
        if not sep or not word:
            raise SystemExit(f"--reweight {item!r}: write WORD=SCALE, e.g. --reweight red=2")
    return out


def cmd_edit(args):
    import minip2p
    from .pipeline import default_edit_kind
    out = check_out(args.out)
    reweight = parse_reweight(args.reweight)
    pipe = minip2p.load(args.weights, device=args.device)
    prompts = [args.prompt, args.to]
    controller = pipe.edit_controller(*prompts, kind=args.kind, cross_replace_steps=args.cross,
                                      self_replace_steps=args.self_, blend=args.blend, reweight=reweight or None,
                                      self_max_fraction=args.self_size)  # every word checked before any sampling
    inversion = None
    if args.image:
        inversion = pipe.invert(args.image, args.prompt, method=args.invert, steps=args.steps,
                                guidance_scale=args.guidance)
    images = pipe.generate(prompts, seed=args.seed, controller=controller, steps=args.steps,
                           guidance_scale=args.guidance, inversion=inversion)
    if args.image:
        from .inversion import load_image
        images = [load_image(args.image, pipe.config.image_size)] + images
    kind = args.kind or default_edit_kind(args.prompt, args.to, reweight)
    label = kind + (f" + blend {' '.join(args.blend)}" if args.blend else "") + \
        (" + reweight " + " ".join(args.reweight) if reweight and kind != "reweight" else "")
    captions = [f"source: {args.prompt}", f"{label}: {args.to}"]
    if args.image:
        captions = ["input image", f"{args.invert} inversion: {args.prompt}", captions[1]]
    image_grid(images, captions, min_size=512).save(out)
    print(f"wrote {out}")


def cmd_attention(args):
    import minip2p
    from .p2p import AttentionStore
    from .viz import cross_attention_grid
    out = check_out(args.out)
    pipe = minip2p.load(args.weights, device=args.device)
    store = AttentionStore()
    image = pipe.generate([args.prompt], seed=args.seed, steps=args.steps, controller=store)[0]
    latent = pipe.config.image_size // pipe.factor
    res = args.res or max(latent // 4, 1)
    cross_attention_grid(store, args.prompt, res, pipe.tokenizer, image=image).save(out)
    print(f"wrote {out} (cross-attention at {res}x{res})")


def common(p, out):
    p.add_argument("--weights", help="an SD .safetensors file or diffusers folder (default: the bundled model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="minip2p", description="Stable Diffusion with Prompt-to-Prompt editing")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text to image")
    g.add_argument("--prompt", action="append", required=True, help="repeat for several images from one noise")
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--prediction", choices=["epsilon", "v"], help="v for SD2 768-v models")
    common(g, "out.png")
    g.set_defaults(run=cmd_generate)

    e = sub.add_parser("edit", help="Prompt-to-Prompt: the source image and its edit, side by side")
    e.add_argument("--prompt", required=True, help="the source prompt")
    e.add_argument("--to", required=True, help="the edited prompt")
    e.add_argument("--kind", choices=["replace", "refine", "reweight"],
                   help="default: replace for equal word counts, refine otherwise, reweight if only --reweight")
    e.add_argument("--blend", nargs="+", help="LocalBlend: confine the edit to these words' region")
    e.add_argument("--reweight", nargs="+", metavar="WORD=SCALE", help="scale a word's attention, e.g. red=2")
    e.add_argument("--cross", type=float, default=0.8, help="cross_replace_steps (fraction of the steps)")
    e.add_argument("--self", dest="self_", type=float, default=0.4, help="self_replace_steps")
    e.add_argument("--self-size", type=float, default=0.25,
                   help="self-attention is replaced at maps up to this fraction of the latent size (1: every size; "
                        "with --image, --self 0.8 --self-size 1 hold the structure better)")
    e.add_argument("--image", help="edit this image (it is inverted first; --prompt must describe it)")
    e.add_argument("--invert", choices=["null-text", "negative-prompt", "ddim"], default="null-text",
                   help="inversion method for --image")
    common(e, "edit.png")
    e.set_defaults(run=cmd_edit)

    a = sub.add_parser("attention", help="per-token cross-attention maps of a generation")
    a.add_argument("--prompt", required=True)
    a.add_argument("--res", type=int, help="map resolution in latent cells (default: a quarter of the latent)")
    common(a, "maps.png")
    a.set_defaults(run=cmd_attention)

    d = sub.add_parser("demo", help="the offline demo on the bundled model; writes demo.png")
    d.add_argument("--seed", type=int, default=8888)
    d.add_argument("--steps", type=int, default=50)
    d.add_argument("--out", default="demo.png")
    d.set_defaults(run=cmd_demo)

    args = p.parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
