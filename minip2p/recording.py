"""Recordings: the source branch of an edit, computed once and replayed under any number of edits.

An edit only reads the source: its latents after every step (LocalBlend keeps the source outside its mask)
and its attention maps (Replace, Refine and Reweight take them; LocalBlend reads its words' maps).
`Pipeline.record` samples the source alone, with a `Recorder` keeping those; an edit from the recording
samples only the
targets, and `Replay` puts the source's rows back into every map and latent the edit sees, so that the edit
runs as it does in the full batch. The maps are kept in fp32, as the explicit softmax makes them:
cross-attention at every place and step, self-attention up to the size cap the recording was made with (an
edit may ask for no larger); the latents in fp32, as the sampler keeps them.
"""

import json
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from .attention import Controller, Place, conditional_half, joint_parts
from .checks import check_finite, check_range, short
from .files import atomic_write
from .inversion import Inversion, read_saved
from .p2p import self_max_tokens

META_KEY = "minip2p_recording"
SAMPLING = ("steps", "guidance_scale", "sampler", "steps_offset", "negative_prompt", "height", "width")
SIZES = ("original_size", "crops_coords_top_left", "target_size")  # SDXL micro-conditioning
NOISE = ("seed", "generator", "latents", "inversion")  # where the start noise comes from: the recording's


def recordable(place: Place, max_tokens: int, latent_hw: tuple) -> bool:
    """The maps an edit can ask of the source: every cross-attention map (an MM-DiT's image->text block, and
    its text->image block, which LocalBlend reads), self-attention up to `max_tokens` queries (every MM-DiT
    image->image block: they are all one size)."""
    if place.is_cross or place.part in ("image->image", "text->image"):
        return True
    return place.part == "" and place.tokens(latent_hw) <= max_tokens


class Recorder(Controller):
    """Keeps the source's maps at every recordable place and step (the source alone is sampled)."""

    def __init__(self, self_max_fraction: float):
        self.fraction = check_range(self_max_fraction, "self_max_fraction", 0, 1, low_open=True)

    def start(self, steps, latent_hw, device=None):
        self.latent_hw, self.max_tokens, self.maps = latent_hw, self_max_tokens(self.fraction, latent_hw), {}

    def wants(self, place):
        return recordable(place, self.max_tokens, self.latent_hw)

    def __call__(self, attn, place):
        self.maps.setdefault(place.name, []).append(conditional_half(attn, place.heads)[0].clone())
        return attn


