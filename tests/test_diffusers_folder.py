"""A diffusers-format folder (as diffusers' save_pretrained writes it) loads into the same model as the
single-file checkpoint it was converted from."""

import pytest
import torch
from diffusers import DDIMScheduler

import minip2p
from minip2p.checkpoint import CheckpointError


def save_folder(tmp_path, models, tokenizer, prediction="epsilon"):
    """What diffusers' save_pretrained writes for the models it read from our single file."""
    folder = tmp_path / "model"
    for name, model in zip(("unet", "vae", "text_encoder"), models):
        model.save_pretrained(folder / name)
    tokenizer.save_pretrained(folder / "tokenizer")
    DDIMScheduler(prediction_type=prediction).save_pretrained(folder / "scheduler")
    return folder


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_folder_equals_single_file(tmp_path, small_ckpt, diffusers_models, family):
    path, _, cfg = small_ckpt[family]
    single = minip2p.load(path)
    folder = minip2p.load(save_folder(tmp_path, diffusers_models[family], single.tokenizer))
    assert folder.config.unet == single.config.unet and folder.config.vae == single.config.vae
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, cfg.unet.context_dim)
    with torch.no_grad():
        assert (folder.unet(x, 100, ctx) - single.unet(x, 100, ctx)).abs().max() < 1e-5
        assert (folder.vae.decode(x) - single.vae.decode(x)).abs().max() < 1e-5
        img = torch.rand(1, 3, 32, 32) * 2 - 1
        assert (folder.vae.encode(img)[0] - single.vae.encode(img)[0]).abs().max() < 1e-5
        prompts = ["a red circle", "a photo of a cat"]
        assert (folder.encode_prompts(prompts) - single.encode_prompts(prompts)).abs().max() < 1e-4
    assert folder.tokenizer.pad_token == single.tokenizer.pad_token


def test_folder_prediction_type_and_errors(tmp_path, diffusers_models, pipe):
    folder = save_folder(tmp_path, diffusers_models["sd1"], pipe.tokenizer, prediction="v_prediction")
    assert minip2p.load(folder).config.prediction == "v"
    for f in (folder / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(CheckpointError, match=r"unet: no \.safetensors weights \(found .*\.bin: a pickle"):
        minip2p.load(folder)
    with pytest.raises(CheckpointError, match=r"empty/unet/config.json not found"):
        (tmp_path / "empty").mkdir()
        minip2p.load(tmp_path / "empty")
