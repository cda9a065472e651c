"""Command line: `python -m minip2p generate|edit|attention|sweep|demo ...` (also installed as `minip2p`)."""

import argparse
import sys
from pathlib import Path

import torch

from . import __version__, defaults
from .checks import DTYPES
from .files import IMAGE_SUFFIXES, check_output, save_image
from .images import load_image
from .inversion import METHODS
from .loading import load
from .p2p import AttentionStore, default_edit_kind, make_edit
from .sweep import sweep
from .viz import cross_attention_grid, image_grid

DEMO = [  # (label, source, target, edit options): Prompt-to-Prompt on the shapes world
    (
        "Replace: circle -> triangle",
        "a red circle and a blue square on a white background",
        "a red triangle and a blue square on a white background",
        {},
    ),
    (
        "Replace + LocalBlend: red -> green",
        "a red circle and a blue square on a white background",
        "a green circle and a blue square on a white background",
        {"blend": ["circle"]},
    ),
    (
        "Reweight: square=-4",
        "a red circle and a blue square on a white background",
        "a red circle and a blue square on a white background",
        {"kind": "reweight", "reweight": {"square": -4.0}},
    ),
    (
        "Refine: + yellow",
        "a circle on a black background",
        "a yellow circle on a black background",
        {"kind": "refine"},
    ),
]
DEMO_SEEDS = {"shapes": 8888, "shapes-mmdit": 8011}  # seeds whose two sources show their prompts


def load_model(args):
    for option in ("dtype", "vae_dtype"):
        name = getattr(args, option)
        if name is not None and name not in DTYPES:
            raise ValueError(f"--{option.replace('_', '-')} {name}: use {', '.join(DTYPES)}")
    weights, prediction = getattr(args, "weights", None), getattr(args, "prediction", None)
    sd3 = {k: getattr(args, k, None) for k in ("text_encoders", "tokenizers")}
    return load(
        weights,
        device=args.device,
        dtype=args.dtype,
        vae_dtype=args.vae_dtype,
        prediction=prediction,
        **{k: v for k, v in sd3.items() if v is not None},
    )


def parse_places(items):
    """--cross-places early 3 ... -> ["early", 3] (block numbers as ints); None stays None."""
    return None if items is None else [int(x) if x.isdigit() else x for x in items]


def cmd_generate(args):
    out = check_output(args.out, IMAGE_SUFFIXES)  # before the model is even loaded
    pipe = load_model(args)
    images = pipe.generate(
        args.prompt,
        seed=args.seed,
        steps=args.steps,
        sampler=args.sampler,
        guidance_scale=args.guidance,
        height=args.height,
        width=args.width,
        negative_prompt=args.negative,
        max_size=args.max_size,
        progress=not args.quiet,
    )
    save_image(images[0] if len(images) == 1 else image_grid(images, args.prompt), out)
    print(f"wrote {out} (seed {args.seed})")


def cmd_demo(args):
    out = check_output(args.out, IMAGE_SUFFIXES)  # before the model is even loaded
    pipe = load_model(args)  # a bundled shapes-world model
    seed = DEMO_SEEDS.get(args.weights, DEMO_SEEDS["shapes"]) if args.seed is None else args.seed
    images, captions = [], []
    for source in dict.fromkeys(s for _, s, _, _ in DEMO):  # the edits of one source: one batch
        edits = [(label, target, o) for label, s, target, o in DEMO if s == source]
        options = {k: [o.get(k) for _, _, o in edits] for k in {k for _, _, o in edits for k in o}}
        run = dict(seed=seed, steps=args.steps, sampler=args.sampler, progress=not args.quiet)
        images += pipe.edit(source, [target for _, target, _ in edits], **run, **options)
        captions += [f"source: {source}"] + [label for label, _, _ in edits]
    save_image(image_grid(images, captions, min_size=384, columns=len(images)), out)
    sources = len(images) - len(DEMO)
    print(f"wrote {out.resolve()}: {len(DEMO)} Prompt-to-Prompt edits of {sources} source images")


