"""Bad input, as a careless or hostile user gives it: every case ends in one line that names the file, word or
value, before anything large is allocated, and nothing is written. Table-driven; the fuzzed cases are in
test_fuzz.py."""

import ast
import json
import os
import shlex
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import minip2p
from minip2p import LocalBlend, Replace, Reweight
from minip2p.checkpoint import META_KEY, CheckpointError
from minip2p.ddim import DDIM
from minip2p.testing import small_config

P = ["a red circle", "a blue circle"]


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


# ---- checkpoints


def tiny_file(path, config: dict, tensors=None):
    """A few-byte .safetensors whose metadata says what it likes."""
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata={META_KEY: json.dumps(config)})
    return path


def config_with(**changes):
    d = json.loads(small_config("sd1").to_json())
    for key, value in changes.items():
        part, _, name = key.partition("__")
        if name:
            d[part][name] = value
        elif value is None:
            d.pop(part)
        else:
            d[part] = value
    return d


@pytest.mark.parametrize(
    "config, message",
    [
        (
            config_with(text__hidden_size=65536, text__num_layers=64),
            "text.hidden_size must be between 1 and 16384",
        ),
        (config_with(image_size=100000), "image_size must be a multiple of 64 up to 8192"),
        (config_with(unet__model_channels=0), "unet.model_channels must be between 1"),
        (
            config_with(unet__channel_mult=[1, 2, 4, 4, 4, 4, 4, 4, 4]),
            "unet.channel_mult must be a list of 1 to 8",
        ),
        (config_with(vae__scale_factor=float("nan")), "vae.scale_factor must be a positive finite number"),
        (config_with(unet__num_heads=5), "unet.num_heads 5 must divide every width"),
        (config_with(vae=None), "is not a minip2p model config (KeyError: 'vae')"),
        (config_with(unet__bogus=1), "unknown unet fields ['bogus']"),
        (config_with(text__hidden_act="relu6"), "text.hidden_act must be quick_gelu or gelu"),
        (config_with(prediction="x0"), "prediction 'x0'"),
    ],
)
def test_a_config_that_lies_is_refused_before_anything_is_built(tmp_path, config, message):
    path = tiny_file(tmp_path / "m.safetensors", config)
    with pytest.raises(CheckpointError) as e:
        minip2p.load(path)
    assert message in str(e.value) and str(path) in str(e.value) and one_line(str(e.value)), str(e.value)


def test_metadata_that_is_not_json(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "m.safetensors"), metadata={META_KEY: "{not json"})
    with pytest.raises(
        CheckpointError, match=r"m\.safetensors .* is not a minip2p model config \(JSONDecodeError"
    ):
        minip2p.load(tmp_path / "m.safetensors")


def test_a_huge_header_stops_at_once(tmp_path):
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(CheckpointError, match=r"h\.safetensors is not a readable \.safetensors file"):
        minip2p.load(tmp_path / "h.safetensors")


@pytest.mark.parametrize("kind", ["int8", "nan", "inf"])
def test_weights_that_are_not_finite_floats(tmp_path, small_ckpt, kind):
    _, sd, cfg = small_ckpt["sd1"]
    key = "model.diffusion_model.out.2.weight"
    bad = dict(sd)
    if kind == "int8":
        bad[key] = sd[key].to(torch.int8)
    else:
        bad[key] = sd[key].clone()
        bad[key][0, 0, 0, 0] = float(kind)
    save_file(bad, str(tmp_path / "w.safetensors"), metadata={META_KEY: cfg.to_json()})
    expected = "holds torch.int8 values" if kind == "int8" else "holds NaN or infinite values"
    with pytest.raises(CheckpointError, match=f"w.safetensors: {key} {expected}"):
        minip2p.load(tmp_path / "w.safetensors")


def test_links_fifos_and_folders_in_place_of_a_checkpoint(tmp_path):
    (tmp_path / "loop.safetensors").symlink_to(tmp_path / "loop.safetensors")
    with pytest.raises(FileNotFoundError, match="is a symbolic link to nothing"):
        minip2p.load(tmp_path / "loop.safetensors")
    os.mkfifo(tmp_path / "fifo.safetensors")
    with pytest.raises(CheckpointError, match="is not a regular file"):
        minip2p.load(tmp_path / "fifo.safetensors")  # would block forever on open
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="config.json not found"):
        minip2p.load(tmp_path / "folder")


