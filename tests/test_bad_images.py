"""Bad images and inversions: each is one line that names the file or value and the fix, before any work (the
rest of the bad-input table: tests/test_bad_input.py)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import minip2p
from minip2p import Inversion
from minip2p.images import load_image
from minip2p.testing import small_config, write_checkpoint

# ---- images and inversions


def test_images_that_cannot_be_read(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*cut\.png as an image"):
        load_image(tmp_path / "cut.png", 64)
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(ValueError, match=r"fifo\.png is not a regular file"):
        load_image(tmp_path / "fifo.png", 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 is then a decompression bomb
    with pytest.raises(ValueError, match=r"ok\.png is too large"):
        load_image(tmp_path / "ok.png", 64)
    for crop in [(float("nan"), 0, 0, 0), (-1, 0, 0, 0), (0, 0, 0)]:
        with pytest.raises(ValueError, match="crop"):
            load_image(Image.new("RGB", (8, 8)), 8, crop=crop)


def test_invert_refuses_tensors_that_are_not_images(pipe):
    for bad in (
        torch.zeros(1, 1, 64, 64),
        torch.zeros(3, 64, 64),
        torch.zeros(1, 3, 64, 64, dtype=torch.long),
    ):
        with pytest.raises(ValueError, match="give the image as a path, a PIL image or a"):
            pipe.invert(bad, "a red circle", method="ddim", steps=2, progress=False)
    for bad in (np.zeros((64, 64, 3), np.uint8), 3, None):
        with pytest.raises(
            ValueError, match=r"^image must be a file path, a PIL image or a \(1, 3, H, W\) tensor"
        ):
            pipe.invert(bad, "a red circle", method="ddim", steps=2, progress=False)


@pytest.fixture(scope="module")
def inversion(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "inv.safetensors"
    image = torch.zeros(1, 3, 64, 64)
    pipe.invert(image, "a red circle", method="negative-prompt", steps=2, progress=False).save(path)
    return path


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t, m: (t.pop("latent"), m), "lacks or garbles 'latent'"),
        (lambda t, m: (t["null_embeddings"].fill_(float("nan")), m), "holds NaN or infinite values"),
        (lambda t, m: (t, {**m, "method": "magic"}), "unknown method 'magic'"),
        (lambda t, m: (t, {**m, "guidance_scale": "nan"}), "guidance_scale must be a finite number"),
        (lambda t, m: (t.__setitem__("latent", torch.zeros(4, 8)), m), "are not an inversion's"),
        (lambda t, m: (t, None), "no minip2p_inversion metadata"),
    ],
)
def test_inversion_files_are_checked_whole(inversion, tmp_path, damage, message):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(inversion))
    with safe_open(str(inversion), "pt") as f:
        meta = json.loads(f.metadata()["minip2p_inversion"])
    _, meta = damage(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=None if meta is None else {"minip2p_inversion": json.dumps(meta)})
    with pytest.raises(ValueError) as e:
        Inversion.load(bad)
    assert message in str(e.value) and "bad.safetensors" in str(e.value) and "\n" not in str(e.value), str(
        e.value
    )


def test_an_inversion_is_used_only_with_its_prompt_and_model(pipe, small_ckpt, inversion, tmp_path):
    inv = Inversion.load(inversion)
    with pytest.raises(ValueError, match="the first prompt must be the one the image was inverted with"):
        pipe.generate(["a blue square"], inversion=inv, progress=False)
    other = tmp_path / "other.safetensors"
    write_checkpoint(other, small_config("sd1"), seed=9)
    with pytest.raises(ValueError, match="made with another model"):
        minip2p.load(other).generate(["a red circle"], inversion=inv, progress=False)
    sd2 = minip2p.load(small_ckpt["sd2"][0])
    with pytest.raises(ValueError, match="another model|another kind of model"):
        sd2.generate(["a red circle"], inversion=inv, progress=False)
