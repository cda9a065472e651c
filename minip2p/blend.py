"""LocalBlend: confine an edit to the region of some words, copying the source's latents everywhere else."""

import torch
import torch.nn.functional as F

from . import defaults
from .align import MAX_TOKENS, word_token_indices
from .attention import Place
from .checks import check_range


def map_factor(fraction: float, latent_h: int, min_size: int = defaults.MIN_MAP_SIZE) -> int:
    """Downsampling factor of the maps at `fraction` of the latent size (the paper's 16x16 of a 64x64 latent
    is 1/4), made finer where that would leave maps under min_size cells (a 16x16 latent would give 4x4)."""
    factor = max(1, round(1 / fraction))
    while factor > 1 and latent_h // factor < min(min_size, latent_h):
        factor //= 2
    return factor


def check_mask(mask) -> torch.Tensor | None:
    """A user's mask -> (h, w) float tensor with values in [0, 1] (a (1, h, w) or (1, 1, h, w) one is
    squeezed)."""
    if mask is None:
        return None
    m = torch.as_tensor(mask, dtype=torch.float32)
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2 or m.numel() == 0:
        raise ValueError(
            f"a LocalBlend mask is a 2-D (height, width) array, not one of shape {tuple(m.shape)}"
        )
    if not (torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1):
        raise ValueError("a LocalBlend mask holds values in [0, 1] (1: the edit may change this cell)")
    return m


class LocalBlend:
    """After each step from `start_blend` on, latents outside a mask are taken from the source. The mask is
    where the words' cross-attention (mean over the steps so far, heads and the down/up places at
    `res_fraction` of the latent size, 16x16 for a 64x64 latent) exceeds `threshold` of its maximum, for the
    source's words or the target's; `subtract` words cut their region out; `mask` (any size, resized to the
    latent) replaces the attention mask altogether. Maps coarser than 8x8 are not used (see `map_factor`).

    An edit drives it: `bind` (the words' tokens, when the edit is made), `start` (before sampling), `reads` /
    `observe` (the maps of the places it reads), `blend` (after each step)."""

    def __init__(
        self,
        words,
        threshold: float = defaults.BLEND_THRESHOLD,
        start_blend: float = defaults.START_BLEND,
        subtract=None,
        mask=None,
        res_fraction: float = defaults.BLEND_RES_FRACTION,
    ):
        self.words, self.subtract, self.user_mask = words, subtract, check_mask(mask)
        self.threshold = check_range(threshold, "LocalBlend threshold", 0, 1)
        self.start_blend = check_range(start_blend, "LocalBlend start_blend", 0, 1)
        # the size of the maps read, as a fraction of the latent's
        self.res_fraction = check_range(res_fraction, "LocalBlend res_fraction", 0, 1, low_open=True)

    def bind(self, prompts, tokenizer):
        """One word (or list of words) per prompt -> which tokens of each prompt the mask is read from."""

        def token_alphas(words):
            if words is None:
                return None
            if len(words) != len(prompts):
                raise ValueError(
                    f"LocalBlend needs one word (or list of words) per prompt: {len(prompts)} prompts, "
                    f"{len(words)} entries"
                )
            alpha = torch.zeros(len(prompts), MAX_TOKENS)
            for p, (prompt, ws) in enumerate(zip(prompts, words)):
                for w in [ws] if isinstance(ws, (str, int)) else ws:
                    alpha[p, word_token_indices(prompt, w, tokenizer)] = 1
            return alpha

        self.alpha, self.sub_alpha = token_alphas(self.words), token_alphas(self.subtract)

    def start(self, steps: int, latent_hw: tuple, device=None):
        self.start_step, self.latent_hw = int(self.start_blend * steps), latent_hw
        self.factor = map_factor(self.res_fraction, latent_hw[0])
        self.alpha = self.alpha.to(device)
        self.sub_alpha = None if self.sub_alpha is None else self.sub_alpha.to(device)
        self.sum, self.step_maps = None, []

    def reads(self, place: Place) -> bool:
        return place.is_cross and place.factor == self.factor and place.where in ("down", "up")

    def observe(self, cond: torch.Tensor, place: Place):
        """cond: (P, heads, n, 77) maps of the conditional half."""
        self.step_maps.append(cond.mean(1))

    def region(self, maps, alpha, pool: bool) -> torch.Tensor:
        m = (maps * alpha[:, None, None, :]).sum(-1)[:, None]  # (P, 1, h, w)
        if pool:
            m = F.max_pool2d(m, 3, stride=1, padding=1)
        m = F.interpolate(m, size=self.latent_hw)
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)
        return m > self.threshold

    def mask(self, dtype) -> torch.Tensor:
        """(P, 1, h, w) (or (1, 1, h, w) for a user mask): 1 where a prompt keeps its own latents."""
        if self.user_mask is not None:
            return F.interpolate(self.user_mask[None, None].to(dtype), size=self.latent_hw)
        mask = self.region(self.sum, self.alpha, pool=True)
        mask = (
            mask[:1] | mask
        )  # the source's region and each target's (a prompt without the words: the source's)
        if self.sub_alpha is not None:
            mask = mask & ~self.region(self.sum, self.sub_alpha, pool=False)
        return mask.to(dtype)

    def blend(self, i: int, x: torch.Tensor) -> torch.Tensor:
        h, w = (s // self.factor for s in self.latent_hw)
        if i == 0 and not self.step_maps and self.user_mask is None:  # else it would silently not blend
            raise ValueError(
                f"LocalBlend reads the {h}x{w} cross-attention maps (res_fraction {self.res_fraction:g} of "
                f"the {self.latent_hw[0]}x{self.latent_hw[1]} latent), and this model has none of that size: "
                "give another res_fraction or a larger image"
            )
        if self.step_maps:  # this step's maps, averaged over places, added to the running sum
            maps = torch.stack(self.step_maps).mean(0)
            maps = maps.reshape(maps.shape[0], h, w, maps.shape[-1])
            self.sum, self.step_maps = maps if self.sum is None else self.sum + maps, []
        if i < self.start_step or (self.sum is None and self.user_mask is None):
            return x
        # the source's latents where the mask is 0, each prompt's own where it is 1 (lerp is exact there)
        return torch.lerp(x[:1].expand_as(x), x, self.mask(x.dtype).to(x.device))
