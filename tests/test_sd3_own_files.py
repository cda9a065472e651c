"""Our own SD3-family files (the format the shapes-world MM-DiT is exported in, `sd3_loading.save_sd3`): one
CLIP, no T5, Stability's key layout, and metadata that says only what the weights cannot show. Here on a small
random model: written, loaded, sampled and edited; every bad setting one line; a bundled name that is not
installed one line.
"""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import minip2p
from minip2p.checkpoint import BUNDLED_MODEL, META_KEY, read_safetensors
from minip2p.config import CheckpointError
from minip2p.mmdit import MMDiT, MMDiTConfig, initialise
from minip2p.sd3 import SD3Config, SD3Pipeline
from minip2p.sd3_loading import save_sd3
from minip2p.text import TextConfig, build_text_encoder

MMDIT = MMDiTConfig(
    depth=3,
    hidden_size=64,
    num_heads=1,
    patch_size=2,
    in_channels=4,
    context_dim=32,
    pooled_dim=32,
    pos_embed_max_size=8,
    qk_norm=True,
    dual_attention_layers=(),
)
TEXT = TextConfig(
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    penultimate=True,
    final_norm=False,
    projection_dim=32,
)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, shapes_pipe):
    """A random one-CLIP MM-DiT on the bundled VAE, as `train_shapes.py export --arch mmdit` writes one."""
    torch.manual_seed(0)
    model = initialise(MMDiT(MMDIT))
    for p in model.parameters():  # adaLN-Zero would make every output zero: give the blocks something to do
        p.data.add_(0.02 * torch.randn_like(p))
    cfg = SD3Config("sd3.5", MMDIT, shapes_pipe.config.vae, TEXT, None, None, 0, 64, 1.0)
    path = tmp_path_factory.mktemp("sd3") / "small.safetensors"
    save_sd3(path, cfg, model, shapes_pipe.vae, build_text_encoder(TEXT), dtype=torch.float16)
    return path


def test_the_file_is_an_sd3_single_file_and_loads_as_one(small_file, shapes_pipe):
    with safe_open(str(small_file), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert set(json.loads(meta[META_KEY])) == {"vae", "text", "shift", "image_size", "t5_tokens"}
    prefixes = ("model.diffusion_model.", "first_stage_model.", "text_encoders.clip_l.transformer.")
    assert all(k.startswith(prefixes) for k in keys) and all(
        any(k.startswith(p) for k in keys) for p in prefixes
    )
    pipe = minip2p.load(small_file)
    assert isinstance(pipe, SD3Pipeline) and pipe.config.text_2 is None and pipe.text_encoder_3 is None
    cfg = pipe.config
    assert (cfg.shift, cfg.image_size, cfg.t5_tokens, cfg.text.num_heads) == (1.0, 64, 0, 2)
    assert cfg.vae.scale_factor == shapes_pipe.config.vae.scale_factor and cfg.vae.norm_groups == 8
    assert pipe.encode_text(["a red circle"])[0].shape == (1, 77, 32)  # 77 CLIP tokens, no T5 after them


def test_it_samples_and_edits(small_file):
    pipe = minip2p.load(small_file)
    source, target = "a red circle on a white background", "a blue circle on a white background"
    a = pipe.sample([source, target], seed=1, steps=3, progress=False)
    b = pipe.sample([source, target], seed=1, steps=3, progress=False)
    assert torch.equal(a, b) and torch.isfinite(a).all() and a.shape == (2, 4, 16, 16)
    src, edited = pipe.edit(source, target, seed=1, steps=3, output="latent", progress=False)
    assert (src - a[0]).abs().max() < 1e-4  # the source is plain generation
    assert (edited - a[1]).abs().max() > 1e-3  # the target took the source's maps


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shift": float("nan")}, "NaN is not a number JSON allows"),
        ({"shift": "3"}, "shift must be a finite number"),
        ({"vae": {"norm_groups": 7}}, "norm_groups 7 must divide every width"),
        ({"text": {"num_heads": 3}}, "num_heads must divide"),
        ({"text": {"layers": 3}}, "unknown setting 'text.layers'"),
        ({"image_size": 128}, "image_size must be a multiple of 8 up to 64"),
        ({"vae": {"scale_factor": -1.0}}, "vae.scale_factor must be > 0, not -1.0"),
    ],
)
def test_a_bad_setting_in_its_metadata_is_one_line(small_file, tmp_path, change, message):
    tensors, meta = read_safetensors(small_file)
    settings = json.loads(meta[META_KEY])
    for k, v in change.items():
        settings[k] = {**settings[k], **v} if isinstance(v, dict) else v
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(settings)})
    with pytest.raises(CheckpointError, match=message) as e:
        minip2p.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_one_clip_is_refused_without_our_metadata(small_file, tmp_path):
    tensors, _ = read_safetensors(small_file)
    path = tmp_path / "stability.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="holds no CLIP text encoders"):
        minip2p.load(path)


def test_a_bundled_name_is_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").write_bytes(b"not a model")  # a file of that name: "./shapes"
    assert minip2p.load("shapes").probe().equal(minip2p.load(BUNDLED_MODEL).probe())
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        minip2p.load("./shapes")


def test_a_bundled_model_not_installed_is_one_line(monkeypatch, tmp_path):
    from minip2p import checkpoint

    monkeypatch.setitem(checkpoint.BUNDLED, "shapes-mmdit", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="'shapes-mmdit' is not in this install: train it"):
        minip2p.load("shapes-mmdit")
