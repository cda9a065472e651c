"""Pictures of images and attention maps, with PIL only."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .align import token_ids


def font_for(width: int) -> ImageFont.ImageFont:
    """A caption font sized to a tile: about 1/24 of its width, at least 11 px."""
    return ImageFont.load_default(size=max(11, width // 24))


def wrap(text: str, font, width: int) -> list:
    """Words of `text` in lines that fit `width` pixels (a word longer than a line gets a line of its own)."""
    lines = []
    for word in str(text).split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def image_grid(images, captions=None, min_size: int = 256, columns: int | None = None) -> Image.Image:
    """Images in a grid (one row unless `columns`), each under a caption sized to the tile and wrapped to its
    width; small images are enlarged (nearest neighbour) to at least min_size."""
    k = max(1, -(-min_size // images[0].size[0]))
    images = [im.convert("RGB").resize((im.size[0] * k, im.size[1] * k), Image.NEAREST) for im in images]
    w, h = images[0].size
    font = font_for(w)
    line = font.getbbox("Hg")[3] + 4
    lines = [wrap(c, font, w - 8) for c in captions] if captions else []
    top = max(map(len, lines)) * line + 4 if lines else 0
    cols = columns or len(images)
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (w * cols, (h + top) * rows), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + top)
        grid.paste(im, (x, y + top))
        for j, text in enumerate(lines[i] if lines else []):
            draw.text((x + 4, y + 2 + j * line), text, fill="black", font=font)
    return grid


def colours(m: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB in [0, 1]: blue (0) to orange (1)."""
    return np.stack([m, m * 0.6, 1 - m], -1)


def heatmap(m: torch.Tensor, size: tuple, image: Image.Image | None = None) -> Image.Image:
    """A 2-D map -> RGB PIL image of `size`, normalised to its max; blended over `image` if given."""
    m = m.float().cpu()
    m = (m / m.max().clamp(min=1e-12)).numpy()
    tile = Image.fromarray((colours(m) * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    return Image.blend(image.convert("RGB").resize(size), tile, 0.6) if image is not None else tile


def colour_scale(width: int, label: str, font) -> Image.Image:
    """A horizontal colour bar from 0 to 1 of the heatmaps' colours, with its ends and what they mean."""
    bar_h, text_h = max(8, width // 64), font.getbbox("Hg")[3] + 4
    bar = (colours(np.linspace(0, 1, width - 8)[None].repeat(bar_h, 0)) * 255).astype(np.uint8)
    out = Image.new("RGB", (width, bar_h + text_h + 6), "white")
    out.paste(Image.fromarray(bar), (4, 2))
    draw = ImageDraw.Draw(out)
    draw.text((4, bar_h + 4), "0", fill="black", font=font)
    draw.text((width // 2, bar_h + 4), label, fill="black", font=font, anchor="ma")
    draw.text((width - 4, bar_h + 4), "1", fill="black", font=font, anchor="ra")
    return out


def with_scale(picture: Image.Image, label: str, tile: int) -> Image.Image:
    scale = colour_scale(picture.size[0], label, font_for(tile))
    out = Image.new("RGB", (picture.size[0], picture.size[1] + scale.size[1]), "white")
    out.paste(picture, (0, 0))
    out.paste(scale, (0, picture.size[1]))
    return out


def cross_attention_grid(
    store,
    prompt: str,
    res: int,
    tokenizer,
    index: int = 0,
    image=None,
    places=None,
    tile=128,
    part=None,
) -> Image.Image:
    """One tile per token of `prompt` (start and end tokens included), captioned with its word: where each
    token looks, the mean cross-attention map at resolution `res` of prompt number `index` in the batch the
    store watched, each tile scaled to its own maximum (the colour bar below). places: None (all), or
    `Place.where` names and MM-DiT block numbers; part="text->image" (MM-DiT): where each token is looked
    at from, the other direction of joint attention."""
    maps = store.aggregate(res, places, True, part)[index]  # (res, res', 77)
    ids = token_ids(tokenizer, prompt)
    words = ["<start>"] + [tokenizer.decode([t]).strip() for t in ids[1:-1]] + ["<end>"]
    tiles = [heatmap(maps[..., i], (tile, tile), image) for i in range(len(ids))]
    grid = image_grid(tiles, words, min_size=tile)
    return with_scale(grid, f"attention, as a share of each tile's maximum ({res}x{res} maps)", tile)


def self_attention_components(store, res: int, n: int = 10, index: int = 0, places=None, tile=128):
    """The top n principal components (SVD) of the mean self-attention map at resolution `res`: the image
    regions that attend alike."""
    maps = store.aggregate(res, places, False)[index]  # (h, w, h*w)
    h, w = maps.shape[:2]
    m = maps.reshape(h * w, h * w).float()
    _, _, vt = torch.linalg.svd(m - m.mean(0, keepdim=True))
    tiles = [heatmap((vt[i] - vt[i].min()).reshape(h, w), (tile, tile)) for i in range(min(n, vt.shape[0]))]
    return image_grid(tiles, [f"component {i}" for i in range(len(tiles))], min_size=tile)
