"""Real-image editing: invert a photo into the model's noise, so that Prompt-to-Prompt can edit it.

- DDIM inversion: the deterministic DDIM update run backwards with the conditional prediction (guidance 1).
- Null-text inversion (Mokady et al. 2022): DDIM inversion, then, step by step, optimise the unconditional
  ("null")
  text embedding so that guided sampling (guidance 7.5) retraces the inverted trajectory.
- Negative-prompt inversion (Miyake et al. 2023): use the prompt's own embedding as the null embedding; no
  optimisation. With it, guided sampling is conditional sampling, which retraces DDIM inversion approximately.
- Direct Inversion (Ju et al. 2024, "PnP Inversion"): DDIM inversion, then, while editing, put the source
  branch back on the inverted trajectory after every step (the official code adds each step's precomputed
  offset to it: the same thing). The source reconstructs exactly; the target branches are edited as usual.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import defaults
from .checks import check_finite, check_image_size, check_whole, short
from .ddim import TRAIN_STEPS, guided
from .files import atomic_write
from .images import load_image, to_tensor

METHODS = ("null-text", "negative-prompt", "ddim", "direct")
META_KEY = "minip2p_inversion"


@dataclass
class Inversion:
    """What sampling needs to reconstruct an image: the start noise, and the null embedding of each step."""

    latent: torch.Tensor  # (1, C, h, w) x_T
    null_embeddings: torch.Tensor  # (steps, 77, D) unconditional context per step
    prompt: str
    method: str
    guidance_scale: float
    steps_offset: int
    probe: torch.Tensor | None = (
        None  # a few of the model's weights (Pipeline.probe): which model inverted it
    )
    trajectory: torch.Tensor | None = None  # (steps + 1, 1, C, h, w): x_0 ... x_T (saved for "direct")
    null_pooled: torch.Tensor | None = None  # SDXL: (1, P) pooled embedding of the unconditional half

    def source_latent(self, i: int) -> torch.Tensor | None:
        """Direct Inversion: where the source branch must be after sampling step i (the inverted trajectory's
        latent one level less noisy); None for the other methods, whose source branch runs free."""
        return self.trajectory[-2 - i] if self.method == "direct" else None

    @property
    def steps(self) -> int:
        return self.null_embeddings.shape[0]

    def check(self, pipe, prompt: str):
        """An error unless this inversion fits the model and the source prompt it is used with."""
        latent = (1, pipe.config.vae.z_channels)
        nulls, pooled_width = pipe.context_shape
        pooled = None if pooled_width is None else (1, pooled_width)
        own_pooled = None if self.null_pooled is None else tuple(self.null_pooled.shape)
        if (
            tuple(self.latent.shape[:2]) != latent
            or tuple(self.null_embeddings.shape[1:]) != nulls
            or own_pooled != pooled
        ):
            raise ValueError(
                f"this inversion (latent {tuple(self.latent.shape)}, null embeddings "
                f"{tuple(self.null_embeddings.shape)}) was made with another kind of model"
            )
        probe = pipe.probe()
        if self.probe is not None and not torch.allclose(self.probe, probe, rtol=1e-2, atol=1e-3):
            raise ValueError("this inversion was made with another model: invert the image with this one")
        if prompt != self.prompt:
            raise ValueError(
                f"the first prompt must be the one the image was inverted with, {short(self.prompt)}, not "
                f"{short(prompt)}: its null embeddings reconstruct the image for that prompt only"
            )

    def settings(self, steps, guidance_scale, negative_prompt) -> tuple:
        """Sampling from this inversion -> (steps, guidance_scale, steps_offset, start latent); an error where
        the caller asks for other steps, guidance or a negative prompt (the null embeddings take its place).
        """
        for name, given, own in (
            ("steps", steps, self.steps),
            ("guidance_scale", guidance_scale, self.guidance_scale),
        ):
            if given is not None and given != own:
                raise ValueError(f"{name}={given} differs from the inversion's {own}; leave it out")
        if negative_prompt:
            raise ValueError(
                "negative_prompt cannot be used with an inversion: its null embeddings take that place"
            )
        return self.steps, self.guidance_scale, self.steps_offset, self.latent

    def parts(self) -> tuple:
        """-> (tensors, metadata): what `save` writes (a recording made from this inversion writes it too)."""
        meta = {
            "prompt": self.prompt,
            "method": self.method,
            "guidance_scale": self.guidance_scale,
            "steps_offset": self.steps_offset,
        }
        tensors = {"latent": self.latent, "null_embeddings": self.null_embeddings}
        if self.probe is not None:
            tensors["probe"] = self.probe
        if self.null_pooled is not None:
            tensors["null_pooled"] = self.null_pooled
        if self.method == "direct":
            tensors["trajectory"] = self.trajectory
        return {k: v.clone().contiguous() for k, v in tensors.items()}, meta  # latent: a trajectory view

    def save(self, path):
        tensors, meta = self.parts()
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path) -> "Inversion":
        """An inversion saved by `save`, checked whole: one line naming the file for anything amiss."""
        return cls.from_parts(*read_saved(path, META_KEY, "inversion"), path)

    @classmethod
    def from_parts(cls, tensors: dict, meta: dict, path) -> "Inversion":
        """`parts` read back from the file at `path`, checked whole."""
        try:
            inversion = cls(
                tensors["latent"],
                tensors["null_embeddings"],
                meta["prompt"],
                meta["method"],
                float(meta["guidance_scale"]),
                int(meta["steps_offset"]),
                tensors.get("probe"),
                null_pooled=tensors.get("null_pooled"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: an inversion file lacks or garbles {e}") from None
        if inversion.method == "direct":
            inversion.trajectory = tensors.get("trajectory")
        return check_loaded(inversion, path)


def read_saved(path, key: str, what: str) -> tuple:
    """A safetensors file minip2p saved -> (tensors, the JSON object under metadata `key`), or one line
    naming the file. Never unpickles: safetensors holds tensors and strings only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get(key, "null") or "null")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not a readable {what} file ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path} is not a{'n' if what[0] in 'aeiou' else ''} {what} saved by minip2p (no {key} metadata)"
        )
    return tensors, meta


