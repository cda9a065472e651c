"""The shapes world: a synthetic world whose ground truth we know, to train a tiny model and to measure edits.

64x64 RGB images of 1 or 2 flat, non-overlapping objects on a plain background, described by prompts such as
"a red circle and a blue square on a white background". Any attribute may be left out of a prompt ("a circle",
"a red shape", no background phrase); the renderer then picks it at random. `analyse` recovers background,
colours, masks, boxes and shapes from any 64x64 image, so tests can check what a generated or edited image
shows.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from .checks import short

SIZE = 64
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}  # area / bounding-box area


@dataclass
class Obj:
    colour: str = None  # a key of COLOURS, or None: picked at random when rendered
    shape: str = None  # one of SHAPES, or None


@dataclass
class Spec:
    """What a prompt says; None means the prompt leaves it open."""

    objects: list = field(default_factory=lambda: [Obj()])
    background: str = None

    def prompt(self):
        words = [" ".join(w for w in (o.colour, o.shape or "shape") if w) for o in self.objects]
        words = [("an " if w[0] in "aeiou" else "a ") + w for w in words]
        text = " and ".join(words)
        return text + (f" on a {self.background} background" if self.background else "")


def parse(prompt):
    """Prompt of the grammar -> Spec; an error names the word it does not know."""
    words = prompt.lower().replace(",", " ").split()
    spec, obj = Spec(objects=[]), None
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("a", "an", "and"):
            pass
        elif w == "on":
            phrase = words[i + 1 : i + 4]
            if (
                len(phrase) < 3
                or phrase[0] not in ("a", "an")
                or phrase[1] not in BACKGROUNDS
                or phrase[2] != "background"
            ):
                raise ValueError(f"{short(prompt)}: expected 'on a <{'|'.join(BACKGROUNDS)}> background'")
            spec.background = phrase[1]
            i += 3
        elif w in COLOURS:
            obj = Obj(colour=w)
        elif w in SHAPES or w == "shape":
            obj = obj or Obj()
            obj.shape = None if w == "shape" else w
            spec.objects.append(obj)
            obj = None
        else:
            raise ValueError(
                f"{short(prompt)}: unknown word {w!r}; the shapes world knows colours {list(COLOURS)}, "
                f"shapes {list(SHAPES)} (or 'shape'), backgrounds {list(BACKGROUNDS)}"
            )
        i += 1
    if not 1 <= len(spec.objects) <= 2 or obj is not None:
        raise ValueError(f"{short(prompt)}: describe 1 or 2 objects, each ending in a shape word")
    return spec


def sample_spec(rng, p_omit=0.2):
    """A random prompt spec: 1 or 2 objects; each attribute left out with probability p_omit."""
    n = rng.integers(1, 3)

    def pick(options):
        return None if rng.random() < p_omit else options[rng.integers(len(options))]

    return Spec([Obj(pick(list(COLOURS)), pick(SHAPES)) for _ in range(n)], pick(list(BACKGROUNDS)))


def fill_in(spec, rng):
    """Choose every attribute the spec leaves open; objects get distinct colours."""
    bg = spec.background or list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    objs, used = [], {o.colour for o in spec.objects if o.colour}
    for o in spec.objects:
        colour = o.colour
        if colour is None:
            free = [c for c in COLOURS if c not in used]
            colour = free[rng.integers(len(free))]
            used.add(colour)
        objs.append(Obj(colour, o.shape or SHAPES[rng.integers(len(SHAPES))]))
    return Spec(objs, bg)


def shape_mask(shape, cx, cy, s):
    """Boolean (SIZE, SIZE) mask of a shape of side / diameter s centred at (cx, cy)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    h = s / 2
    if shape == "square":
        return (abs(x - cx) <= h) & (abs(y - cy) <= h)
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= h * h
    top, bottom = cy - h, cy + h  # isosceles triangle, apex up
    half_width = (y - top) / s * h
    return (y >= top) & (y <= bottom) & (abs(x - cx) <= half_width)