def parse_reweight(items) -> dict:
    out = {}
    for item in items or []:
        word, sep, value = item.partition("=")
        try:
            out[word] = float(value)
        except ValueError:
            raise SystemExit(f"error: --reweight {item!r}: write WORD=SCALE, e.g. --reweight red=2") from None
        if not sep or not word:
            raise SystemExit(f"error: --reweight {item!r}: write WORD=SCALE, e.g. --reweight red=2")
    return out


def edit_label(kind: str, blend, reweight: dict) -> str:
    """What an edit did, for its caption: "replace + blend circle square + reweight red=2"."""
    label = kind + (f" + blend {' '.join(blend)}" if blend else "")
    words = " ".join(f"{w}={s:g}" for w, s in reweight.items())
    return label + (f" {words}" if kind == "reweight" else f" + reweight {words}" if reweight else "")


def cmd_edit(args):
    out = check_output(args.out, IMAGE_SUFFIXES)  # before the model is even loaded
    reweight = parse_reweight(args.reweight)
    pipe = load_model(args)
    prompts = [args.prompt, args.to]
    controller = make_edit(  # every word and setting checked before the slow work
        *prompts,
        pipe.tokenizer,
        kind=args.kind,
        cross_replace_steps=args.cross,
        self_replace_steps=args.self_,
        self_max_fraction=args.self_size,
        blend=args.blend,
        reweight=reweight or None,
        cross_places=parse_places(args.cross_places),
        self_places=parse_places(args.self_places),
    )
    sampling = dict(steps=args.steps, guidance_scale=args.guidance, progress=not args.quiet)
    inversion = None
    if args.image:
        inversion = pipe.invert(args.image, args.prompt, method=args.invert, **sampling)
    images = pipe.generate(
        prompts,
        seed=args.seed,
        controller=controller,
        inversion=inversion,
        sampler=args.sampler,
        **sampling,
    )
    label = edit_label(args.kind or default_edit_kind(*prompts, reweight), args.blend, reweight)
    captions = [f"source: {args.prompt}", f"{label}: {args.to}"]
    if args.image:
        images = [load_image(args.image, pipe.config.image_size)] + images
        captions = ["input image", f"{args.invert} inversion: {args.prompt}", captions[1]]
    save_image(image_grid(images, captions, min_size=512), out)
    print(f"wrote {out}")