def check_loaded(inversion: Inversion, path) -> Inversion:
    """An inversion read from `path`, checked whole: shapes, finite values, method and schedule."""
    latent, nulls = inversion.latent, inversion.null_embeddings
    if latent.dim() != 4 or latent.shape[0] != 1 or nulls.dim() != 3 or not 1 <= len(nulls) <= TRAIN_STEPS:
        raise ValueError(
            f"{path}: latent {tuple(latent.shape)} / null embeddings {tuple(nulls.shape)} are "
            "not an inversion's (1, C, h, w) / (steps, tokens, width)"
        )
    pooled = inversion.null_pooled
    if pooled is not None and (pooled.dim() != 2 or pooled.shape[0] != 1):
        raise ValueError(f"{path}: null_pooled {tuple(pooled.shape)} is not a (1, width) embedding")
    if not all(
        torch.isfinite(t).all() for t in (latent, nulls, torch.zeros(0) if pooled is None else pooled)
    ):
        raise ValueError(f"{path} holds NaN or infinite values: the file is damaged")
    if inversion.method == "direct":
        want = (inversion.steps + 1, *latent.shape)
        if inversion.trajectory is None or tuple(inversion.trajectory.shape) != want:
            raise ValueError(f"{path}: a direct inversion needs its trajectory, of shape {want}")
        if not torch.isfinite(inversion.trajectory).all():
            raise ValueError(f"{path} holds NaN or infinite values: the file is damaged")
    if inversion.method not in METHODS or inversion.steps_offset not in (0, 1):
        raise ValueError(
            f"{path}: unknown method {inversion.method!r} or steps_offset {inversion.steps_offset}"
        )
    check_finite(inversion.guidance_scale, f"{path}: guidance_scale")
    return inversion


def invert(
    pipe,
    image,
    prompt: str,
    *,
    method: str = defaults.INVERSION_METHOD,
    steps: int | None = None,
    guidance_scale: float | None = None,
    inner_steps: int = defaults.NULL_TEXT_INNER_STEPS,
    early_stop: float = defaults.NULL_TEXT_EARLY_STOP,
    steps_offset: int = defaults.INVERSION_STEPS_OFFSET,
    progress: bool = True,
) -> Inversion:
    """Image (path, PIL, or (1, 3, H, W) tensor in [-1, 1]) + its prompt -> Inversion (steps None: the
    model's, 50; SD3 28)."""
    check_method(pipe, method)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            "inversion needs the prompt that describes the image (an empty prompt inverts poorly)"
        )
    steps = check_whole(pipe.default_steps() if steps is None else steps, "steps", 1, TRAIN_STEPS)
    guidance_scale = pipe.guidance_scale if guidance_scale is None else guidance_scale
    guidance_scale = check_finite(guidance_scale, "guidance_scale")
    early_stop = check_finite(early_stop, "early_stop")
    stop = check_whole(inner_steps, "inner_steps", 0), early_stop
    steps_offset = check_whole(steps_offset, "steps_offset", 0, 1)
    image = checked_image(pipe, image)
    ddim = pipe.scheduler(steps, steps_offset)
    (cond, pooled), (null, null_pooled) = pipe.encode_text([prompt]), pipe.encode_negative(None)
    if method == "negative-prompt":
        null, null_pooled = cond, pooled
    height, width = image.shape[2:]
    y_cond, y_null = (
        None if p is None else pipe.added_conditioning(p, height, width) for p in (pooled, null_pooled)
    )
    trajectory = ddim_inversion(pipe, ddim, pipe.encode(image), cond, y_cond, progress)
    if method == "null-text":
        conditions = cond, y_cond, y_null
        nulls = null_text_optimisation(
            pipe, ddim, trajectory, conditions, null, guidance_scale, stop, progress
        )
    else:
        nulls = null.expand(steps, -1, -1)
    trajectory = torch.stack(trajectory)
    return Inversion(
        trajectory[-1],
        nulls.clone(),
        prompt,
        method,
        guidance_scale,
        steps_offset,
        pipe.probe(),
        trajectory,
        None if null_pooled is None else null_pooled.clone(),
    )


