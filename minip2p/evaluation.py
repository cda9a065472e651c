"""Measuring what generations, edits and inversions do: PSNR anywhere, and, in the shapes world, where the
truth is known, whether an edit took, what it kept, and whether an image shows its prompt.

The benchmarks print these over many seeds (docs/RESULTS.md); the tests assert them on smaller samples.
"""

import math
from itertools import islice

import numpy as np
import torch

from . import defaults, shapes
from .images import to_pil, to_tensor, to_uint8
from .p2p import LocalBlend, Replace

# word swaps of one object's shape or colour: (source, target, index of the edited object)
SWAPS = [
    (
        "a red circle and a blue square on a white background",
        "a red triangle and a blue square on a white background",
        0,
    ),
    (
        "a yellow square and a green circle on a black background",
        "a yellow square and a purple circle on a black background",
        1,
    ),
    (
        "a blue triangle and an orange circle on a gray background",
        "a blue square and an orange circle on a gray background",
        0,
    ),
    (
        "a green square and a red triangle on a white background",
        "a green square and a blue triangle on a white background",
        1,
    ),
]

# Refine: a colour word added to a one-object prompt, on each background
REFINES = [
    ("a circle on a black background", "a yellow circle on a black background", 0),
    ("a square on a white background", "a red square on a white background", 0),
    ("a triangle on a gray background", "a green triangle on a gray background", 0),
    ("a circle on a white background", "a blue circle on a white background", 0),
]

REWEIGHT_PROMPT = "a red circle and a blue square on a white background"
REWEIGHT_SHOWS = {
    "blue square": ("blue", "square"),
    "red circle": ("red", "circle"),
    "white background": "white",
}


