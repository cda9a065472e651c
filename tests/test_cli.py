"""The command line, as a user runs it: each command writes its picture, --help shows every default, and a
mistake is one line that names it (no traceback)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import minip2p
from minip2p import defaults
from minip2p.cli import parser


def test_python_m_minip2p_runs_and_knows_its_version():
    r = subprocess.run([sys.executable, "-m", "minip2p", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"minip2p {minip2p.__version__}"


def test_help_shows_every_default():
    for command in ("generate", "edit", "attention", "demo"):
        sub = parser()._subparsers._group_actions[0].choices[command]
        text = " ".join(sub.format_help().split())  # help wraps lines
        for action in sub._actions:
            if action.default not in (None, False, "==SUPPRESS==") and action.help != "==SUPPRESS==":
                assert f"(default: {action.default})" in text, (command, action.dest)
    edit_help = parser()._subparsers._group_actions[0].choices["edit"].format_help()
    assert f"(default: {defaults.CROSS_REPLACE_STEPS})" in edit_help


def test_generate(small_ckpt, tmp_path, cli):
    out = tmp_path / "out.png"
    code, stdout, _ = cli(
        "generate",
        "--weights",
        small_ckpt["sd1"][0],
        "--prompt",
        "a red circle",
        "--seed",
        1,
        "--steps",
        2,
        "--out",
        out,
        "--quiet",
    )
    assert code == 0 and f"wrote {out}" in stdout and Image.open(out).size == (64, 64)


def test_edit_and_its_caption_name_what_was_done(small_ckpt, tmp_path, cli):
    w = small_ckpt["sd1"][0]
    code, _, err = cli(
        "edit",
        "--weights",
        w,
        "--prompt",
        "a red circle on a white background",
        "--to",
        "a red square on a white background",
        "--blend",
        "circle",
        "square",
        "--reweight",
        "red=2",
        "--steps",
        2,
        "--seed",
        1,
        "--out",
        tmp_path / "edit.png",
    )
    assert code == 0, err
    grid = Image.open(tmp_path / "edit.png")
    assert grid.size[0] == 1024 and grid.size[1] > 512  # two 512-px tiles under their captions
    assert minip2p.cli.edit_label("replace", ["circle", "square"], {"red": 2.0}) == (
        "replace + blend circle square + reweight red=2"
    )
    assert minip2p.cli.edit_label("reweight", None, {"square": -4.0}) == "reweight square=-4"


def test_attention_uses_its_guidance_and_the_finest_maps(small_ckpt, tmp_path, cli):
    w = small_ckpt["sd1"][0]
    pictures = []
    for guidance in (1, 15):
        out = tmp_path / f"maps{guidance}.png"
        code, stdout, err = cli(
            "attention",
            "--weights",
            w,
            "--prompt",
            "a red circle",
            "--steps",
            2,
            "--guidance",
            guidance,
            "--out",
            out,
            "--quiet",
        )
        assert code == 0, err
        assert "cross-attention at 8x8" in stdout  # the 8x8 latent's own size: the finest maps
        pictures.append(np.asarray(Image.open(out)))
    assert pictures[0].shape == pictures[1].shape and not np.array_equal(*pictures)


def test_edit_a_real_image(small_ckpt, tmp_path, cli):
    Image.new("RGB", (80, 64), "white").save(tmp_path / "photo.png")
    code, _, err = cli(
        "edit",
        "--weights",
        small_ckpt["sd1"][0],
        "--image",
        tmp_path / "photo.png",
        "--prompt",
        "a red circle",
        "--to",
        "a blue circle",
        "--invert",
        "negative-prompt",
        "--steps",
        3,
        "--out",
        tmp_path / "e.png",
        "--quiet",
    )
    assert code == 0, err
    assert Image.open(tmp_path / "e.png").size[0] == 3 * 512


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--blend", "dog"],
            "error: LocalBlend: blend word 'dog' is in none of the prompts ('a red circle', 'a blue circle')",
        ),
        (["--reweight", "red"], "error: --reweight 'red': write WORD=SCALE"),
        (["--self-size", "0"], "self_max_fraction"),
        (["--device", "gpu"], "error: device 'gpu' is not a device name"),
        (["--out", "edit.txt"], "error: edit.txt: give a file name ending in .png"),
        (["--weights", "missing.safetensors"], "error: checkpoint not found: missing.safetensors"),
        # the edit's words are checked before the (slow) inversion of --image: here before the image is read
        (["--image", "missing.png", "--blend", "dog"], "error: LocalBlend: blend word 'dog'"),
        (["--to", "cat " * 80], "error: prompt has 82 tokens, more than the 77"),
    ],
)
def test_edit_mistakes_are_one_line(small_ckpt, tmp_path, monkeypatch, cli, args, message):
    monkeypatch.chdir(tmp_path)
    options = {"--prompt": "a red circle", "--to": "a blue circle", "--weights": str(small_ckpt["sd1"][0])}
    options.update(zip(args[::2], args[1::2]))
    code, _, err = cli("edit", "--steps", "1", *[x for kv in options.items() for x in kv])
    assert code != 0 and message in err and "Traceback" not in err and "Token indices" not in err, err
    assert err.strip().count("\n") == 0, err
    assert not (tmp_path / "edit.png").exists()


def test_an_unavailable_device_on_the_command_line(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "minip2p",
            "generate",
            "--prompt",
            "x",
            "--device",
            f"cuda:{torch.cuda.device_count()}",  # one past the last GPU, on any machine
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
    )
    device = f"cuda:{torch.cuda.device_count()}"
    assert r.returncode != 0 and r.stderr.startswith(f"error: device '{device}' is not available"), r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("weights", [[], ["--weights", "shapes-mmdit"]])
def test_demo_writes_its_grid(tmp_path, cli, weights):
    code, stdout, err = cli("demo", *weights, "--steps", 2, "--out", tmp_path / "demo.png")
    assert code == 0, err
    assert "4 Prompt-to-Prompt edits of 2 source images" in stdout
    assert Image.open(tmp_path / "demo.png").size[0] == 6 * 384
    assert "sampling" in err  # progress is on by default