def render(spec, rng):
    """Spec (open attributes allowed) -> (image uint8 (64, 64, 3), the filled-in Spec, list of masks)."""
    full = fill_in(spec, rng)
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = BACKGROUNDS[full.background]
    while True:  # place every object; start over when one does not fit beside the others
        places = []
        for _ in full.objects:
            s = rng.integers(14, 27)
            cx, cy = rng.uniform(s / 2 + 2, SIZE - s / 2 - 2, size=2)
            box = (cx - s / 2 - 2, cy - s / 2 - 2, cx + s / 2 + 2, cy + s / 2 + 2)
            if not all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for *_, b in places):
                break
            places.append((cx, cy, s, box))
        if len(places) == len(full.objects):
            break
    masks = [shape_mask(o.shape, cx, cy, s) for o, (cx, cy, s, _) in zip(full.objects, places)]
    for o, m in zip(full.objects, masks):
        img[m] = COLOURS[o.colour]
    return img, full, masks


@dataclass
class Found:
    colour: str
    shape: str
    mask: np.ndarray
    box: tuple  # (x0, y0, x1, y1), inclusive
    fill: float  # mask area / box area


def nearest(rgb, table):
    names = list(table)
    d = ((np.asarray([table[n] for n in names], float) - np.asarray(rgb, float)) ** 2).sum(-1)
    return names[int(d.argmin())]


def components(mask):
    """4-connected components of a boolean mask -> boolean masks (a plain flood fill: images are small)."""
    seen, out = np.zeros_like(mask), []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, stack = np.zeros_like(mask), [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp[y, x] = True
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        out.append(comp)
    return out


def analyse(img, min_area=30):
    """Any (64, 64, 3) image -> (background name, [Found, ...] sorted left to right)."""
    img = np.asarray(img, dtype=float)[..., :3]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = nearest(np.median(border, axis=0), BACKGROUNDS)
    dist_bg = np.sqrt(((img - BACKGROUNDS[bg]) ** 2).sum(-1))
    found = []
    for comp in components(dist_bg > 60):
        if comp.sum() < min_area:
            continue
        ys, xs = np.nonzero(comp)
        box = (xs.min(), ys.min(), xs.max(), ys.max())
        fill = comp.sum() / ((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
        shape = min(FILL, key=lambda s: abs(FILL[s] - fill))
        found.append(Found(nearest(np.median(img[comp], axis=0), COLOURS), shape, comp, box, float(fill)))
    return bg, sorted(found, key=lambda f: f.box[0])


def matches(spec, bg, found):
    """Per attribute, does an analysed image show what the spec asks? -> dict of bools."""
    want = spec.objects
    out = {"count": len(found) == len(want), "background": spec.background in (None, bg)}
    # pair each wanted object with a distinct found one, trying both orders for two objects
    orders = [found] if len(found) < 2 else [found, found[::-1]]
    best = None
    for cand in orders:
        col = all(w.colour in (None, f.colour) for w, f in zip(want, cand)) and len(cand) >= len(want)
        shp = all(w.shape in (None, f.shape) for w, f in zip(want, cand)) and len(cand) >= len(want)
        if best is None or col + shp > best[0] + best[1]:
            best = (col, shp)
    out["colour"], out["shape"] = best
    out["all"] = all(out.values())
    return out


def scenes(n, seed, p_omit=0.0):
    """n rendered scenes -> (images uint8 (n, 64, 64, 3), full specs as JSON strings)."""
    rng = np.random.default_rng(seed)
    imgs, specs = [], []
    for _ in range(n):
        img, full, _ = render(sample_spec(rng, p_omit), rng)
        imgs.append(img)
        specs.append(json.dumps([full.background] + [[o.colour, o.shape] for o in full.objects]))
    return np.stack(imgs), specs


def training_prompt(spec_json, rng, p_omit, p_empty):
    """A training prompt for a scene: each attribute dropped with p_omit; empty with p_empty (for CFG)."""
    if rng.random() < p_empty:
        return ""
    bg, *objs = json.loads(spec_json)

    def drop(v):
        return None if rng.random() < p_omit else v

    spec = Spec([Obj(drop(c), drop(s)) for c, s in objs], drop(bg))
    if rng.random() < 0.5 and len(spec.objects) == 2:  # both orders describe the same scene
        spec.objects.reverse()
    return spec.prompt()
