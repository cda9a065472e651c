"""Shared fixtures: random checkpoints in the real layouts, the models built from them, and diffusers as the
oracle (through its own single-file converters)."""

import sys

import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel

import minip2p
import minip2p_oracle as oracle
from minip2p import TextConfig
from minip2p.cli import main
from minip2p.testing import ldm_config, small_config, write_checkpoint
from minip2p.text import load_tokenizer


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """Small SD1- and SD2-shaped random checkpoints on disk: {family: (path, state_dict, config)}."""
    out = {}
    for seed, family in enumerate(("sd1", "sd2"), start=1):
        cfg = small_config(family)
        path = tmp_path_factory.mktemp(family) / f"small_{family}.safetensors"
        out[family] = (path, write_checkpoint(path, cfg, seed=seed), cfg)
    return out


@pytest.fixture(scope="session")
def sdxl_ckpt(tmp_path_factory):
    """A narrow SDXL-shaped random checkpoint in the SGM layout: (path, state_dict, config)."""
    cfg = small_config("sdxl")
    path = tmp_path_factory.mktemp("sdxl") / "small_sdxl.safetensors"
    return path, write_checkpoint(path, cfg, seed=5), cfg


@pytest.fixture(scope="session")
def sdxl_pipe(sdxl_ckpt):
    """The narrow SDXL (128x128 images, 16x16 latents)."""
    return minip2p.load(sdxl_ckpt[0])


@pytest.fixture(scope="session")
def pipe(small_ckpt):
    """The small random SD1-shaped model (64x64 images, 8x8 latents)."""
    return minip2p.load(small_ckpt["sd1"][0])


@pytest.fixture(scope="session")
def shapes_pipe():
    """The bundled shapes-world model."""
    return minip2p.load()


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(TextConfig.sd1())


@pytest.fixture(scope="session")
def diffusers_models(small_ckpt):
    """{family: (UNet2DConditionModel, AutoencoderKL, CLIPTextModel)}: diffusers' reading of the files."""
    out = {}
    for family, (path, sd, cfg) in small_ckpt.items():
        unet = UNet2DConditionModel.from_single_file(str(path), original_config=ldm_config(cfg))
        vae = AutoencoderKL.from_single_file(str(path), original_config=ldm_config(cfg))
        out[family] = (unet.eval(), vae.eval(), oracle.text_encoder(sd, cfg))
    return out


@pytest.fixture
def cli(capfd):
    """cli(*args) runs the command line in this process -> (exit code, stdout, stderr), the exit message
    included in stderr as the interpreter prints it."""

    def run(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) or e.code is None else 1
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        out = capfd.readouterr()
        return code or 0, out.out, out.err

    return run
