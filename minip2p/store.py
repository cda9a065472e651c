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
    per_step / per_head: keep every step's maps / every head, for research; text_to_image: on an MM-DiT, keep
    the prompt tokens' maps over the image too (joint attention's other direction). Maps are stored under
    `Place.name` (an MM-DiT's: "joint_blocks.N.x_block.attn:image->text")."""

    def __init__(
        self,
        self_max_tokens=defaults.STORE_SELF_MAX_TOKENS,
        downsamples=None,
        per_step=False,
        per_head=False,
        text_to_image=True,
    ):
        self.self_max_tokens, self.downsamples = self_max_tokens, downsamples
        self.per_step, self.per_head, self.text_to_image = per_step, per_head, text_to_image
        self.start(0, (0, 0))

    def start(self, steps, latent_hw, device=None):
        self.latent_hw, self.sums, self.places, self.steps_done = latent_hw, {}, {}, 0
        self.history, self.current = [], {}

    def wants(self, place: Place) -> bool:
        if self.downsamples is not None and place.downsample not in self.downsamples:
            return False
        if place.part == "text->image":
            return self.text_to_image
        return place.is_cross or place.tokens(self.latent_hw) <= self.self_max_tokens

    def __call__(self, attn, place):
        if self.wants(place):
            cond = conditional_half(attn, place.heads)
            self.current[place.name] = cond.clone() if self.per_head else cond.mean(1)
            self.places[place.name] = place
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

    def keys(self, res=None, places=None, is_cross=True, part=None) -> list:
        """Stored keys whose map height is res (latent cells), at the given places (None: all; else
        `Place.where` names, "down"/"mid"/"up" or "early"/"middle"/"late", and MM-DiT block numbers); `part`:
        only that part of the MM-DiT's joint maps (its text->image maps are kept only under that name)."""
        h = self.latent_hw[0]
        return [
            k
            for k, p in self.places.items()
            if (p.part == part if part is not None else p.is_cross == is_cross and p.part != "text->image")
            and (places is None or p.where in places or p.layer in places)
            and (res is None or h // p.downsample == res)
        ]

    def aggregate(self, res: int, places=None, is_cross: bool = True, part=None) -> torch.Tensor:
        """Mean map over steps, heads and the chosen places at one size -> (prompts, res, res', keys).
        part="text->image" (MM-DiT): each prompt token's map over the image, laid out the same way."""
        keys = self.keys(res, places, is_cross, part)
        if not keys:
            kind = part or ("cross" if is_cross else "self")
            raise ValueError(
                f"no stored {kind}-attention maps at resolution {res} in {places or 'any place'}; "
                f"stored resolutions: {self.resolutions(is_cross)}"
            )
        d = self.places[keys[0]].downsample
        h, w = self.latent_hw[0] // d, self.latent_hw[1] // d
        maps = torch.stack([self.mean(k).mean(1) if self.per_head else self.mean(k) for k in keys]).mean(0)
        if part == "text->image":
            maps = maps.transpose(1, 2)  # (prompts, 77, image) -> (prompts, image, 77)
        return maps.reshape(maps.shape[0], h, w, maps.shape[-1])

    def save_npz(self, path):
        """Every stored mean map, keyed by place key (plus per-step maps if kept)."""
        arrays = {k: self.mean(k).cpu().numpy() for k in self.sums}
        for i, step in enumerate(self.history):
            arrays.update({f"step{i}/{k}": v.cpu().numpy() for k, v in step.items()})
        with atomic_write(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no ".npz"
            np.savez_compressed(f, latent_hw=np.array(self.latent_hw), **arrays)
