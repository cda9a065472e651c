"""minip2p.load: what it reads, what it ignores, and the errors it gives for bad files (before building
anything)."""

import json
from importlib.resources import files

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import minip2p
from minip2p.checkpoint import META_KEY, UNET_PREFIX, CheckpointError
from minip2p.config import ModelConfig


def resave(sd, cfg, path, change):
    sd = dict(sd)
    change(sd)
    save_file(sd, str(path), metadata={META_KEY: cfg.to_json()})
    return path


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        minip2p.load(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path):
    (tmp_path / "x.safetensors").write_text("hello, I am text")
    with pytest.raises(CheckpointError, match=r"x\.safetensors is not a readable \.safetensors"):
        minip2p.load(tmp_path / "x.safetensors")


def test_truncated_file(tmp_path, small_ckpt):
    data = small_ckpt["sd1"][0].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors .*truncated"):
        minip2p.load(tmp_path / "cut.safetensors")


def test_pickle_is_refused_with_a_way_to_convert(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(
        CheckpointError, match=r"(?s)model\.ckpt is a pickle.*weights_only=True.*model\.safetensors"
    ):
        minip2p.load(path)


def test_missing_unet_key(tmp_path, small_ckpt):
    _, sd, cfg = small_ckpt["sd1"]
    key = UNET_PREFIX + "middle_block.1.proj_out.weight"
    path = resave(sd, cfg, tmp_path / "m.safetensors", lambda d: d.pop(key))
    with pytest.raises(
        CheckpointError, match=r"(?s)m\.safetensors: the UNet weights.*1 missing keys, e\.g\. " + key
    ):
        minip2p.load(path)


def test_extra_vae_key(tmp_path, small_ckpt):
    _, sd, cfg = small_ckpt["sd1"]
    key = "first_stage_model.decoder.up.0.block.9.conv1.weight"
    path = resave(sd, cfg, tmp_path / "e.safetensors", lambda d: d.__setitem__(key, torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"(?s)the VAE weights.*1 unexpected keys, e\.g\. " + key):
        minip2p.load(path)


def test_wrong_shape(tmp_path, small_ckpt):
    _, sd, cfg = small_ckpt["sd1"]
    key = UNET_PREFIX + "out.2.weight"
    path = resave(sd, cfg, tmp_path / "s.safetensors", lambda d: d.__setitem__(key, torch.zeros(3, 32, 3, 3)))
    with pytest.raises(
        CheckpointError,
        match=r"(?s)shape mismatches, e\.g\. " + key + r": file \[3, 32, 3, 3\], "
        r"expected \[4, 32, 3, 3\]",
    ) as e:
        minip2p.load(path)
    assert len(str(e.value).splitlines()) == 1 and "loads from its diffusers folder" in str(e.value)


def test_no_unet_at_all(tmp_path):
    save_file(
        {"first_stage_model.quant_conv.weight": torch.zeros(8, 8, 1, 1)}, str(tmp_path / "v.safetensors")
    )
    with pytest.raises(CheckpointError, match=r"v\.safetensors: no Stable Diffusion UNet found"):
        minip2p.load(tmp_path / "v.safetensors")


@pytest.mark.parametrize("with_position_ids", [True, False])
def test_position_ids_may_or_may_not_be_there(tmp_path, small_ckpt, with_position_ids):
    _, sd, cfg = small_ckpt["sd1"]
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"

    def change(d):
        d[key] = torch.arange(77)[None]
        if not with_position_ids:
            del d[key]

    pipe = minip2p.load(resave(sd, cfg, tmp_path / "p.safetensors", change))
    assert torch.equal(pipe.text_encoder.embeddings.position_ids, torch.arange(77)[None])


def test_schedule_buffers_and_ema_are_ignored(tmp_path, small_ckpt):
    _, sd, cfg = small_ckpt["sd1"]
    extra = {
        "betas": torch.zeros(1000),
        "alphas_cumprod": torch.zeros(1000),
        "model_ema.decay": torch.tensor(1.0),
        "model_ema.diffusion_modelout2weight": torch.zeros(4, 32, 3, 3),
    }
    pipe = minip2p.load(resave(sd, cfg, tmp_path / "b.safetensors", lambda d: d.update(extra)))
    assert torch.equal(pipe.unet.out[2].weight, sd[UNET_PREFIX + "out.2.weight"])


def test_dtype_device_and_prediction_arguments(small_ckpt):
    path, sd, _ = small_ckpt["sd1"]
    pipe = minip2p.load(path, dtype=torch.bfloat16, prediction="v")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu" and pipe.config.prediction == "v"
    assert pipe.text_encoder.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="prediction must be 'epsilon' or 'v'"):
        minip2p.load(path, prediction="x0")


def test_sd2_family_is_inferred_from_shapes_and_reads_openclip_keys(small_ckpt):
    path, sd, cfg = small_ckpt["sd2"]
    pipe = minip2p.load(path)
    assert pipe.config.family == "sd2" and pipe.config.text.penultimate
    q, k, v = sd["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"].chunk(3)
    assert torch.equal(pipe.text_encoder.encoder.layers[1].self_attn.k_proj.weight, k)


def test_the_bundled_header_is_the_current_config_format_and_an_old_one_is_refused(tmp_path):
    """The bundled model's header is what ModelConfig.to_json writes today; a header of the first format
    (no text_2, head_dim 0 for "num_heads heads") is refused in one line naming the file and the field."""
    path = files("minip2p") / "data" / "shapes.safetensors"
    with safe_open(str(path), "pt") as f:
        header = f.metadata()[META_KEY]
    assert ModelConfig.from_json(header).to_json() == header
    old = json.loads(header)
    del old["text_2"]
    old["unet"]["head_dim"] = 0
    bad = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={META_KEY: json.dumps(old)})
    with pytest.raises(CheckpointError, match=r"old\.safetensors .*text_2") as e:
        minip2p.load(bad)
    assert "\n" not in str(e.value)
    old["text_2"] = None
    save_file(load_file(str(path)), str(bad), metadata={META_KEY: json.dumps(old)})
    with pytest.raises(CheckpointError, match=r"unet\.head_dim must be between 1 and 1024, not 0"):
        minip2p.load(bad)
