"""AttentionStore: keep the attention maps of a generation, to look at them or export them."""

import numpy as np
import torch

from . import defaults
from .attention import Controller, Place, conditional_half
from .files import atomic_write


class AttentionStore(Controller):
    """Keeps the conditional half's maps: the sum over steps per place (read as a mean), as head-averaged
    copies.

    self_max_tokens: self-attention maps are kept only up to this many queries (a 64x64 map is 4096^2 floats);
    downsamples: keep only places whose maps are this many times smaller than the latent (None: all);
    per_step / per_head: keep every
    step's maps / every head, for research."""

    def __init__(
        self, self_max_tokens=defaults.STORE_SELF_MAX_TOKENS, downsamples=None, per_step=False, per_head=False
    ):
        self.self_max_tokens, self.downsamples = self_max_tokens, downsamples
        self.per_step, self.per_head = per_step, per_head
        self.start(0, (0, 0))

    def start(self, steps, latent_hw, device=None):
        self.latent_hw, self.sums, self.places, self.steps_done = latent_hw, {}, {}, 0
        self.history, self.current = [], {}

    def wants(self, place: Place) -> bool:
        if self.downsamples is not None and place.downsample not in self.downsamples:
            return False
        return place.is_cross or place.tokens(self.latent_hw) <= self.self_max_tokens

    def __call__(self, attn, place):
        if self.wants(place):
            cond = conditional_half(attn, place.heads)
            self.current[place.key] = cond.clone() if self.per_head else cond.mean(1)
            self.places[place.key] = place
        return attn

    def after_step(self, i, latents):
        for key, m in self.current.items():
            self.sums[key] = self.sums[key] + m if key in self.sums else m
        if self.per_step:
            self.history.append(self.current)
        self.current, self.steps_done = {}, self.steps_done + 1
        return latents

    def mean(self, key: str) -> torch.Tensor:
        return self.sums[key] / max(self.steps_done, 1)

    def resolutions(self, is_cross: bool = True) -> list:
        """The map sizes (latent cells per side) stored, coarse to fine."""
        h = self.latent_hw[0]
        return sorted({h // p.downsample for p in self.places.values() if p.is_cross == is_cross})

    def keys(self, res=None, places=("down", "mid", "up"), is_cross=True) -> list:
        """Stored place keys whose map height is res (latent cells), in the given UNet parts."""
        h = self.latent_hw[0]
        return [
            k
            for k, p in self.places.items()
            if p.is_cross == is_cross and p.where in places and (res is None or h // p.downsample == res)
        ]

    def aggregate(self, res: int, places=("down", "mid", "up"), is_cross: bool = True) -> torch.Tensor:
        """Mean map over steps, heads and the chosen places at one size -> (prompts, res, res', keys)."""
        keys = self.keys(res, places, is_cross)
        if not keys:
            kind = "cross" if is_cross else "self"
            raise ValueError(
                f"no stored {kind}-attention maps at resolution {res} in {places}; "
                f"stored resolutions: {self.resolutions(is_cross)}"
            )
        d = self.places[keys[0]].downsample
        h, w = self.latent_hw[0] // d, self.latent_hw[1] // d
        maps = torch.stack([self.mean(k).mean(1) if self.per_head else self.mean(k) for k in keys]).mean(0)
        return maps.reshape(maps.shape[0], h, w, maps.shape[-1])

    def save_npz(self, path):
        """Every stored mean map, keyed by place key (plus per-step maps if kept)."""
        arrays = {k: self.mean(k).cpu().numpy() for k in self.sums}
        for i, step in enumerate(self.history):
            arrays.update({f"step{i}/{k}": v.cpu().numpy() for k, v in step.items()})
        with atomic_write(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no ".npz"
            np.savez_compressed(f, latent_hw=np.array(self.latent_hw), **arrays)