def test_the_pickle_hint_cannot_be_turned_into_code(tmp_path):
    name = "'+str(__import__('os').system('touch INJECTED'))+'.CKPT"  # and upper case is still a pickle
    path = tmp_path / name
    path.write_bytes(b"not loaded anyway")
    with pytest.raises(CheckpointError) as e:
        minip2p.load(path)
    command = str(e.value).splitlines()[-1].strip()
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    load_call = next(
        n for n in ast.walk(ast.parse(argv[2])) if isinstance(n, ast.Call) and "load" in ast.unparse(n)
    )
    assert ast.literal_eval(load_call.args[0]) == str(path)  # a string literal: the path, nothing run


@pytest.mark.parametrize(
    "change, message",
    [
        ({"block_out_channels": [0, 0, 0, 0]}, "block_out_channels must be positive"),
        ({"cross_attention_dim": None}, "unet.context_dim must be a whole number, not None"),
        ("drop in_channels", "lacks the field 'in_channels'"),
    ],
)
def test_a_diffusers_folder_with_bad_configs(tmp_path, change, message):
    folder = tmp_path / "model"
    configs = {
        "unet": {
            "block_out_channels": [32, 64, 128, 128],
            "layers_per_block": 2,
            "attention_head_dim": 4,
            "in_channels": 4,
            "out_channels": 4,
            "cross_attention_dim": 64,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        },
        "vae": {"block_out_channels": [32, 64, 128, 128], "layers_per_block": 2, "latent_channels": 4},
        "text_encoder": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "hidden_act": "quick_gelu",
            "vocab_size": 49408,
            "max_position_embeddings": 77,
        },
    }
    if change == "drop in_channels":
        del configs["unet"]["in_channels"]
    else:
        configs["unet"].update(change)
    for part, config in configs.items():
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        minip2p.load(folder)
    assert message in str(e.value) and one_line(str(e.value)), str(e.value)


# ---- numbers


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(guidance_scale=float("nan")), "guidance must be a finite number"),
        (dict(guidance_scale=float("inf")), "guidance must be a finite number"),
        (dict(steps=0), "steps must be between 1 and 1000, not 0"),
        (dict(steps=2.5), "steps must be a whole number"),
        (dict(steps=1001), "steps must be between 1 and 1000"),
        (dict(height=0), "height must be >= 1, not 0"),
        (dict(height=72), "height=72: image sizes must be positive multiples of 64"),
        (dict(width=320), "width=320 is more than 256, 4x this model's 64 px; pass max_size=320"),
        (dict(seed=-1), "seed must be between 0 and 4294967295, not -1"),
        (dict(seed=2**32), "seed must be between 0 and 4294967295"),
        (dict(seed=2**64 - 1), "seed must be between 0 and 4294967295"),
        (dict(seed=1.5), "seed must be a whole number"),
        (dict(eta=float("nan")), "eta must be a finite number"),
        (dict(eta=2), "eta must be in [0, 1], not 2"),
        (dict(latents=torch.full((1, 4, 8, 8), float("nan"))), "latents hold NaN or infinite values"),
        (dict(prompts=None), "give a prompt, or a list of prompts"),
        (dict(prompts=["x" * 50_000]), "(50000 characters)"),
        (dict(guidance_scale=1e30, steps=2), "sampling gave NaN or infinite latents at step 2 of 2"),
    ],
)
def test_sampling_numbers(pipe, options, message):
    options = {"prompts": ["a red circle"], "steps": 1, "progress": False, "seed": 0, **options}
    with pytest.raises(ValueError) as e:
        pipe.sample(options.pop("prompts"), **options)
    assert message in str(e.value) and one_line(str(e.value)) and len(str(e.value)) < 400, str(e.value)


def test_what_used_to_fail_now_works(pipe):
    big = pipe.sample(["a red circle"], steps=1, seed=1, width=320, max_size=320, progress=False)
    assert big.shape[-1] == 40  # past 4x, asked for explicitly
    x = torch.randn(1, 4, 8, 8)
    ddim = DDIM(1000, 1)  # the 1000-step schedule starts at t = 1000, one past the table
    assert torch.isfinite(ddim.step(torch.randn_like(x), ddim.timesteps[0], x)[0]).all()
    a = pipe.sample(["a red circle"], steps=1, seed=2**32 - 1, progress=False)
    b = pipe.sample(["a red circle"], steps=1, seed=0, progress=False)
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: LocalBlend(["circle", "circle"], threshold=-1), r"threshold must be in \[0, 1\], not -1"),
        (lambda t: LocalBlend(["circle", "circle"], threshold=2), r"threshold must be in \[0, 1\], not 2"),
        (
            lambda t: LocalBlend(["circle", "circle"], start_blend=5),
            r"start_blend must be in \[0, 1\], not 5",
        ),
        (
            lambda t: LocalBlend(["circle", "circle"], mask=np.ones((2, 4, 4))),
            "a 2-D \\(height, width\\) array",
        ),
        (lambda t: LocalBlend(["circle", "circle"], mask=np.full((4, 4), 2.0)), r"values in \[0, 1\]"),
        (lambda t: Replace(P, t, cross_replace_steps=float("nan")), "cross_replace_steps must be a fraction"),
        (lambda t: Replace(P, t, self_max_fraction="all"), "self_max_fraction must be a finite number"),
        (
            lambda t: Reweight(P, t, {"blue": float("inf")}),
            "Reweight scale of .blue. must be a finite number",
        ),
        (lambda t: minip2p.make_edit(*P, t, blend=[1]), "takes a word or a list of words"),
    ],
)
def test_edit_settings(tokenizer, make, message):
    with pytest.raises(ValueError, match=message):
        make(tokenizer)


