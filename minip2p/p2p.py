"""Prompt-to-Prompt controllers (Hertz et al. 2022): Replace, Refine, Reweight, and the edit two prompts ask
for.

A batch of prompts is generated together from one noise; prompt 0 is the source. The UNet runs the batch as
[unconditional prompts..., conditional prompts...]; only the conditional half is read or edited. At every
cross-attention call an edit gives each target prompt the source's maps, carried over to the target's tokens
(`replace_cross`), for the steps in `cross_replace_steps`; at self-attention calls up to a size cap it gives
them the source's self-attention maps, for the steps in `self_replace_steps`. Controllers see only
(map, Place, step): nothing of the UNet's classes. `LocalBlend` and `AttentionStore` live in `blend.py` and
`store.py`; an edit carries them along.
"""

import math

import torch

from . import defaults
from .align import MAX_TOKENS, equalizer, refinement_mapper, replacement_mapper, word_token_indices
from .attention import Controller, Place, conditional_half
from .blend import LocalBlend
from .checks import check_blend_words, check_prompt_tokens, check_range, check_words, short
from .store import AttentionStore


def check_window(fractions, what: str) -> tuple:
    """A fraction f means (0, f); a pair is (start, end) -> (start, end), checked: 0 <= start <= end <= 1."""
    pair = (0.0, fractions) if isinstance(fractions, (int, float)) else fractions
    try:
        start, end = (math.nan if isinstance(f, bool) else float(f) for f in pair)  # True is not 1.0
    except (TypeError, ValueError):
        start = end = math.nan
    if not 0 <= start <= end <= 1:
        raise ValueError(
            f"{what} must be a fraction in [0, 1] or a pair 0 <= start <= end <= 1, not {short(fractions)}"
        )
    return start, end


def step_window(window: tuple, rows: int) -> tuple:
    """Fractions (start, end) of a table of `rows` steps -> (first step, end step), end excluded. The
    official code's tables: steps rows for self-attention, steps + 1 for cross-attention (so that at 50 steps
    a cross window of 0.51 ends after step 26, not 25)."""
    return int(window[0] * rows), int(window[1] * rows)


def in_window(step: int, window: tuple) -> bool:
    return window[0] <= step < window[1]


def self_max_tokens(fraction: float, latent_hw: tuple) -> int:
    """The largest self-attention map (in queries) an edit replaces: `fraction` of the latent per side, and
    at least the official code's 16x16 (so all of a 16x16 latent, 16x16 of SD's 64x64, 32x32 of SDXL's
    128x128 at the default 1/4)."""
    h, w = (max(1, round(fraction * s)) for s in latent_hw)
    return max(h * w, defaults.SELF_MIN_TOKENS)


def check_places(places, what: str):
    """None (every place), or `Place.where` names and MM-DiT block numbers -> a frozenset, checked."""
    if places is None:
        return None
    items = [places] if isinstance(places, (str, int)) else places
    try:
        items = frozenset(items)
    except TypeError:
        items = frozenset([None])
    names = {"down", "mid", "up", "early", "middle", "late"}
    if not items or not all(p in names or (type(p) is int and p >= 0) for p in items):
        raise ValueError(
            f"{what} must be None (every place) or a list of {sorted(names)} and block numbers >= 0, "
            f"not {places!r}"
        )
    return items


def chosen(place: Place, places) -> bool:
    """Whether a place is among the chosen ones (None: all): by its `where`, or its MM-DiT block."""
    return places is None or place.where in places or place.layer in places


def cross_windows(prompts, tokenizer, cross_replace_steps) -> list:
    """cross_replace_steps (a fraction, a (start, end) pair, or a dict {word: fraction or pair, "default_":
    ...} giving words of the target prompts their own window) -> [(target, token positions or None for all,
    window)], checked: every word is in every target prompt."""
    spec = (
        dict(cross_replace_steps)
        if isinstance(cross_replace_steps, dict)
        else {"default_": cross_replace_steps}
    )
    out = [(None, None, check_window(spec.pop("default_", (0.0, 1.0)), "cross_replace_steps"))]
    for word, window in spec.items():
        window = check_window(window, f"cross_replace_steps[{word!r}]")
        for prompt in prompts[1:]:
            check_words(prompt, word)
        out += [
            (p, word_token_indices(prompt, word, tokenizer), window) for p, prompt in enumerate(prompts[1:])
        ]
    return out


