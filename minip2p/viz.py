"""Pictures of images and attention maps, with PIL only."""
import numpy as np
import torch
from PIL import Image, ImageDraw


def image_grid(images, captions=None, min_size=256, caption_height=14, columns=None):
    """Images in a grid (one row unless `columns`), each with an optional caption strip above it; small images are
    enlarged (nearest neighbour) to at least min_size so captions fit."""
    k = max(1, -(-min_size // images[0].size[0]))
    images = [im.convert("RGB").resize((im.size[0] * k, im.size[1] * k), Image.NEAREST) for im in images]
    w, h = images[0].size
    top = caption_height if captions else 0
    cols = columns or len(images)
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (w * cols, (h + top) * rows), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + top)
        grid.paste(im, (x, y + top))
        if captions:
            draw.text((x + 2, y + 1), str(captions[i]), fill="black")
    return grid


def heatmap(m, size, image=None):
    """A 2-D map -> RGB PIL image of `size`, normalised to its max; blended over `image` if given."""
    m = m.float().cpu()
    m = (m / m.max().clamp(min=1e-12)).numpy()
    rgb = np.stack([m, m * 0.6, 1 - m], -1)  # blue (low) to orange (high)
    tile = Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    return Image.blend(image.convert("RGB").resize(size), tile, 0.6) if image is not None else tile


def cross_attention_grid(store, prompt, res, tokenizer, index=0, image=None, places=("down", "mid", "up"),
                         tile=128):
    """One captioned tile per token of `prompt` (start and end tokens included): where each token looks, the mean
    cross-attention map at resolution `res` of prompt number `index` in the batch the store watched."""
    maps = store.aggregate(res, places, True)[index]  # (res, res', 77)
    ids = tokenizer(prompt).input_ids
    words = [tokenizer.decode([t]).strip() or "<pad>" for t in ids]
    words[0], words[-1] = "<start>", "<end>"
    tiles = [heatmap(maps[..., i], (tile, tile), image) for i in range(len(ids))]
    return image_grid(tiles, words, min_size=tile)


def self_attention_components(store, res, n=10, index=0, places=("down", "mid", "up"), tile=128):
    """The top n principal components (SVD) of the mean self-attention map at resolution `res`: the image regions
    that attend alike."""
    maps = store.aggregate(res, places, False)[index]  # (h, w, h*w)
    h, w = maps.shape[:2]
    m = maps.reshape(h * w, h * w).float()
    u, s, vt = torch.linalg.svd(m - m.mean(0, keepdim=True))
    tiles = [heatmap((vt[i] - vt[i].min()).reshape(h, w), (tile, tile)) for i in range(min(n, vt.shape[0]))]
    return image_grid(tiles, [f"component {i}" for i in range(len(tiles))], min_size=tile)
