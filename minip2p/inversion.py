"""Real-image editing: load a photo, invert it into the model's noise, so that P2P can edit it.

- DDIM inversion: the deterministic DDIM update run backwards with the conditional prediction (guidance 1).
- Null-text inversion (Mokady et al. 2022): DDIM inversion, then, step by step, optimise the unconditional ("null")
  text embedding so that guided sampling (guidance 7.5) retraces the inverted trajectory.
- Negative-prompt inversion (Miyake et al. 2023): use the prompt's own embedding as the null embedding; no
  optimisation. With it, guided sampling is conditional sampling, which retraces DDIM inversion approximately.
"""
import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from .ddim import DDIM
from .progress import Progress


def load_image(image, size, crop=(0, 0, 0, 0)):
    """A path or PIL image -> RGB PIL image of size x size: EXIF orientation applied, any mode converted
    (16-bit scaled, transparency composited on white), `crop` = pixels cut from (left, right, top, bottom),
    then a centre crop to a square and a resize."""
    if not isinstance(image, Image.Image):
        try:
            image = Image.open(image)
            image.load()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"image not found: {image}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read {image} as an image ({e}); give a PNG, JPEG or WebP file") from None
    if size <= 0 or len(crop) != 4 or min(crop) < 0:
        raise ValueError(f"size must be positive and crop four pixel counts >= 0 (left, right, top, bottom): "
                         f"size={size}, crop={crop}")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(a / (257 if a.max() > 255 else 1), 0, 255).astype(np.uint8))
    if image.mode in ("P", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    image = image.convert("RGB")
    w, h = image.size
    left, right, top, bottom = crop
    if left + right >= w or top + bottom >= h:
        raise ValueError(f"crop {crop} leaves nothing of a {w}x{h} image")
    image = image.crop((left, top, w - right, h - bottom))  # top is limited by the height, not by left
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return image.resize((size, size), Image.LANCZOS)


def to_tensor(image):
    """PIL RGB -> (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


@dataclass
class Inversion:
    """What sampling needs to reconstruct an image: the start noise, and the null embedding of each step."""
    latent: torch.Tensor            # (1, C, h, w) x_T
    null_embeddings: torch.Tensor   # (steps, 77, D) unconditional context per step
    prompt: str
    method: str
    guidance_scale: float
    steps_offset: int
    trajectory: list = None         # x_0 ... x_T of DDIM inversion (not saved)

    @property
    def steps(self):
        return self.null_embeddings.shape[0]

    def save(self, path):
        meta = {"prompt": self.prompt, "method": self.method, "guidance_scale": str(self.guidance_scale),
                "steps_offset": str(self.steps_offset)}
        save_file({"latent": self.latent.contiguous(), "null_embeddings": self.null_embeddings.contiguous()},
                  str(path), metadata={"minip2p_inversion": json.dumps(meta)})

    @classmethod
    def load(cls, path):
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("minip2p_inversion", "null") or "null")
        if meta is None:
            raise ValueError(f"{path} is not an inversion saved by minip2p (no minip2p_inversion metadata)")
        t = load_file(str(path))
        return cls(t["latent"], t["null_embeddings"], meta["prompt"], meta["method"], float(meta["guidance_scale"]),
                   int(meta["steps_offset"]))


def invert(pipe, image, prompt, method="null-text", steps=50, guidance_scale=7.5, inner_steps=10,
           early_stop=1e-5, steps_offset=0, progress=True):
    """Image (path, PIL, or (1, 3, H, W) tensor in [-1, 1]) + its prompt -> Inversion."""
    if method not in ("null-text", "negative-prompt", "ddim"):
        raise ValueError(f"method must be 'null-text', 'negative-prompt' or 'ddim', not {method!r}")
    if not prompt or not prompt.strip():
        raise ValueError("inversion needs the prompt that describes the image (an empty prompt inverts poorly)")
    if not isinstance(image, torch.Tensor):
        image = to_tensor(load_image(image, pipe.config.image_size))
    pipe.check_size(image.shape[2], image.shape[3])
    ddim = DDIM(steps, steps_offset, pipe.config.prediction)
    cond, null = pipe.encode_prompts([prompt]), pipe.encode_prompts([""])
    with torch.no_grad():
        x = pipe.encode(image)
        trajectory = [x]
        bar = Progress(steps, progress, "DDIM inversion")
        for t in ddim.timesteps.flip(0):  # ascending: x_0 -> x_T
            x = ddim.inverse_step(pipe.unet(x, t.to(pipe.device), cond), t, x)
            trajectory.append(x)
            bar.update()
    if method == "ddim":
        nulls = null.expand(steps, -1, -1)
    elif method == "negative-prompt":
        nulls = cond.expand(steps, -1, -1)
    else:
        nulls = null_text_optimisation(pipe, ddim, trajectory, cond, null, guidance_scale, inner_steps, early_stop,
                                       progress)
    return Inversion(trajectory[-1], nulls.clone(), prompt, method, guidance_scale, steps_offset, trajectory)


def null_text_optimisation(pipe, ddim, trajectory, cond, null, guidance_scale, inner_steps, early_stop, progress):
    """Per step i, Adam on the null embedding (lr 1e-2 (1 - i/100)) until the guided step from the current latent
    lands on the inverted trajectory's next latent (loss < early_stop + i * 2e-5), at most inner_steps times.
    The conditional prediction is computed once per step; no graph is kept across steps. In fp16/bf16 the
    embedding and its Adam state stay fp32 (a fp16 Adam step divides by an underflowed second moment: NaN)."""
    nulls, x = [], trajectory[-1]
    bar = Progress(len(ddim.timesteps) * inner_steps, progress, "null-text optimisation")
    for i, t in enumerate(ddim.timesteps):
        target = trajectory[-2 - i].float()  # the loss is taken in fp32
        t = t.to(pipe.device)
        with torch.no_grad():
            out_cond = pipe.unet(x, t, cond)
        null = null.detach().to(torch.float32, copy=True).requires_grad_(True)
        opt = torch.optim.Adam([null], lr=1e-2 * (1.0 - i / 100.0))
        for _ in range(inner_steps):
            out_uncond = pipe.unet(x, t, null.to(cond.dtype))
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
            loss = F.mse_loss(ddim.step(out, t, x).float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if loss.item() < early_stop + i * 2e-5:
                break
        bar.update(inner_steps)
        null = null.detach().to(cond.dtype)
        nulls.append(null[0])
        with torch.no_grad():
            out_uncond = pipe.unet(x, t, null)
            x = ddim.step(out_uncond + guidance_scale * (out_cond - out_uncond), t, x)
    return torch.stack(nulls)
