"""LocalBlend: confine an edit to the region of some words, copying the source's latents everywhere else."""

import torch
import torch.nn.functional as F

from . import defaults
from .align import MAX_TOKENS, word_token_indices
from .attention import Place
from .checks import check_mask, check_range, check_word_list, clean


def blend_downsample(fraction: float, latent_h: int, min_size: int = defaults.MIN_MAP_SIZE) -> int:
    """How much smaller than the latent the maps LocalBlend reads are: `fraction` of the latent size (the
    paper's 16x16 of a 64x64 latent is 1/4), made finer where that would leave maps under min_size cells (a
    16x16 latent would give 4x4)."""
    down = max(1, round(1 / fraction))
    while down > 1 and latent_h // down < min(min_size, latent_h):
        down //= 2
    return down


def token_alphas(words, prompts, tokenizer) -> torch.Tensor:
    """(P, 77): 1 at the tokens of every word of `words` that a prompt has. Words are given once for all the
    prompts and looked up in each (`checks.check_blend_words`: each is in one at least)."""
    alpha = torch.zeros(len(prompts), MAX_TOKENS)
    for w in words:
        for p, prompt in enumerate(prompts):
            if clean(w) in map(clean, prompt.split()):
                alpha[p, word_token_indices(prompt, w, tokenizer)] = 1
    return alpha


def region(maps, alpha, latent_hw, threshold: float, pool: bool) -> torch.Tensor:
    """(P, h, w, 77) maps summed over the tokens of `alpha` (P, 77) -> (P, 1, H, W) True where that exceeds
    `threshold` of its maximum, at the latent's size (H, W)."""
    m = (maps * alpha[:, None, None, :]).sum(-1)[:, None]
    if pool:
        m = F.max_pool2d(m, 3, stride=1, padding=1)
    m = F.interpolate(m, size=latent_hw)
    return m / m.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12) > threshold


class LocalBlend:
    """After each step from `start_blend` on, latents outside a mask are taken from the source. The mask is
    where the words' cross-attention (mean over the steps so far, heads and the down/up places at
    `res_fraction` of the latent size, 16x16 for a 64x64 latent) exceeds `threshold` of its maximum, for the
    source's words or the target's. On an MM-DiT the maps are the words' text->image maps of every block (each
    word's attention over the image; its image->text maps are too diffuse to cut a region from), and the
    default threshold is `defaults.MMDIT_BLEND_THRESHOLD`. `subtract` words cut their region out; `mask` (any
    size, resized to the latent) replaces the attention mask altogether. Maps coarser than 8x8 are not used
    (`blend_downsample`).

    `words` (and `subtract`) are given once for all prompts: each is looked up in every prompt, and a prompt
    without it blends on the others' region ("circle" of "a circle" -> "a square" marks the source's circle).
    """

    def __init__(
        self,
        words,
        threshold: float | None = None,
        start_blend: float = defaults.START_BLEND,
        subtract=None,
        mask=None,
        res_fraction: float = defaults.BLEND_RES_FRACTION,
    ):
        self.words = check_word_list(words, "LocalBlend")
        self.subtract = None if subtract is None else check_word_list(subtract, "LocalBlend subtract")
        self.user_mask = check_mask(mask)
        # None: defaults.BLEND_THRESHOLD on cross-attention, MMDIT_BLEND_THRESHOLD on joint attention
        self.threshold = None if threshold is None else check_range(threshold, "LocalBlend threshold", 0, 1)
        self.start_blend = check_range(start_blend, "LocalBlend start_blend", 0, 1)
        # the size of the maps read, as a fraction of the latent's
        self.res_fraction = check_range(res_fraction, "LocalBlend res_fraction", 0, 1, low_open=True)

    def bind(self, prompts, tokenizer):
        """The tokens of each prompt the mask is read from (when the edit is made, before any sampling)."""
        self.alpha = token_alphas(self.words, prompts, tokenizer)
        subtract = self.subtract
        self.sub_alpha = None if subtract is None else token_alphas(subtract, prompts, tokenizer)

    def start(self, steps: int, latent_hw: tuple, device=None):
        """Before sampling: the step blending starts at, the maps read, an empty running sum of them."""
        self.start_step, self.latent_hw = int(self.start_blend * steps), tuple(latent_hw)
        self.downsample = blend_downsample(self.res_fraction, latent_hw[0])
        self.alpha = self.alpha.to(device)
        self.sub_alpha = None if self.sub_alpha is None else self.sub_alpha.to(device)
        self.sum, self.cut = None, defaults.BLEND_THRESHOLD if self.threshold is None else self.threshold

    def reads(self, place: Place) -> bool:
        """The UNet's down and up cross-attention at the chosen size; every MM-DiT text->image map (and on
        an MM-DiT the maps are cut at its threshold)."""
        if place.part:  # joint attention
            self.cut = defaults.MMDIT_BLEND_THRESHOLD if self.threshold is None else self.threshold
            return place.part == "text->image"
        return place.is_cross and place.downsample == self.downsample and place.where in ("down", "up")

    def __call__(self, i: int, maps: list, x: torch.Tensor) -> torch.Tensor:
        """Step i's blend: `maps` are this step's head-averaged (P, n, 77) maps at the places it `reads`;
        their mean joins the running sum, and from start_blend on each prompt keeps its own latents inside
        its mask (its region or the source's) and takes the source's outside."""
        if maps:
            m = torch.stack(maps).mean(0)
            down = round((self.latent_hw[0] * self.latent_hw[1] / m.shape[1]) ** 0.5)
            m = m.reshape(m.shape[0], *(s // down for s in self.latent_hw), MAX_TOKENS)
            self.sum = m if self.sum is None else self.sum + m
        if i < self.start_step or (self.sum is None and self.user_mask is None):
            return x
        if self.user_mask is not None:
            mask = F.interpolate(self.user_mask[None, None].to(x), size=self.latent_hw)
        else:
            mask = region(self.sum, self.alpha, self.latent_hw, self.cut, pool=True)
            mask = mask[:1] | mask  # the source's region and each prompt's own
            if self.sub_alpha is not None:
                mask = mask & ~region(self.sum, self.sub_alpha, self.latent_hw, self.cut, pool=False)
        return torch.lerp(x[:1].expand_as(x), x, mask.to(x))  # lerp is exact at 0 and 1
