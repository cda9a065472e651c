"""scripts/train_shapes.py end to end in miniature: every phase runs, resumes, is seeded, and its export is a
checkpoint that `minip2p.load` reads like any Stable Diffusion file."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import minip2p

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_shapes.py"
pytestmark = pytest.mark.slow


def train(*args):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def step_of(path):
    return torch.load(path, weights_only=True)["step"]


def test_train_resume_export_load(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train("vae", "--run", a, "--steps", 2, "--batch", 4, "--scenes", 8)
    train("latents", "--run", a, "--scenes", 8)
    b.mkdir()
    for name in ("vae.pt", "latents.safetensors"):
        shutil.copy(a / name, b / name)
    for run in (a, b):
        train("unet", "--run", run, "--steps", 2, "--batch", 4)
    assert step_of(a / "vae.pt") == 2 and step_of(a / "unet.pt") == 2
    train("unet", "--run", a, "--steps", 1, "--batch", 4)  # resumes
    assert step_of(a / "unet.pt") == 3

    train("unet", "--run", b, "--steps", 1, "--batch", 4)
    ua, ub = (torch.load(r / "unet.pt", weights_only=True)["model"] for r in (a, b))
    assert all(torch.equal(ua[k], ub[k]) for k in ua)  # seeded: 2 + 1 steps end equal, bit for bit

    train("export", "--run", a, "--to", a / "model.safetensors")
    keys = load_file(str(a / "model.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    pipe = minip2p.load(a / "model.safetensors")
    assert pipe.config.image_size == 64 and pipe.pixels_per_cell == 4 and pipe.config.vae.scale_factor != 1.0
    ema = torch.load(a / "unet.pt", weights_only=True)[
        "ema_unet"
    ]  # what export writes: the EMA weights, fp16
    assert all(torch.equal(v.half().float(), pipe.unet.state_dict()[k]) for k, v in ema.items())
    image = pipe.generate(["a red circle on a white background"], seed=0, steps=2, progress=False)[0]
    assert image.size == (64, 64)


def test_the_mmdit_trains_resumes_and_exports_an_sd3_file(tmp_path):
    """The MM-DiT phase on the bundled VAE's latents: seeded and resumable as the UNet's (the same runs end
    equal, bit for bit; a resume re-seeds from its step); its export is one of
    our SD3-family files, its MM-DiT the EMA weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    train("latents", "--vae", "bundled", "--run", a, "--scenes", 8)
    b.mkdir()
    shutil.copy(a / "latents.safetensors", b / "latents.safetensors")
    for run in (a, b):
        train("mmdit", "--run", run, "--steps", 2, "--batch", 4)
        train("mmdit", "--run", run, "--steps", 1, "--batch", 4)  # resumes
    ma, mb = (torch.load(r / "mmdit.pt", weights_only=True)["model"] for r in (a, b))
    assert step_of(b / "mmdit.pt") == 3 and all(torch.equal(ma[k], mb[k]) for k in ma)
    train("export", "--arch", "mmdit", "--run", a, "--to", a / "mmdit.safetensors")
    pipe = minip2p.load(a / "mmdit.safetensors")
    assert pipe.config.family == "sd3.5" and pipe.config.text_2 is None and pipe.config.shift == 1.0
    ema = torch.load(a / "mmdit.pt", weights_only=True)["ema"]
    assert all(torch.equal(v.half().float(), pipe.transformer.state_dict()[k]) for k, v in ema.items())
    assert pipe.generate(["a red circle"], seed=0, steps=2, progress=False)[0].size == (64, 64)

    # kept (fp16, no optimiser state: the file committed between sessions), then resumed in a new run folder
    train("keep", "--run", a, "--to", a / "kept.safetensors")
    c = tmp_path / "c"
    c.mkdir()
    shutil.copy(a / "latents.safetensors", c / "latents.safetensors")
    train("mmdit", "--run", c, "--start", a / "kept.safetensors", "--steps", 1, "--batch", 4)
    resumed = torch.load(c / "mmdit.pt", weights_only=True)
    assert resumed["step"] == 4 and resumed["warm_from"] == 3  # counts on; AdamW warms up again
    kept = {k: v.half().float() for k, v in torch.load(a / "mmdit.pt", weights_only=True)["model"].items()}
    moved = [(resumed["model"][k] - v).abs().max().item() for k, v in kept.items()]
    assert max(moved) < 1e-4 and max(moved) > 0  # one warm-up step (lr 6e-4 / 500) from the kept weights