@dataclass
class Recording:
    """What any edit reads of one source: see the module's docstring."""

    prompt: str
    latents: torch.Tensor  # (steps + 1, 1, C, h, w) fp32: x_T, then x after every step
    maps: dict  # {Place.name: (steps, heads, queries, keys)} fp32: the source's maps (conditional half)
    settings: dict  # the sampling options it was made with (SAMPLING, SIZES), and self_max_fraction
    probe: torch.Tensor | None = None  # a few of the model's weights (Pipeline.probe)
    inversion: Inversion | None = None  # the inversion it replays (its null embeddings serve the targets)

    @property
    def steps(self) -> int:
        return self.latents.shape[0] - 1

    @property
    def nbytes(self) -> int:
        tensors = [self.latents, *self.maps.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def sampling(self, given: dict) -> dict:
        """An edit's sampling options from this recording -> its own; an error for one given otherwise."""
        own = {k: self.settings[k] for k in SAMPLING + SIZES if k in self.settings}
        for name, value in given.items():
            if name in NOISE and value is not None:
                raise ValueError(f"{name}: a recording holds its start noise (and inversion); leave it out")
            if name in own and value is not None and json.dumps(value) != json.dumps(own[name]):
                raise ValueError(f"{name}={value!r}: the recording was made with {own[name]!r}; leave it out")
            if name == "eta" and value:
                raise ValueError("eta: a recording replays deterministic sampling; leave eta at 0")
        if self.inversion is not None:
            own = {k: v for k, v in own.items() if k in ("sampler",)} | {"inversion": self.inversion}
        else:
            own["latents"] = self.latents[0]
        return {**given, **{k: tuple(v) if isinstance(v, list) else v for k, v in own.items()}}

    def check(self, pipe, source: str, edits: list):
        """An error unless this recording fits the model, the source prompt and the edits run from it."""
        probe = pipe.probe()
        if self.probe is None or not torch.allclose(self.probe, probe, rtol=1e-2, atol=1e-3):
            raise ValueError("this recording was made with another model: record the source with this one")
        if source != self.prompt:
            raise ValueError(
                f"this recording is of {short(self.prompt)}, not {short(source)}: record that prompt"
            )
        for edit in edits:
            if edit.self_max_fraction > self.settings["self_max_fraction"]:
                raise ValueError(
                    f"self_max_fraction={edit.self_max_fraction:g}: the recording kept self-attention up to "
                    f"{self.settings['self_max_fraction']:g}; record with a larger self_max_fraction"
                )
        hw = tuple(self.latents.shape[3:])
        places = {}
        for p in pipe.denoiser.places():
            places.update({s.name: s for s in (joint_parts(p).values() if p.part == "joint" else [p])})
        for name, maps in self.maps.items():
            p = places.get(name)
            n = None if p is None else p.tokens(hw)
            shape = (n, maps.shape[3] if p is not None and p.is_cross else n)
            if p is not None and p.part == "text->image":
                shape = (maps.shape[2], n)  # prompt tokens x image
            if p is None or tuple(maps.shape[1:]) != (p.heads, *shape):
                raise ValueError(f"this recording's map {name!r} does not fit this model: record with it")

    def save(self, path):
        tensors = {"latents": self.latents.contiguous(), "probe": self.probe}
        tensors.update({f"maps/{k}": v.contiguous() for k, v in self.maps.items()})
        meta = dict(prompt=self.prompt, settings=self.settings, inversion=None)
        if self.inversion is not None:
            inv_tensors, meta["inversion"] = self.inversion.parts()
            tensors.update({f"inversion/{k}": v for k, v in inv_tensors.items()})
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path) -> "Recording":
        """A recording saved by `save`, checked whole: one line naming the file for anything amiss."""
        tensors, meta = read_saved(path, META_KEY, "recording")
        inv = {k.removeprefix("inversion/"): v for k, v in tensors.items() if k.startswith("inversion/")}
        maps = {k.removeprefix("maps/"): v for k, v in tensors.items() if k.startswith("maps/")}
        try:
            prompt, settings, inv_meta = meta["prompt"], dict(meta["settings"]), meta["inversion"]
            latents, probe = tensors["latents"], tensors["probe"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: a recording file lacks or garbles {e}") from None
        inversion = None if inv_meta is None else Inversion.from_parts(inv, inv_meta, path)
        return check_loaded(cls(prompt, latents, maps, settings, probe, inversion), path)


def check_loaded(r: Recording, path) -> Recording:
    """A recording read from `path`, checked whole: shapes, finite values, settings."""
    if not isinstance(r.prompt, str) or r.latents.dim() != 5 or r.latents.shape[:2] < (2, 1):
        raise ValueError(
            f"{path}: latents {tuple(r.latents.shape)} are not a recording's (steps + 1, 1, C, h, w)"
        )
    if r.latents.shape[1] != 1 or r.probe.dim() != 1:
        raise ValueError(f"{path}: latents {tuple(r.latents.shape)} / probe are not a recording's")
    for name, maps in r.maps.items():
        if maps.dim() != 4 or maps.shape[0] != r.steps or maps.dtype != torch.float32:
            raise ValueError(
                f"{path}: map {name!r} {tuple(maps.shape)} is not (steps={r.steps}, heads, n, m) fp32"
            )
    if not all(torch.isfinite(t).all() for t in (r.latents, r.probe, *r.maps.values())):
        raise ValueError(f"{path} holds NaN or infinite values: the file is damaged")
    s = r.settings
    try:
        check_range(s["self_max_fraction"], f"{path}: self_max_fraction", 0, 1, low_open=True)
        if s.get("guidance_scale") is not None:
            check_finite(s["guidance_scale"], f"{path}: guidance_scale")
        if r.inversion is None and s.get("steps") != r.steps:
            raise ValueError(f"{path}: steps {s.get('steps')!r} differ from the {r.steps} recorded")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: a recording file lacks or garbles {e}") from None
    if r.inversion is not None and r.inversion.prompt != r.prompt:
        raise ValueError(f"{path}: the recording's prompt and its inversion's differ")
    return r


def record(pipe, prompt, self_max_fraction: float, **options) -> Recording:
    """`Pipeline.record`: the source sampled alone, a `Recorder` keeping its maps. self_max_fraction: the
    largest self-attention map kept, as an edit's (an edit from the recording may ask for no larger)."""
    inversion = options.get("inversion")
    prompt = inversion.prompt if prompt is None and inversion is not None else prompt
    if options.get("eta"):
        raise ValueError("eta: a recording replays deterministic sampling; leave eta at 0")
    if "controller" in options:
        raise ValueError("controller: a recording's controller is its own (it keeps the maps); leave it out")
    recorder = Recorder(self_max_fraction)
    p, o = pipe.plan([prompt], dict(options, controller=recorder))
    latents = [p.latents.clone()] + [r.latents.clone() for r in pipe.run(p, o)]
    height, width = (s * pipe.pixels_per_cell for s in p.latents.shape[2:])
    settings = dict(
        steps=p.ddim.steps,
        guidance_scale=p.guidance.scale,
        sampler=o.sampler or pipe.samplers[0],
        steps_offset=o.steps_offset if inversion is None else inversion.steps_offset,
        negative_prompt=o.negative_prompt,
        height=height,
        width=width,
        **{k: getattr(o, k) for k in SIZES},
        self_max_fraction=recorder.fraction,
    )
    maps = {k: torch.stack(v) for k, v in recorder.maps.items()}
    return Recording(prompt, torch.stack(latents), maps, settings, pipe.probe(), inversion)


class Replay(Controller):
    """An edit run on the target rows alone: the source's rows of every map and latent from a recording."""

    def __init__(self, controller: Controller, recording: Recording):
        self.inner, self.recording, self.step = controller, recording, 0

    def start(self, steps, latent_hw, device=None):
        self.inner.start(steps, latent_hw, device)

    def before_step(self, i):
        self.step = i
        self.inner.before_step(i)

    def wants(self, place):
        return place.name in self.recording.maps and self.inner.wants(place)

    def __call__(self, attn, place):
        n, m = attn.shape[1:]
        source = self.recording.maps[place.name][self.step].to(attn)  # (heads, n, m)
        halves = attn.view(2, -1, place.heads, n, m)  # [unconditional, conditional] x targets
        full = torch.cat([source.expand(2, 1, *source.shape), halves], dim=1)  # the source first in each
        edited = self.inner(full.view(-1, n, m), place).view(2, -1, place.heads, n, m)
        return edited[:, 1:].reshape(attn.shape)

    def after_step(self, i, latents):
        source = self.recording.latents[i + 1].to(latents)
        return self.inner.after_step(i, torch.cat([source, latents]))[1:]