def cross_alphas(windows: list, targets: int, steps: int) -> torch.Tensor:
    """(steps + 1, targets, 77): 1 where a target's token takes the source's map at a step (cross_windows);
    one row more than steps, as the official code's table (ptp_utils.get_time_words_attention_alpha)."""
    alphas = torch.zeros(steps + 1, targets, MAX_TOKENS)
    for p, idx, window in windows:
        a, b = step_window(window, steps + 1)
        if p is None:
            alphas[a:b] = 1
        else:
            alphas[:, p, idx] = 0
            alphas[a:b, p, idx] = 1
    return alphas


class Edit(Controller):
    """What Replace, Refine and Reweight share: step windows, the self-attention replacement, LocalBlend, an
    optional AttentionStore. Subclasses say how a target takes the source's cross-attention (`replace_cross`).
    """

    def __init__(
        self,
        prompts,
        tokenizer,
        cross_replace_steps=defaults.CROSS_REPLACE_STEPS,
        self_replace_steps=None,
        local_blend: LocalBlend | None = None,
        self_max_fraction: float = defaults.SELF_MAX_FRACTION,
        store: AttentionStore | None = None,
        cross_places=None,
        self_places=None,
    ):
        if len(prompts) < 2:
            raise ValueError("an edit needs the source prompt and at least one target prompt")
        for prompt in prompts:
            check_prompt_tokens(tokenizer, prompt, MAX_TOKENS)
        # the largest self-attention map replaced, as a fraction of the latent (0.25: 16x16 of 64x64; 1: all)
        self_max_fraction = check_range(self_max_fraction, "self_max_fraction", 0, 1, low_open=True)
        self.prompts, self.tokenizer = list(prompts), tokenizer
        # None: the model's (SELF_REPLACE_STEPS; on an MM-DiT's image->image maps SD3_SELF_REPLACE_STEPS)
        window = self_replace_steps
        self.self_window = None if window is None else check_window(window, "self_replace_steps")
        self.cross_windows = cross_windows(self.prompts, tokenizer, cross_replace_steps)
        self.local_blend, self.store, self.self_max_fraction = local_blend, store, self_max_fraction
        # the places whose maps are replaced: None, all; else `Place.where` names or MM-DiT block numbers
        self.cross_places = check_places(cross_places, "cross_places")
        self.self_places = check_places(self_places, "self_places")
        if local_blend is not None:
            check_blend_words(local_blend.words, self.prompts)
            check_blend_words(local_blend.subtract or [], self.prompts, "LocalBlend subtract")
            local_blend.bind(self.prompts, tokenizer)
        self.prepare()
        self.step, self.blend_maps = 0, []

    def prepare(self):
        """Token maps of the edit, computed once (on the CPU) when the edit is made."""

    def start(self, steps, latent_hw, device=None):
        self.alphas = cross_alphas(self.cross_windows, len(self.prompts) - 1, steps)
        self.self_steps, self.joint_self_steps = (
            step_window(self.self_window or (0.0, default), steps)
            for default in (defaults.SELF_REPLACE_STEPS, defaults.SD3_SELF_REPLACE_STEPS)
        )
        self.self_max_tokens = self_max_tokens(self.self_max_fraction, latent_hw)
        self.latent_hw = tuple(latent_hw)
        self.to(device)
        if self.local_blend is not None:
            self.local_blend.start(steps, latent_hw, device)
        if self.store is not None:
            self.store.start(steps, latent_hw, device)

    def to(self, device):
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))

    def before_step(self, i):
        self.step = i

    def replaces_cross(self, place: Place) -> bool:
        return place.is_cross and chosen(place, self.cross_places)

    def replaces_self(self, place: Place) -> bool:
        """Image x image maps in the window; the UNet's up to the size cap (the MM-DiT's are of one size)."""
        return (
            not place.is_cross
            and place.part != "text->image"
            and (place.part == "image->image" or place.tokens(self.latent_hw) <= self.self_max_tokens)
            and chosen(place, self.self_places)
            and in_window(self.step, self.joint_self_steps if place.part else self.self_steps)
        )

    def reads_blend(self, place: Place) -> bool:
        return self.local_blend is not None and self.local_blend.reads(place)

    def wants(self, place):
        return (
            self.replaces_cross(place)
            or self.replaces_self(place)
            or self.reads_blend(place)
            or (self.store is not None and self.store.wants(place))
        )

    def __call__(self, attn, place):
        self.edit_maps(conditional_half(attn, place.heads), place)  # a view: edits write into attn
        if self.store is not None:
            self.store(attn, place)
        return attn

    def edit_maps(self, cond, place):
        """cond (P, heads, n, m): the source's maps, then the targets', edited in place."""
        base, target = cond[0], cond[1:]
        if self.replaces_cross(place):
            alpha = self.alphas[self.step][:, None, None, :]  # (P-1, 1, 1, 77)
            cond[1:] = self.replace_cross(base, target) * alpha + target * (1 - alpha)
        elif self.replaces_self(place):
            cond[1:] = base.expand_as(target)
        # the maps actually used are the ones stored and blended on (as in the official code)
        if self.reads_blend(place):  # (P, image, 77) maps; an MM-DiT's text->image maps turned so
            m = cond.mean(1)
            self.blend_maps.append(m.transpose(1, 2) if place.part == "text->image" else m)

    def after_step(self, i, latents):
        if self.store is not None:
            self.store.after_step(i, latents)
        if self.local_blend is None:
            return latents
        blend = self.local_blend
        if i == 0 and not self.blend_maps and blend.user_mask is None:  # else it would silently not blend
            h, w = (s // blend.downsample for s in blend.latent_hw)
            raise ValueError(
                f"LocalBlend reads the {h}x{w} cross-attention maps (res_fraction {blend.res_fraction:g} of "
                "the latent), and this model has none of that size: give another res_fraction or a larger "
                "image"
            )
        latents, self.blend_maps = blend(i, self.blend_maps, latents), []
        return latents


class Replace(Edit):
    """Word swap: "a cat" -> "a dog". Target token j attends like the source tokens mapped onto it."""

    def prepare(self):
        source = self.prompts[0]
        for target in self.prompts[1:]:
            if len(source.split()) != len(target.split()):
                raise ValueError(
                    f"a word swap (Replace) needs prompts with the same number of words: {short(source)} has "
                    f"{len(source.split())}, {short(target)} has {len(target.split())}; use Refine to add or "
                    "remove words"
                )
        self.mapper = torch.stack(
            [replacement_mapper(self.prompts[0], p, self.tokenizer) for p in self.prompts[1:]]
        )

    def replace_cross(self, base, target):
        return torch.einsum("hqs,pst->phqt", base, self.mapper.to(base.dtype))


class Refine(Edit):
    """Adding words: "a cat" -> "a fluffy cat". Tokens shared with the source take its maps; new tokens keep
    theirs."""

    def prepare(self):
        pairs = [refinement_mapper(self.prompts[0], p, self.tokenizer) for p in self.prompts[1:]]
        self.mapper = torch.stack([m for m, _ in pairs])  # (P-1, 77) source token per target token
        self.refine_alphas = torch.stack([a for _, a in pairs])  # (P-1, 77) 0 for new tokens

    def replace_cross(self, base, target):
        taken = base[:, :, self.mapper].permute(2, 0, 1, 3)  # (P-1, heads, n, 77)
        a = self.refine_alphas[:, None, None, :].to(base.dtype)
        return taken * a + target * (1 - a)


REWEIGHT_LIMIT = 1e4  # |scale| at most: the paper's scales are within +-10; 1e308 would overflow float32


class Reweight(Edit):
    """Scale a word's attention. `scales`: {word: scale} (words of the target prompts), or a (77,) or (P-1,
    77) tensor of per-token scales. With `base=` another edit (Replace or Refine), its result is re-weighted:
    edits chain, and the Reweight keeps that edit's LocalBlend unless given its own."""

    def __init__(self, prompts, tokenizer, scales, base: Edit | None = None, **settings):
        if base is not None and settings.get("local_blend") is None:
            settings["local_blend"] = base.local_blend  # a chained edit keeps its LocalBlend
        super().__init__(prompts, tokenizer, **settings)  # the prompts and settings checked first
        if isinstance(scales, dict):
            for prompt in prompts[1:]:
                check_words(prompt, list(scales))
            for word, scale in scales.items():  # float32 holds them, and the maps they multiply stay finite
                check_range(scale, f"the Reweight scale of {short(word)}", -REWEIGHT_LIMIT, REWEIGHT_LIMIT)
            scales = torch.stack(
                [equalizer(p, list(scales), list(scales.values()), tokenizer) for p in prompts[1:]]
            )
        self.scales, self.base = torch.as_tensor(scales, dtype=torch.float32), base
        if self.scales.shape[-1] != MAX_TOKENS:
            raise ValueError(
                f"scales must have {MAX_TOKENS} entries (one per token), not {tuple(self.scales.shape)}"
            )
        if not torch.isfinite(self.scales).all():
            raise ValueError(f"Reweight scales must be finite numbers: {self.scales.unique().tolist()}")

    def to(self, device):
        super().to(device)
        if self.base is not None:
            self.base.to(device)

    def replace_cross(self, base, target):
        edited = self.base.replace_cross(base, target) if self.base is not None else base.expand_as(target)
        return edited * self.scales.reshape(-1, 1, 1, MAX_TOKENS).to(base.dtype)


EDITS = {"replace": Replace, "refine": Refine, "reweight": Reweight}


def default_edit_kind(source: str, target: str, reweight: dict | None = None) -> str:
    """replace for equal word counts, refine otherwise, reweight for identical prompts with a reweight."""
    if reweight and source == target:
        return "reweight"
    return "replace" if len(source.split()) == len(target.split()) else "refine"


def make_edit(
    source: str,
    target: str,
    tokenizer,
    *,
    kind: str | None = None,
    cross_replace_steps=defaults.CROSS_REPLACE_STEPS,
    self_replace_steps=None,
    self_max_fraction: float = defaults.SELF_MAX_FRACTION,
    blend=None,
    reweight: dict | None = None,
    store: AttentionStore | None = None,
    cross_places=None,
    self_places=None,
) -> Edit:
    """The edit two prompts ask for (see `Pipeline.edit`). Every word and setting is checked here, before any
    sampling."""
    kind = default_edit_kind(source, target, reweight) if kind is None else kind
    if not isinstance(kind, str) or kind not in EDITS:  # "" or False is a mistake, not the default
        raise ValueError(
            f"kind must be one of {list(EDITS)} (None: chosen from the prompts), not {short(kind)}"
        )
    if kind == "reweight" and not reweight:
        raise ValueError("kind='reweight' needs reweight={word: scale}")
    prompts = [source, target]
    local_blend = LocalBlend(blend) if blend else None
    settings = dict(
        cross_replace_steps=cross_replace_steps,
        self_replace_steps=self_replace_steps,
        self_max_fraction=self_max_fraction,
        local_blend=local_blend,
        store=store,
        cross_places=cross_places,
        self_places=self_places,
    )
    if not reweight:
        return EDITS[kind](prompts, tokenizer, **settings)
    base = EDITS[kind](prompts, tokenizer) if kind != "reweight" else None  # only its token map is used
    return Reweight(prompts, tokenizer, reweight, base=base, **settings)
