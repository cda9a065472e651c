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