def test_a_blend_word_of_the_source_only_blends_on_the_source_region(tokenizer):
    edit = minip2p.make_edit("a red circle", "a red square", tokenizer, blend=["circle"])
    lb = edit.local_blend
    assert lb.alpha[0].sum() == 1 and lb.alpha[1].sum() == 0  # not token 0 ("a") of the target


# ---- outputs and the command line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "error: steps must be between 1 and 1000, not 0"),
        (["--guidance", "nan"], "error: guidance must be a finite number, not nan"),
        (["--seed", "-1"], "error: seed must be between 0 and 4294967295, not -1"),
        (["--height", "1024"], "error: height=1024 is more than 256"),
        (["--device", "bogus"], "error: device 'bogus' is not a device name"),
        (["--out", "SUBDIR"], "SUBDIR is a folder"),
        (["--out", "FILE/out.png"], "the folder"),
        (["--out", "LINK.png"], "LINK.png is a symbolic link"),
        (["--out", "out.gif"], "give a file name ending in .png"),
    ],
)
def test_generate_mistakes(small_ckpt, tmp_path, monkeypatch, cli, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "SUBDIR").mkdir()
    (tmp_path / "FILE").write_text("a file")
    (tmp_path / "target.png").write_bytes(b"precious")
    (tmp_path / "LINK.png").symlink_to(tmp_path / "target.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    options = {"--weights": str(small_ckpt["sd1"][0]), "--prompt": "a red circle", "--out": "out.png"}
    options.update(zip(args[::2], args[1::2]))
    code, _, err = cli("generate", "--steps", "1", "--quiet", *[x for kv in options.items() for x in kv])
    assert code != 0 and message in err and one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert (tmp_path / "target.png").read_bytes() == b"precious"


def test_attention_res_is_checked_before_the_generation(small_ckpt, tmp_path, monkeypatch, cli):
    def no_generation(*a, **k):
        raise AssertionError("generated before checking --res")

    monkeypatch.setattr(minip2p.Pipeline, "generate", no_generation)
    for res in ("0", "5"):
        weights, out = small_ckpt["sd1"][0], tmp_path / "m.png"
        code, _, err = cli(
            "attention", "--weights", weights, "--prompt", "a red circle", "--res", res, "--out", out
        )
        assert code != 0 and "this model's cross-attention maps are [1, 2, 4, 8] cells wide" in err, err


def test_ctrl_c_says_nothing_was_written(small_ckpt, tmp_path, monkeypatch, cli):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(minip2p.Pipeline, "sample", interrupted)
    code, _, err = cli(
        "generate", "--weights", small_ckpt["sd1"][0], "--prompt", "x", "--out", tmp_path / "o.png"
    )
    assert code == 130 and err.strip() == "interrupted, nothing written" and not list(tmp_path.iterdir())


def test_a_full_disk_leaves_the_old_file_and_no_half_written_one(small_ckpt, tmp_path):
    """The write fails part-way (a 1 kB file size limit, as `ulimit -f 1`): one line, the file that was
    there is intact, no temporary file is left."""
    out = tmp_path / "out.png"
    out.write_bytes(b"the good old picture")
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
        "from minip2p.cli import main; main(sys.argv[1:])"
    )
    argv = [
        "generate",
        "--weights",
        str(small_ckpt["sd1"][0]),
        "--prompt",
        "a red circle",
        "--steps",
        "1",
        "--quiet",
        "--width",
        "256",
        "--height",
        "256",
        "--out",
        str(out),
    ]
    r = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith("error:") and one_line(r.stderr), r.stderr
    assert out.read_bytes() == b"the good old picture" and [p.name for p in tmp_path.iterdir()] == ["out.png"]
