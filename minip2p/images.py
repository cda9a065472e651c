"""Images in and out: reading a user's picture, and the one conversion between pixels and the model's tensors.

The VAE works on (B, 3, H, W) tensors in [-1, 1]; users have PIL images or uint8 arrays (H, W, 3) in 0..255.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .checks import check_whole


def to_tensor(images) -> torch.Tensor:
    """A PIL image, a uint8 array (H, W, 3), or a list / stacked array of them -> (B, 3, H, W) float32 in [-1,
    1]."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        images = np.stack(
            [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in images]
        )
    x = np.asarray(images, dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    return torch.from_numpy(x / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 array (B, H, W, 3), rounded as a saved image is."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [-1, 1] -> a list of PIL images."""
    return [Image.fromarray(np.ascontiguousarray(a)) for a in to_uint8(images)]


def open_image(path: Path) -> Image.Image:
    """Read an image file, with one line naming it for anything amiss (a FIFO or a folder is not read: it
    would hang or fail deep in PIL)."""
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file: give a PNG, JPEG or WebP image")
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError:
        raise ValueError(
            f"{path} is too large ({Image.MAX_IMAGE_PIXELS} pixels at most): make it smaller"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image ({e}); give a PNG, JPEG or WebP file") from None
    return image


def load_image(image, size: int, crop=(0, 0, 0, 0)) -> Image.Image:
    """A path or PIL image -> RGB PIL image of size x size: EXIF orientation applied, any mode converted
    (16-bit scaled, transparency composited on white), `crop` = pixels cut from (left, right, top, bottom),
    then a centre crop to a square and a resize."""
    check_whole(size, "size")
    if not isinstance(crop, (tuple, list)) or len(crop) != 4:
        raise ValueError(f"crop must be four pixel counts (left, right, top, bottom), not {crop!r}")
    crop = tuple(check_whole(c, "each crop", 0) for c in crop)
    if not isinstance(image, (Image.Image, str, Path)):
        raise ValueError(
            f"image must be a file path, a PIL image or a (1, 3, H, W) tensor, not {type(image).__name__} "
            "(a numpy array: PIL.Image.fromarray(array))"
        )
    if not isinstance(image, Image.Image):
        image = open_image(Path(image))
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