def psnr(a, b, mask=None, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two images (PIL, arrays or CPU tensors of one range, `peak` wide),
    over the pixels where `mask` is True (all by default)."""
    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2
    mse = d[mask].mean() if mask is not None else d.mean()
    return 10 * math.log10(peak**2 / max(mse, 1e-10))


def at_least(k: int, n: int, rate: float, confidence: float = 0.95) -> bool:
    """Is k successes in n trials consistent with a success rate of at least `rate`? False only when a rate
    that high would give k or fewer with probability under 1 - confidence (one-sided exact binomial test).
    Tests use it to hold a sample to a requirement stated as a rate, instead of to a count that one run gave.
    """
    p_low = sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(k + 1))
    return p_low >= 1 - confidence


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def find(found, obj):
    """The analysed object with an Obj's colour and shape (either may be left open: None), else None."""
    return next((f for f in found if obj.colour in (None, f.colour) and obj.shape in (None, f.shape)), None)


def shows(image, spec) -> dict:
    """Per attribute (count, background, colour, shape, all): does the image show what the spec asks?"""
    return shapes.matches(spec, *shapes.analyse(np.asarray(image)))


def edit_scores(source_image, edited_image, source: str, target: str, k: int) -> dict | None:
    """Scores of an edit of object k (source prompt -> target prompt) -> None if the source image does not
    show its prompt (an edit of a wrong picture measures nothing), else: edited (the object shows the target's
    words), moved (px between its centres, NaN if not found), kept_iou (the other object's mask IoU with the
    source's; None for one-object prompts), background (kept) and outside (mean abs pixel change, 0-255,
    outside the edited object of the source)."""
    s_spec, t_spec = shapes.parse(source), shapes.parse(target)
    s_bg, s_found = shapes.analyse(np.asarray(source_image))
    was = find(s_found, s_spec.objects[k])
    if not shapes.matches(s_spec, s_bg, s_found)["all"] or was is None:
        return None
    e_bg, e_found = shapes.analyse(np.asarray(edited_image))
    now = find(e_found, t_spec.objects[k])
    kept_iou = None
    if len(t_spec.objects) == 2:
        before, after = find(s_found, t_spec.objects[1 - k]), find(e_found, t_spec.objects[1 - k])
        kept_iou = iou(before.mask, after.mask) if before is not None and after is not None else 0.0
    change = np.abs(np.asarray(edited_image, float) - np.asarray(source_image, float))
    return {
        "edited": float(now is not None),
        "moved": float(np.linalg.norm(centre(now.mask) - centre(was.mask))) if now is not None else math.nan,
        "kept_iou": kept_iou,
        "background": float(e_bg == s_bg),
        "outside": float(change[~was.mask].mean()),
    }


def edit_variants(
    pipe, source: str, target: str, k: int, seed: int, variants: dict, **generate
) -> dict | None:
    """Edits of object k from `seed`, one per variant ({name: options of `pipe.edit`, or None for plain
    generation of the target from the same noise}; the first must be an edit: its source image is the one all
    are scored against) -> {name: edit_scores}, or None if the source image does not show its prompt."""
    images, src = {}, None
    for name, options in variants.items():
        if options is None:
            images[name] = pipe.generate([target], seed=seed, **generate)[0]
            continue
        first, images[name] = pipe.edit(source, target, seed=seed, **options, **generate)
        if src is None:
            src = first
            if edit_scores(src, src, source, source, k) is None:
                return None
    return {name: edit_scores(src, image, source, target, k) for name, image in images.items()}


def swap_edit(pipe, seed: int, **generate) -> dict | None:
    """Word swap SWAPS[seed % 4] from `seed`, scored three ways (see edit_variants): the edit, plain
    generation of the target from the same noise, and the edit confined to the object's words."""
    source, target, k = SWAPS[seed % len(SWAPS)]
    words = sorted({shapes.parse(source).objects[k].shape, shapes.parse(target).objects[k].shape})
    variants = {"Replace": {}, "plain target": None, "Replace + LocalBlend": {"blend": words}}
    return edit_variants(pipe, source, target, k, seed, variants, **generate)


def shown_swaps(pipe, n: int, tries: int, **generate) -> list:
    """swap_edit's scores on the first n of `tries` seeds whose source image shows its prompt (fewer if the
    model draws fewer)."""
    return list(islice(filter(None, (swap_edit(pipe, seed, **generate) for seed in range(tries))), n))


def reweight_shown(pipe, word: str, scale: float, seeds, **generate) -> dict:
    """Reweight `word` of REWEIGHT_PROMPT by `scale` -> {what: share of seeds whose image still shows it}."""
    rows = []
    for seed in seeds:
        image = pipe.edit(REWEIGHT_PROMPT, REWEIGHT_PROMPT, reweight={word: scale}, seed=seed, **generate)[1]
        bg, found = shapes.analyse(np.asarray(image))
        objects = {(f.colour, f.shape) for f in found}
        rows.append(
            [want == bg if isinstance(want, str) else want in objects for want in REWEIGHT_SHOWS.values()]
        )
    return dict(zip(REWEIGHT_SHOWS, np.mean(rows, axis=0).tolist()))


def adherence(pipe, n=200, seed=0, batch=25, p_omit=0.2, **generate) -> tuple:
    """Prompts sampled from the grammar (attributes left open with probability p_omit), each from its own
    seeded noise -> (share right per attribute, [(prompt, image, per-attribute result)])."""
    rng = np.random.default_rng(seed)
    specs = [shapes.sample_spec(rng, p_omit) for _ in range(n)]
    results = []
    for i in range(0, n, batch):
        chunk = specs[i : i + batch]
        size = pipe.config.image_size
        noise = torch.cat(
            [pipe.initial_latent(seed * 100_000 + i + j, size, size) for j in range(len(chunk))]
        )
        images = pipe.generate([s.prompt() for s in chunk], latents=noise, **generate)
        results += [(s.prompt(), im, shows(im, s)) for s, im in zip(chunk, images)]
    rates = {key: float(np.mean([r[2][key] for r in results])) for key in results[0][2]}
    return rates, results


def rendered_scenes(n: int, seed: int = 7) -> list:
    """n rendered scenes, every attribute named -> [(pixels uint8 (64, 64, 3), full prompt)]."""
    rng = np.random.default_rng(seed)
    scenes = (shapes.render(shapes.sample_spec(rng, 0.0), rng) for _ in range(n))
    return [(img, full.prompt()) for img, full, _ in scenes]


def vae_round_trip(pipe, images) -> list:
    """Images through the VAE and back (encode's mean, decode), as PIL: the ceiling of any inversion."""
    with torch.no_grad():
        return to_pil(pipe.decode(pipe.encode(to_tensor(images))))


def vae_psnr(pipe, n=256, seed=999, batch=64) -> float:
    """PSNR of the VAE's round trip over n held-out renders, rounded to 8 bits as saved images are."""
    rng = np.random.default_rng(seed)
    imgs = np.stack([shapes.render(shapes.sample_spec(rng, 0.0), rng)[0] for _ in range(n)])
    with torch.no_grad():
        rec = [to_uint8(pipe.decode(pipe.encode(to_tensor(imgs[i : i + batch])))) for i in range(0, n, batch)]
    return psnr(np.concatenate(rec), imgs)


def colour_edit_scene(k: int) -> tuple:
    """Rendered scene k with a red circle and a square or triangle -> (pixels, source prompt, target prompt
    with the circle blue, the circle's mask). The other object is not a circle: "circle" names one object."""
    rng = np.random.default_rng(1000 + k)
    other = shapes.Obj(None, ("triangle", "square")[k % 2])
    img, full, masks = shapes.render(shapes.Spec([shapes.Obj("red", "circle"), other], None), rng)
    source = full.prompt()
    return img, source, source.replace("a red circle", "a blue circle", 1), masks[0]


def turned(edited, circle: np.ndarray, colour: str = "blue") -> bool:
    """Does the edited image show a circle of that colour over most of the source's circle?"""
    _, found = shapes.analyse(np.asarray(edited))
    return any(
        f.shape == "circle" and f.colour == colour and (f.mask & circle).sum() > 0.5 * circle.sum()
        for f in found
    )


def away_from(mask: np.ndarray, px: int = 2) -> np.ndarray:
    """Pixels more than `px` from `mask`: an edited object's outline is redrawn, so its rim is neither the
    other object nor the background."""
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(mask).float()[None, None], 2 * px + 1, 1, px)
    return grown[0, 0].numpy() == 0


def inverted_edit(tokenizer, source: str, target: str, **settings) -> Replace:
    """The circle's colour edit for an inverted image: Replace with LocalBlend on "circle", keeping the
    structure (defaults.KEEP_STRUCTURE) unless `settings` say otherwise."""
    settings = {**defaults.KEEP_STRUCTURE, **settings}
    return Replace([source, target], tokenizer, local_blend=LocalBlend(["circle", "circle"]), **settings)
