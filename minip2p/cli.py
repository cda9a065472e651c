"""Command line: `python -m minip2p generate|demo ...` (also installed as `minip2p`)."""
import argparse
import sys
from pathlib import Path

import torch


def image_grid(images, captions=None, min_size=256, caption_height=14):
    """Images side by side, each with an optional caption strip above it (PIL only); small images are enlarged
    (nearest neighbour) to at least min_size so captions fit."""
    from PIL import Image, ImageDraw
    k = max(1, -(-min_size // images[0].size[0]))
    images = [im.resize((im.size[0] * k, im.size[1] * k), Image.NEAREST) for im in images]
    w, h = images[0].size
    top = caption_height if captions else 0
    grid = Image.new("RGB", (w * len(images), h + top), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        grid.paste(im, (i * w, top))
        if captions:
            draw.text((i * w + 2, 1), captions[i], fill="black")
    return grid


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


def cmd_demo(args):
    import minip2p
    from minip2p.checkpoint import BUNDLED
    out = check_out(args.out)
    if BUNDLED.exists():
        pipe, note = minip2p.load(None), ""
    else:
        from minip2p.demo_model import random_pipeline
        print(f"note: the bundled shapes-world model ({BUNDLED}) is not in this checkout yet, so the demo runs the "
              f"whole pipeline on a small random-weight model of the same architecture: the images are noise-like "
              f"patterns, not pictures. Pass a real checkpoint with `minip2p generate --weights PATH`.",
              file=sys.stderr)
        pipe, note = random_pipeline(), " (random weights)"
    prompts = ["a red circle on a white background", "a blue square on a black background",
               "a green triangle", "a purple square and a yellow circle"]
    images = pipe.generate(prompts, seed=args.seed, steps=args.steps)
    image_grid(images, [p + note for p in prompts]).save(out)
    print(f"wrote {out.resolve()}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="minip2p", description="Stable Diffusion with Prompt-to-Prompt editing")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text to image")
    g.add_argument("--weights", help="an SD .safetensors file or diffusers folder (default: the bundled model)")
    g.add_argument("--prompt", action="append", required=True, help="repeat for several images from one noise")
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--prediction", choices=["epsilon", "v"], help="v for SD2 768-v models")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--out", default="out.png")
    g.set_defaults(run=cmd_generate)

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
