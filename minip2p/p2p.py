"""Prompt-to-Prompt controllers (Hertz et al. 2022): AttentionStore, Replace, Refine, Reweight, LocalBlend.

A batch of prompts is generated together from one noise; prompt 0 is the source. The UNet runs the batch as
[unconditional prompts..., conditional prompts...]; only the conditional half is read or edited. At every
cross-attention call an edit gives each target prompt the source's maps, carried over to the target's tokens
(`replace_cross`), for the steps in `cross_replace_steps`; at self-attention calls up to a resolution cap it
gives them the source's self-attention maps, for the steps in `self_replace_steps`. Controllers see only
(map, Place, step): nothing of the UNet's classes.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .align import MAX_TOKENS, equalizer, refinement_mapper, replacement_mapper, word_token_indices
from .attention import Controller


def step_window(fractions, steps, what):
    """A float f means (0, f); a pair is (start, end): fractions of the steps -> (first step, end step)."""
    start, end = (0.0, fractions) if isinstance(fractions, (int, float)) else fractions
    if not 0 <= start <= end <= 1:
        raise ValueError(f"{what} must be a fraction in [0, 1] or a pair 0 <= start <= end <= 1, not {fractions!r}")
    return int(start * steps), int(end * steps)


def map_factor(fraction, latent_h, min_res=8):
    """Downsampling factor of the maps at `fraction` of the latent size (the paper's 16x16 of a 64x64 latent is
    1/4), made finer where that would leave maps under min_res cells (a 16x16 latent would give 4x4)."""
    factor = max(1, round(1 / fraction))
    while factor > 1 and latent_h // factor < min(min_res, latent_h):
        factor //= 2
    return factor


def cross_alphas(prompts, tokenizer, steps, cross_replace_steps):
    """(steps, prompts-1, 77): 1 where target prompt p's token takes the source's map at a step.

    cross_replace_steps: a float f = (0, f), a (start, end) pair, or a dict {word: float or pair, "default_": ...}
    giving words of the target prompts their own window."""
    spec = dict(cross_replace_steps) if isinstance(cross_replace_steps, dict) else {"default_": cross_replace_steps}
    alphas = torch.zeros(steps, len(prompts) - 1, MAX_TOKENS)
    a, b = step_window(spec.pop("default_", (0.0, 1.0)), steps, "cross_replace_steps")
    alphas[a:b] = 1
    for word, window in spec.items():
        a, b = step_window(window, steps, f"cross_replace_steps[{word!r}]")
        for p, prompt in enumerate(prompts[1:]):
            idx = word_token_indices(prompt, word, tokenizer)
            alphas[:, p, idx] = 0
            alphas[a:b, p, idx] = 1
    return alphas


def split(attn, heads):
    """(2P * heads, n, m) -> (P, heads, n, m), a view of the conditional half."""
    return attn.view(2, -1, heads, *attn.shape[1:])[1]


class AttentionStore(Controller):
    """Keeps the conditional half's maps: the sum over steps per place (read as a mean), as head-averaged copies.

    self_max_tokens: self-attention maps are kept only up to this many queries (a 64x64 map is 4096^2 floats);
    factors: keep only places at these downsampling factors (None: all); per_step / per_head: keep every step's
    maps / every head, for research."""

    def __init__(self, self_max_tokens=32 ** 2, factors=None, per_step=False, per_head=False):
        self.self_max_tokens, self.factors, self.per_step, self.per_head = self_max_tokens, factors, per_step, per_head
        self.start(0, (0, 0))

    def start(self, steps, latent_hw, device=None):
        self.latent_hw, self.sums, self.places, self.steps_done, self.history, self.current = latent_hw, {}, {}, 0, [], {}

    def wants(self, place):
        if self.factors is not None and place.factor not in self.factors:
            return False
        h, w = self.latent_hw
        return place.is_cross or (h // place.factor) * (w // place.factor) <= self.self_max_tokens

    def __call__(self, attn, place):
        if self.wants(place):
            cond = split(attn, place.heads)
            self.current[place.key] = cond.clone() if self.per_head else cond.mean(1)
            self.places[place.key] = place
        return attn

    def step_end(self, i, latents):
        for key, m in self.current.items():
            self.sums[key] = self.sums[key] + m if key in self.sums else m
        if self.per_step:
            self.history.append(self.current)
        self.current, self.steps_done = {}, self.steps_done + 1
        return latents

    def mean(self, key):
        return self.sums[key] / max(self.steps_done, 1)

    def keys(self, res=None, places=("down", "mid", "up"), is_cross=True):
        """Stored place keys whose map height is res (latent cells), in the given UNet parts."""
        h = self.latent_hw[0]
        return [k for k, p in self.places.items() if p.is_cross == is_cross and p.where in places
                and (res is None or h // p.factor == res)]

    def aggregate(self, res, places=("down", "mid", "up"), is_cross=True):
        """Mean map over steps, heads and the chosen places at one resolution -> (prompts, res, res', keys)."""
        keys = self.keys(res, places, is_cross)
        if not keys:
            have = sorted({self.latent_hw[0] // p.factor for p in self.places.values() if p.is_cross == is_cross})
            raise ValueError(f"no stored {'cross' if is_cross else 'self'}-attention maps at resolution {res} in "
                             f"{places}; stored resolutions: {have}")
        f = self.places[keys[0]].factor
        h, w = self.latent_hw[0] // f, self.latent_hw[1] // f
        maps = torch.stack([self.mean(k) if not self.per_head else self.mean(k).mean(1) for k in keys]).mean(0)
        return maps.reshape(maps.shape[0], h, w, maps.shape[-1])

    def save_npz(self, path):
        """Every stored mean map, keyed by place key (plus per-step maps if kept)."""
        arrays = {k: self.mean(k).cpu().numpy() for k in self.sums}
        for i, step in enumerate(self.history):
            arrays.update({f"step{i}/{k}": v.cpu().numpy() for k, v in step.items()})
        np.savez_compressed(path, latent_hw=np.array(self.latent_hw), **arrays)


class LocalBlend:
    """Confine an edit to the region of some words: after each step from `start_blend`, latents outside the mask
    are taken from the source. The mask is where the words' cross-attention (mean over steps so far, heads and the
    down/up places at `res_fraction` of the latent size, 16x16 for a 64x64 latent) exceeds `threshold` of its
    maximum, for the source's words or the target's; `subtract` words cut their region out; `mask` (latent-sized,
    or any size, resized) replaces the attention mask altogether. Maps coarser than 8x8 are not used: on a 16x16
    latent the mask comes from the 8x8 maps (see `map_factor`)."""

    def __init__(self, words, threshold=0.3, start_blend=0.2, subtract=None, mask=None, res_fraction=0.25):
        self.words, self.subtract, self.threshold, self.start_blend = words, subtract, threshold, start_blend
        self.user_mask, self.res_fraction = mask, res_fraction
        if not 0 < res_fraction <= 1:
            raise ValueError(f"LocalBlend res_fraction is the map size as a fraction of the latent size, in (0, 1], "
                             f"not {res_fraction!r}")

    def bind(self, prompts, tokenizer, steps, latent_hw, device):
        def layers(words):
            if words is None:
                return None
            if len(words) != len(prompts):
                raise ValueError(f"LocalBlend needs one word (or list of words) per prompt: {len(prompts)} prompts, "
                                 f"{len(words)} entries")
            alpha = torch.zeros(len(prompts), MAX_TOKENS, device=device)
            for p, (prompt, ws) in enumerate(zip(prompts, words)):
                for w in [ws] if isinstance(ws, (str, int)) else ws:
                    alpha[p, word_token_indices(prompt, w, tokenizer)] = 1
            return alpha
        self.alpha, self.sub_alpha = layers(self.words), layers(self.subtract)
        self.start_step, self.latent_hw = int(self.start_blend * steps), latent_hw
        self.factor = map_factor(self.res_fraction, latent_hw[0])
        self.sum, self.step_maps = None, []

    def wants(self, place):
        return place.is_cross and place.factor == self.factor and place.where in ("down", "up")

    def observe(self, cond, place):
        """cond: (P, heads, n, 77) maps of the conditional half."""
        self.step_maps.append(cond.mean(1))

    def get_mask(self, maps, alpha, pool, threshold):
        m = (maps * alpha[:, None, None, :]).sum(-1)[:, None]  # (P, 1, h, w)
        if pool:
            m = F.max_pool2d(m, 3, stride=1, padding=1)
        m = F.interpolate(m, size=self.latent_hw)
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)
        return m > threshold

    def mask(self, dtype):
        if self.user_mask is not None:
            m = torch.as_tensor(self.user_mask, dtype=dtype)
            return F.interpolate(m.reshape(1, 1, *m.shape[-2:]), size=self.latent_hw)
        mask = self.get_mask(self.sum, self.alpha, True, self.threshold)
        mask = mask[:1] | mask  # the source's region and each target's
        if self.sub_alpha is not None:
            mask = mask & ~self.get_mask(self.sum, self.sub_alpha, False, self.threshold)
        return mask.to(dtype)

    def __call__(self, i, x):
        if self.step_maps:  # this step's maps, averaged over places, added to the running sum
            h, w = (s // self.factor for s in self.latent_hw)
            maps = torch.stack(self.step_maps).mean(0)
            maps = maps.reshape(maps.shape[0], h, w, maps.shape[-1])
            self.sum, self.step_maps = maps if self.sum is None else self.sum + maps, []
        if i < self.start_step or (self.sum is None and self.user_mask is None):
            return x
        return torch.lerp(x[:1].expand_as(x), x, self.mask(x.dtype).to(x.device))  # exact where the mask is 0 or 1


class Edit(Controller):
    """What Replace, Refine and Reweight share: step windows, the self-attention replacement, LocalBlend, an
    optional AttentionStore. Subclasses say how a target takes the source's cross-attention (`replace_cross`)."""

    def __init__(self, prompts, tokenizer, cross_replace_steps=0.8, self_replace_steps=0.4, local_blend=None,
                 self_max_fraction=0.25, store=None):
        if len(prompts) < 2:
            raise ValueError("an edit needs the source prompt and at least one target prompt")
        self.prompts, self.tokenizer = list(prompts), tokenizer
        self.cross_replace_steps, self.self_replace_steps = cross_replace_steps, self_replace_steps
        self.local_blend, self.store, self.self_max_fraction = local_blend, store, self_max_fraction
        # every word, window and token map is checked now, before any sampling
        step_window(self_replace_steps, 1, "self_replace_steps")
        if not 0 < self_max_fraction <= 1:
            raise ValueError(f"self_max_fraction is the largest self-attention map replaced, as a fraction of the "
                             f"latent size, in (0, 1] (0.25: 16x16 of a 64x64 latent; 1: every size), not "
                             f"{self_max_fraction!r}")
        cross_alphas(self.prompts, tokenizer, 1, cross_replace_steps)
        if local_blend is not None:
            local_blend.bind(self.prompts, tokenizer, 1, (1, 1), None)
        self.prepare()
        self.step = 0

    def start(self, steps, latent_hw, device=None):
        self.alphas = cross_alphas(self.prompts, self.tokenizer, steps, self.cross_replace_steps)
        self.self_window = step_window(self.self_replace_steps, steps, "self_replace_steps")
        self.self_min_factor = map_factor(self.self_max_fraction, latent_hw[0])  # 16x16 of a 64x64 latent: 4
        self.to(device)
        if self.local_blend is not None:
            self.local_blend.bind(self.prompts, self.tokenizer, steps, latent_hw, device)
        if self.store is not None:
            self.store.start(steps, latent_hw, device)

    def prepare(self):
        """Token maps of the edit, computed once (on the CPU) when the edit is made."""

    def to(self, device):
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))

    def begin_step(self, i):
        self.step = i

    def replaces_self(self, place):
        return (not place.is_cross and place.factor >= self.self_min_factor
                and self.self_window[0] <= self.step < self.self_window[1])

    def wants(self, place):
        return (place.is_cross or self.replaces_self(place) or (self.store is not None and self.store.wants(place)))

    def __call__(self, attn, place):
        cond = split(attn, place.heads)  # (P, heads, n, m), a view: edits write into attn
        base, target = cond[0], cond[1:]
        if place.is_cross:
            alpha = self.alphas[self.step][:, None, None, :]  # (P-1, 1, 1, 77)
            cond[1:] = self.replace_cross(base, target) * alpha + target * (1 - alpha)
        elif self.replaces_self(place):
            cond[1:] = base.expand_as(target)
        # the maps actually used are the ones stored and blended on (as in the official code)
        if self.local_blend is not None and self.local_blend.wants(place):
            self.local_blend.observe(cond, place)
        if self.store is not None:
            self.store(attn, place)
        return attn

    def step_end(self, i, latents):
        if self.store is not None:
            self.store.step_end(i, latents)
        return self.local_blend(i, latents) if self.local_blend is not None else latents


class Replace(Edit):
    """Word swap: "a cat" -> "a dog". Target token j attends like the source tokens mapped onto it."""

    def prepare(self):
        self.mapper = torch.stack([replacement_mapper(self.prompts[0], p, self.tokenizer) for p in self.prompts[1:]])

    def replace_cross(self, base, target):
        return torch.einsum("hqs,pst->phqt", base, self.mapper.to(base.dtype))


class Refine(Edit):
    """Adding words: "a cat" -> "a fluffy cat". Tokens shared with the source take its maps; new tokens keep theirs."""

    def prepare(self):
        pairs = [refinement_mapper(self.prompts[0], p, self.tokenizer) for p in self.prompts[1:]]
        self.mapper = torch.stack([m for m, _ in pairs])         # (P-1, 77) source token per target token
        self.refine_alphas = torch.stack([a for _, a in pairs])  # (P-1, 77) 0 for new tokens

    def replace_cross(self, base, target):
        taken = base[:, :, self.mapper].permute(2, 0, 1, 3)  # (P-1, heads, n, 77)
        a = self.refine_alphas[:, None, None, :].to(base.dtype)
        return taken * a + target * (1 - a)


class Reweight(Edit):
    """Scale a word's attention: `scales` is an (77,) or (P-1, 77) equalizer (see `reweight_scales`). With
    `base=` another edit (Replace or Refine), its result is re-weighted: edits chain."""

    def __init__(self, prompts, tokenizer, scales, base=None, **kw):
        self.scales, self.base = torch.as_tensor(scales, dtype=torch.float32), base
        if self.scales.shape[-1] != MAX_TOKENS:
            raise ValueError(f"scales must have {MAX_TOKENS} entries (one per token), not shape {tuple(self.scales.shape)}")
        super().__init__(prompts, tokenizer, **kw)

    def to(self, device):
        super().to(device)
        if self.base is not None:
            self.base.to(device)

    def replace_cross(self, base, target):
        edited = self.base.replace_cross(base, target) if self.base is not None else base.expand_as(target)
        return edited * self.scales.reshape(-1, 1, 1, MAX_TOKENS).to(base.dtype)


def reweight_scales(prompt, words, scales, tokenizer):
    """Convenience: (77,) scales for Reweight from words of the target prompt."""
    return equalizer(prompt, words, scales, tokenizer)
