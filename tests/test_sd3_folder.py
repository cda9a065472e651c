"""A diffusers SD3 / SD3.5 folder, as diffusers' own save_pretrained writes it from our random single file
(through diffusers' single-file converters), reads back to the single file's tensors exactly and loads into
the same model; a broken folder is one line naming what is wrong."""

import os

import pytest
import torch
from safetensors.torch import save_file

import minip2p
import minip2p_oracle as oracle
from minip2p.sd3_folder import is_sd3_folder, read_sd3_folder
from minip2p.testing import random_sd3_checkpoint, small_sd3_config, write_t5_tokenizer

PROMPT = "a red square on a blue field"


def make_folder(tmp, family, t5, shard="600KB"):
    """-> (single-file state dict, the single file's pipeline, the diffusers folder). Sharded small (unless
    shard=None), so that the shard indexes (diffusers' and transformers') are read too."""
    cfg = small_sd3_config(family, t5=t5)
    sd = random_sd3_checkpoint(cfg, seed=3)
    save_file(sd, str(tmp / "model.safetensors"))
    tokenizers = None
    if t5:
        tokenizers = tmp / "tokenizers"
        write_t5_tokenizer(tokenizers / "tokenizer_3", PROMPT.split())
    single = minip2p.load(tmp / "model.safetensors", tokenizers=tokenizers)
    folder = tmp / "diffusers"
    pipe = oracle.sd3_pipeline(sd, cfg, single)
    pipe.save_pretrained(str(folder), safe_serialization=True, max_shard_size=shard)
    return sd, single, folder


def realigned(pipe):
    """Every weight copied into fresh memory. safetensors' tensors lie where each file's layout puts them (a
    shard's offsets are not a single file's), and the CPU matmul's last bits depend on its operands' address
    alignment (equal weights at different offsets: the MM-DiT ~2e-6 apart; copied: equal), so fresh
    (64-byte aligned) copies compare the models, not where the bytes sat in the files."""
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        model = getattr(pipe, name)
        for t in [] if model is None else [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
    return pipe


@pytest.fixture(scope="module")
def sd35(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("sd35"), "sd3.5", True)


def test_sd35_folder_is_the_single_file(sd35):
    """Sharded, with T5: the same tensors, the same config, the same images bit for bit."""
    sd, single, folder = sd35
    same_images(same_tensors_and_config(sd, single, folder, t5=True), single)


def test_sd3_folder_without_t5(tmp_path):
    """SD3 (no q/k norms, no dual attention), no T5, not sharded: the tables' other branches."""
    sd, single, folder = make_folder(tmp_path, "sd3", False, shard=None)
    same_images(same_tensors_and_config(sd, single, folder, t5=False), single)


def same_images(loaded, single):
    options = dict(seed=1, steps=2, height=128, width=128, output="tensor")
    ours = realigned(loaded).generate([PROMPT], **options)
    theirs = realigned(single).generate([PROMPT], **options)
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()


def same_tensors_and_config(sd, single, folder, t5):
    """The folder reads back to the single file's tensors exactly and loads into a model of its config."""
    assert is_sd3_folder(folder)
    if t5:  # sharded: diffusers' index for the transformer, transformers' for the text encoders
        assert (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
        assert (folder / "text_encoder_3" / "model.safetensors.index.json").is_file()
    else:
        assert not (folder / "text_encoder_3").exists()
    tensors = read_sd3_folder(folder)
    assert sorted(tensors) == sorted(sd)
    unequal = [k for k in sd if tensors[k].dtype != sd[k].dtype or not torch.equal(tensors[k], sd[k])]
    assert not unequal, unequal[:5]

    loaded = minip2p.load(folder)
    assert loaded.config == single.config and (loaded.text_encoder_3 is None) == (not t5)
    return loaded


def link_tree(good, bad, skip=()):
    """`bad`: a folder of symbolic links to `good`'s entries but those in `skip` (a copy costs seconds)."""
    bad.mkdir()
    for entry in good.iterdir():
        if entry.name not in skip:
            (bad / entry.name).symlink_to(entry)
    return bad


def one_line_error(path, *parts):
    """minip2p.load(path) fails with a one-line ValueError / FileNotFoundError holding `parts`, raised
    without a chained traceback."""
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        minip2p.load(path)
    message, err = str(e.value), e.value
    assert "\n" not in message and all(p in message for p in parts), message
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), message


def test_broken_folders(tmp_path, sd35):
    good = sd35[2]

    no_vae = link_tree(good, tmp_path / "no_vae", skip={"vae"})
    one_line_error(no_vae, str(no_vae), "without vae/")

    truncated = link_tree(good, tmp_path / "truncated", skip={"transformer"})
    link_tree(good / "transformer", truncated / "transformer")
    shard = sorted((good / "transformer").glob("*.safetensors"))[-1]
    (truncated / "transformer" / shard.name).unlink()
    (truncated / "transformer" / shard.name).write_bytes(shard.read_bytes()[:-100])
    one_line_error(truncated, str(truncated / "transformer" / shard.name), "not a readable .safetensors")

    pickled = link_tree(good, tmp_path / "pickled", skip={"transformer"})
    (pickled / "transformer").mkdir()
    (pickled / "transformer" / "config.json").symlink_to(good / "transformer" / "config.json")
    (pickled / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    one_line_error(pickled, "transformer: no .safetensors weights", "diffusion_pytorch_model.bin: a pickle")

    bad_json = link_tree(good, tmp_path / "bad_json", skip={"model_index.json"})
    (bad_json / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline",')
    one_line_error(bad_json, str(bad_json / "model_index.json"), "not JSON")

    fifo = link_tree(good, tmp_path / "fifo", skip={"model_index.json"})
    os.mkfifo(fifo / "model_index.json")  # reading it would block forever
    one_line_error(fifo, str(fifo / "model_index.json"), "not a regular file")