def check_method(pipe, method: str):
    """One of METHODS; SD3 (flow matching) only plain ("ddim": the Euler steps backwards) and "direct"."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if pipe.config.family.startswith("sd3") and method not in ("ddim", "direct"):
        raise ValueError(
            f"method {method!r}: SD3 inverts by the Euler steps run backwards, method='ddim' (plain) or "
            "'direct' (Direct Inversion: the source reconstructs exactly)"
        )


def checked_image(pipe, image) -> torch.Tensor:
    """A path, a PIL image or a (1, 3, H, W) float tensor in [-1, 1] -> that tensor, checked."""
    if not isinstance(image, torch.Tensor):
        image = to_tensor(load_image(image, pipe.config.image_size))
    if image.dim() != 4 or image.shape[:2] != (1, 3) or not image.is_floating_point():
        raise ValueError(
            f"give the image as a path, a PIL image or a (1, 3, H, W) float tensor, not a tensor of "
            f"shape {tuple(image.shape)} ({image.dtype})"
        )
    if not torch.isfinite(image).all():
        raise ValueError("the image tensor holds NaN or infinite values")
    check_image_size(pipe.config, image.shape[2], image.shape[3])
    return image


@torch.no_grad()
def ddim_inversion(pipe, ddim, x, cond, y, progress) -> list:
    """x_0 -> [x_0, x_1, ..., x_T]: the DDIM update run backwards with the conditional prediction."""
    trajectory = [x]
    for t in tqdm(ddim.inverse_timesteps, desc="inversion", disable=not progress, leave=False):
        x = ddim.inverse_step(pipe.predict(x, t, cond, y=y), t, x)
        trajectory.append(x)
    return trajectory


def null_text_optimisation(pipe, ddim, trajectory, conditions, null, guidance_scale, stop, progress):
    """Per step i, Adam on the null embedding (lr 1e-2 (1 - i/100)) until the guided step from the current
    latent lands on the inverted trajectory's next latent (loss < early_stop + i * 2e-5), at most inner_steps
    times. The conditional prediction is computed once per step; no graph is kept across steps. In fp16/bf16
    the embedding and its Adam state stay fp32 (a fp16 Adam step divides by an underflowed second moment:
    NaN). stop: (inner_steps, early_stop). SDXL: only the token embeddings (the context) are optimised; the
    pooled embedding in y_null stays what sampling gives the unconditional half (zeros), as in the null-text
    paper, which optimises only what the cross-attention reads."""
    (cond, y_cond, y_null), (inner_steps, early_stop) = conditions, stop
    nulls, x = [], trajectory[-1]
    bar = tqdm(ddim.timesteps, desc="null-text optimisation", disable=not progress, leave=False)
    for i, t in enumerate(bar):
        target = trajectory[-2 - i].float()  # the loss is taken in fp32
        t = t.to(pipe.device)
        with torch.no_grad():
            out_cond = pipe.predict(x, t, cond, y=y_cond)
        null = null.detach().to(torch.float32, copy=True).requires_grad_(True)
        opt = torch.optim.Adam([null], lr=1e-2 * (1.0 - i / 100.0))
        for _ in range(inner_steps):
            out = guided(pipe.predict(x, t, null.to(cond.dtype), y=y_null), out_cond, guidance_scale)
            loss = F.mse_loss(ddim.step(out, t, x)[0], target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if loss.item() < early_stop + i * 2e-5:
                break
        null = null.detach().to(cond.dtype)
        nulls.append(null[0])
        with torch.no_grad():
            x = ddim.step(guided(pipe.predict(x, t, null, y=y_null), out_cond, guidance_scale), t, x)[0]
    return torch.stack(nulls)
