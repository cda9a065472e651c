"""Scores of one edit (a source image and its edited image), for sweeps and their filters.

- In the shapes world (the bundled model), the analyser knows the truth: does each image show its prompt, did
  the edited object take the new attribute, did the other object keep its mask, the background its colour,
  and how much changed outside the edited object.
- On any model, with a local CLIP model (a transformers CLIPModel folder; nothing is downloaded): the
  image-text similarity of each image with its prompt, the image-image similarity of the two, and the
  directional similarity that InstructPix2Pix filters its training pairs on: the cosine between the change in
  image embedding and the change in text embedding (Gal et al. 2021, StyleGAN-NADA; Brooks et al. 2023).
- `keep` filters ("clip_dir>=0.2,clip_img>=0.75") mark the edits that pass.
"""

import math
import operator
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from . import shapes
from .evaluation import edit_scores, shows

SHAPES_METRICS = ("source_shows", "target_shows", "edited", "moved", "kept_iou", "background", "outside")
CLIP_METRICS = ("clip_source", "clip_target", "clip_img", "clip_dir")
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def edited_object(source: str, target: str) -> int | None:
    """The index of the one object whose colour or shape the target changes, else None (shapes prompts)."""
    s, t = shapes.parse(source), shapes.parse(target)
    if len(s.objects) != len(t.objects):
        return None
    changed = [k for k, (a, b) in enumerate(zip(s.objects, t.objects)) if a != b]
    return changed[0] if len(changed) == 1 else None


def shapes_metrics(source_image, edited_image, source: str, target: str) -> dict:
    """The analyser's scores (SHAPES_METRICS; None where they do not apply: a prompt outside the shapes world,
    an edit of no single object, or a source image that does not show its prompt)."""
    out = dict.fromkeys(SHAPES_METRICS)
    try:
        s_spec, t_spec = shapes.parse(source), shapes.parse(target)
    except ValueError:
        return out
    out["source_shows"] = float(shows(source_image, s_spec)["all"])
    out["target_shows"] = float(shows(edited_image, t_spec)["all"])
    k = edited_object(source, target)
    scores = None if k is None else edit_scores(source_image, edited_image, source, target, k)
    if scores is not None:
        out.update({name: scores[name] for name in ("edited", "kept_iou", "background", "outside")})
        out["moved"] = None if math.isnan(scores["moved"]) else scores["moved"]  # NaN: not found
    return out


def check_clip(path) -> Path:
    """A local CLIP model folder, checked before any work."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--clip {path}: not a CLIP model folder (no config.json); give a folder saved by transformers' "
            "CLIPModel.save_pretrained, with its processor"
        )
    return path


class ClipScorer:
    """A local transformers CLIPModel folder -> CLIP_METRICS of an edit."""

    def __init__(self, path, device="cpu"):
        from transformers import CLIPModel, CLIPProcessor  # only when asked: loading CLIP is slow

        path = check_clip(path)
        try:
            self.model = CLIPModel.from_pretrained(str(path)).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(str(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--clip {path}: cannot load a CLIPModel and its processor ({e})") from None
        self.device = device

    @torch.no_grad()
    def __call__(self, source_image, edited_image, source: str, target: str) -> dict:
        inputs = self.processor(
            text=[source, target], images=[source_image, edited_image], return_tensors="pt", padding=True
        ).to(self.device)
        out = self.model(**inputs)  # CLIPModel's embeddings, projected (the same in transformers 4 and 5)
        images, texts = F.normalize(out.image_embeds, dim=-1), F.normalize(out.text_embeds, dim=-1)
        direction = F.cosine_similarity(images[1] - images[0], texts[1] - texts[0], dim=0)
        return {
            "clip_source": float(images[0] @ texts[0]),
            "clip_target": float(images[1] @ texts[1]),
            "clip_img": float(images[0] @ images[1]),
            "clip_dir": float(direction),
        }


def parse_keep(text: str | None, available) -> list:
    """ "clip_dir>=0.2,clip_img>=0.75" -> [(metric, operator, value)], each metric among `available` (the ones
    this sweep computes); one line naming the bad condition otherwise."""
    if text is None:
        return []
    conditions = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([a-z_]+)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*", part)
        if not m:
            raise ValueError(f"--keep {part.strip()!r}: write a condition as metric>=value (or <=, >, <, ==)")
        name, op, value = m.groups()
        if name not in available:
            raise ValueError(
                f"--keep {part.strip()!r}: this sweep computes no {name!r}; it computes "
                f"{', '.join(available) or 'no metrics'}"
            )
        try:
            value = float(value)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"--keep {part.strip()!r}: {value!r} is not a finite number")
        conditions.append((name, op, value))
    return conditions


def kept(metrics: dict, conditions: list) -> bool | None:
    """Does an edit pass every condition (a metric that does not apply fails it)? None without conditions."""
    if not conditions:
        return None
    return all(
        metrics.get(name) is not None and bool(OPERATORS[op](metrics[name], value))
        for name, op, value in conditions
    )
