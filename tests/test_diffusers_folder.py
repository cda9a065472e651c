"""A diffusers-format folder (as diffusers' save_pretrained writes it) loads into the same model as the
single-file checkpoint it was converted from."""

import json
import os

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


def edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


TAMPERED = [  # (file, what is written, what the one line must say)
    (
        "unet/config.json",
        dict(down_block_types=["DownBlock2D"] * 200_000),
        "down_block_types must be a list of 1",
    ),
    ("unet/config.json", dict(attention_head_dim=1_000_000_000), "do not divide the widths"),
    ("unet/config.json", dict(attention_head_dim=[0, 1]), "a positive count per level"),
    ("unet/config.json", "[" * 100_000, "nested too deep"),
    ("unet/config.json", '{"in_channels": 4, "in_channels": 4}', "given twice"),
    ("scheduler/scheduler_config.json", "{not json", "scheduler_config.json: not JSON"),
    ("model_index.json", b"\xff\xfe", "model_index.json is not UTF-8"),
    ("model_index.json", dict(force_zeros_for_empty_prompt="false"), "must be true or false"),
]


@pytest.mark.parametrize("name, written, says", TAMPERED, ids=range(len(TAMPERED)))
def test_a_tampered_folder_is_one_line_naming_its_file(tmp_path, diffusers_models, pipe, name, written, says):
    folder = save_folder(tmp_path, diffusers_models["sd1"], pipe.tokenizer)
    path = folder / name
    if isinstance(written, dict):
        if not path.exists():
            path.write_text("{}")
        edit_json(path, **written)
    elif isinstance(written, bytes):
        path.write_bytes(written)
    else:
        path.write_text(written)
    with pytest.raises(CheckpointError) as e:
        minip2p.load(folder)
    message = str(e.value)
    assert says in message and len(message.splitlines()) == 1 and len(message) < 400, message


def test_heads_are_read_from_the_levels_with_attention(tmp_path, diffusers_models, pipe):
    """SDXL's first level has no attention: its head count says nothing (diffusers ignores it)."""
    folder = save_folder(tmp_path, diffusers_models["sd1"], pipe.tokenizer)
    config = json.loads((folder / "unet" / "config.json").read_text())
    widths, kinds = config["block_out_channels"], config["down_block_types"]
    heads = minip2p.load(folder).config.unet.heads(widths[-1])
    config["down_block_types"] = ["DownBlock2D"] + kinds[1:]
    config["up_block_types"] = config["up_block_types"][:-1] + ["UpBlock2D"]
    config["attention_head_dim"] = [widths[0] // 2 + 1] + [w * heads // widths[-1] for w in widths[1:]]
    from minip2p.diffusers_folder import head_layout

    assert head_layout(config, widths) == (8, widths[-1] // heads)


def test_a_fifo_in_a_folder_is_refused(tmp_path, diffusers_models, pipe):
    folder = save_folder(tmp_path, diffusers_models["sd1"], pipe.tokenizer)
    os.mkfifo(folder / "unet" / "extra.safetensors")
    with pytest.raises(CheckpointError, match="extra.safetensors is not a regular file"):
        minip2p.load(folder)
    (folder / "unet" / "extra.safetensors").unlink()
    (folder / "unet" / "config.json").rename(folder / "unet" / "c.json")
    os.mkfifo(folder / "unet" / "config.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        minip2p.load(folder)