def cmd_attention(args):
    out = check_output(args.out, IMAGE_SUFFIXES)  # before the model is even loaded
    pipe = load_model(args)
    latent = pipe.config.image_size // pipe.pixels_per_cell
    sizes = sorted({latent // p.downsample for p in pipe.denoiser.places() if p.is_cross})
    res = sizes[-1] if args.res is None else args.res  # the finest maps by default
    if res not in sizes:
        raise ValueError(f"--res {res}: this model's cross-attention maps are {sizes} cells wide")
    store = AttentionStore()
    image = pipe.generate(
        [args.prompt],
        seed=args.seed,
        steps=args.steps,
        sampler=args.sampler,
        guidance_scale=args.guidance,
        controller=store,
        progress=not args.quiet,
    )[0]
    save_image(cross_attention_grid(store, args.prompt, res, pipe.tokenizer, image=image), out)
    print(f"wrote {out} (cross-attention at {res}x{res})")


def common(p, out: str):
    p.add_argument(
        "--weights",
        help="an SD .safetensors file or diffusers folder, or a bundled model: shapes (the default), "
        "shapes-mmdit (its SD3-family sibling)",
    )
    p.add_argument("--text-encoders", help="SD3: a folder with the text encoders the file lacks")
    p.add_argument("--tokenizers", help="SD3: a folder with T5's tokenizer (tokenizer_3/)")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the initial noise")
    p.add_argument(
        "--steps",
        type=int,
        help=f"sampling steps (default: {defaults.STEPS} DDIM steps, {defaults.DPM_STEPS} DPM++ steps; SD3: "
        f"{defaults.SD3_STEPS} Euler steps)",
    )
    p.add_argument(
        "--sampler",
        help=f"ddim (the paper's, default) or dpm++ (DPM-Solver++(2M): {defaults.DPM_STEPS} steps do what "
        "DDIM does in 50); SD3: euler",
    )
    p.add_argument(
        "--guidance",
        type=float,
        help=f"classifier-free guidance scale (default: {defaults.GUIDANCE_SCALE}; SDXL: "
        f"{defaults.SDXL_GUIDANCE_SCALE}; SD3: {defaults.SD3_GUIDANCE_SCALE})",
    )
    p.add_argument("--out", default=out, help="the picture to write")
    model_options(p)


def model_options(p):
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, mps"
    )
    p.add_argument("--dtype", default="float32", help=f"the model's precision: {', '.join(DTYPES)}")
    p.add_argument(
        "--vae-dtype", help="the VAE's precision, if not the model's (float32 decodes a float16 model)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class DefaultsShown(argparse.HelpFormatter):
    """--help says each option's default, where it has one (the values of minip2p.defaults)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    formatter = DefaultsShown
    p = argparse.ArgumentParser(prog="minip2p", description="Stable Diffusion with Prompt-to-Prompt editing")
    p.add_argument("--version", action="version", version=f"minip2p {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text to image", formatter_class=formatter)
    g.add_argument(
        "--prompt", action="append", required=True, help="repeat for several images from one noise"
    )
    g.add_argument(
        "--negative", default=None, help="negative prompt (none: the empty prompt; SDXL: zero embeddings)"
    )
    g.add_argument("--height", type=int, help="image height (default: the model's size)")
    g.add_argument("--max-size", type=int, help="allow sizes up to this (default: 4x the model's size)")
    g.add_argument("--width", type=int, help="image width (default: the model's size)")
    g.add_argument(
        "--prediction", choices=["epsilon", "v"], help="v for SD2 768-v models (default: from the file)"
    )
    common(g, "out.png")
    g.set_defaults(run=cmd_generate)

    e = sub.add_parser(
        "edit", help="Prompt-to-Prompt: the source image and its edit", formatter_class=formatter
    )
    e.add_argument("--prompt", required=True, help="the source prompt")
    e.add_argument("--to", required=True, help="the edited prompt")
    e.add_argument(
        "--kind",
        choices=["replace", "refine", "reweight"],
        help="default: replace for equal word counts, refine otherwise, reweight if only --reweight",
    )
    e.add_argument("--blend", nargs="+", help="LocalBlend: confine the edit to these words' region")
    e.add_argument("--reweight", nargs="+", metavar="WORD=SCALE", help="scale a word's attention, e.g. red=2")
    e.add_argument(
        "--cross",
        type=float,
        default=defaults.CROSS_REPLACE_STEPS,
        help="cross_replace_steps: fraction of the steps the target takes the source's cross-attention",
    )
    e.add_argument(
        "--self",
        dest="self_",
        metavar="SELF",
        type=float,
        help="self_replace_steps: fraction of the steps the target takes the source's self-attention "
        f"(default {defaults.SELF_REPLACE_STEPS:g}; SD3 {defaults.SD3_SELF_REPLACE_STEPS:g})",
    )
    e.add_argument(
        "--self-size",
        type=float,
        default=defaults.SELF_MAX_FRACTION,
        help="self-attention is replaced at maps up to this fraction of the latent size (1: every size; "
        "with --image, --self 0.8 --self-size 1 hold the structure better)",
    )
    for which in ("cross", "self"):
        e.add_argument(
            f"--{which}-places",
            nargs="+",
            metavar="PLACE",
            help=f"only these places take the source's {which}-attention: down mid up (UNet), early middle "
            "late (MM-DiT thirds) or block numbers (default: all)",
        )
    e.add_argument("--image", help="edit this image (it is inverted first; --prompt must describe it)")
    e.add_argument(
        "--invert",
        choices=METHODS,
        default=defaults.INVERSION_METHOD,
        help="inversion method for --image",
    )
    common(e, "edit.png")
    e.set_defaults(run=cmd_edit)

    a = sub.add_parser(
        "attention", help="per-token cross-attention maps of a generation", formatter_class=formatter
    )
    a.add_argument("--prompt", required=True)
    a.add_argument("--res", type=int, help="map size in latent cells (default: the finest maps)")
    common(a, "maps.png")
    a.set_defaults(run=cmd_attention)

    w = sub.add_parser(
        "sweep", help="many edits from a JSONL spec, resumable, with metrics", formatter_class=formatter
    )
    w.add_argument("spec", help='JSONL, one edit a line: {"source": ..., "target": ..., "seeds": [...]}')
    w.add_argument("--out", required=True, help="folder for images/ and results.jsonl (re-run to resume)")
    w.add_argument("--weights", help="a model file or folder (default: the bundled shapes model)")
    w.add_argument("--workers", type=int, default=1, help="local processes, one model each (or Ray workers)")
    w.add_argument(
        "--threads", type=int, default=1, help="torch threads per worker (fixed: results depend on it)"
    )
    w.add_argument(
        "--batch",
        type=int,
        default=defaults.SWEEP_BATCH,
        help="edits of one source and seed computed in one batch (fixed: results depend on it)",
    )
    w.add_argument("--ray", action="store_true", help="run the workers on Ray (pip install 'minip2p[scale]')")
    w.add_argument("--ray-address", help="an existing Ray cluster (default: a local Ray for this run)")
    w.add_argument(
        "--clip", help="a local transformers CLIPModel folder: CLIP metrics (nothing is downloaded)"
    )
    w.add_argument("--keep", help="mark the edits that pass, e.g. clip_dir>=0.2,clip_img>=0.75")
    w.add_argument("--shapes", action="store_true", default=None, help="the analyser for a shapes model file")
    model_options(w)
    w.set_defaults(run=cmd_sweep, device=None)  # None: the CPU, or a GPU per worker on a Ray cluster

    d = sub.add_parser(
        "demo", help="the offline demo on the bundled model; writes demo.png", formatter_class=formatter
    )
    d.add_argument("--weights", help="the bundled model: shapes (default), or shapes-mmdit (its MM-DiT)")
    d.add_argument("--seed", type=int, help=f"seed of the initial noise (default, per model: {DEMO_SEEDS})")
    d.add_argument(
        "--steps", type=int, help=f"sampling steps (default: the model's, {defaults.STEPS} DDIM; 28 Euler)"
    )
    d.add_argument("--sampler", help="ddim (default) or dpm++; shapes-mmdit: euler")
    d.add_argument("--out", default="demo.png", help="the picture to write")
    model_options(d)
    d.set_defaults(run=cmd_demo)
    return p


def cmd_sweep(args):
    try:
        records = sweep(
            args.spec,
            args.out,
            weights=args.weights,
            workers=args.workers,
            threads=args.threads,
            batch=args.batch,
            ray=args.ray,
            ray_address=args.ray_address,
            clip=args.clip,
            keep=args.keep,
            shapes=args.shapes,
            device=args.device,
            dtype=args.dtype,
            vae_dtype=args.vae_dtype,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        results = Path(args.out) / "results.jsonl"
        print(
            f"interrupted: every finished edit is in {results}; run the same command again", file=sys.stderr
        )
        raise SystemExit(130) from None
    kept = sum(1 for r in records if r["kept"])
    failed = sum(1 for r in records if "error" in r)
    filtered = f", {kept} kept by --keep" if args.keep else ""
    errors = f", {failed} failed (their records say why)" if failed else ""
    print(f"{len(records)} edits in {Path(args.out) / 'results.jsonl'}{filtered}{errors}")


def main(argv=None):
    """Run a command; a user's mistake, a file that cannot be read or written, or Ctrl-C ends in one line."""
    try:
        args = parser().parse_args(argv)
        args.run(args)
    except KeyboardInterrupt:
        print("interrupted, nothing written", file=sys.stderr)
        raise SystemExit(130) from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
