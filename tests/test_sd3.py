"""SD3 / SD3.5 end to end on narrow random weights in Stability's single-file layout: the MM-DiT and the
whole sampler against diffusers' SD3Transformer2DModel and StableDiffusion3Pipeline (read through diffusers'
own converter), the full-size SD3.5 Medium key list, Prompt-to-Prompt's invariants on joint attention,
Direct Inversion, and the loader's one-line errors."""

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file

import minip2p
import minip2p_oracle as oracle
from minip2p import AttentionStore, make_edit
from minip2p.attention import Controller, Place, attention, joint_parts
from minip2p.checkpoint import UNET_PREFIX, VAE_PREFIX, CheckpointError
from minip2p.flow import FlowMatchEuler
from minip2p.mmdit import MMDiT, MMDiTConfig, config_from_keys
from minip2p.sd3 import SD3Config
from minip2p.sd3_loading import vae_config
from minip2p.testing import random_sd3_checkpoint, small_sd3_config, write_t5_tokenizer
from minip2p.vae import VAE
from minip2p.viz import cross_attention_grid

DATA = Path(__file__).parent / "data"
WORDS = "a red blue green circle square triangle on white black background big small".split()
SOURCE, TARGET = "a red circle on white background", "a blue square on white background"
SIZE = dict(height=128, width=128)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Narrow SD3 (no T5) and SD3.5 (T5, q/k norms, dual attention) files, and a T5 tokenizer folder."""
    d = tmp_path_factory.mktemp("sd3")
    write_t5_tokenizer(d / "tokenizers" / "tokenizer_3", WORDS)
    out = {}
    for family, t5 in (("sd3", False), ("sd3.5", True)):
        cfg = small_sd3_config(family, t5=t5)
        sd = random_sd3_checkpoint(cfg, seed=3)
        save_file(sd, str(d / f"{family}.safetensors"))
        out[family] = d / f"{family}.safetensors", sd
    return d, out


@pytest.fixture(scope="module", params=["sd3", "sd3.5"])
def model(request, files):
    d, out = files
    path, sd = out[request.param]
    return minip2p.load(path, tokenizers=d / "tokenizers"), sd


def test_the_transformer_equals_diffusers(model):
    pipe, sd = model
    ref = oracle.sd3_transformer(sd, pipe.config)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 16, 16, 12, generator=g), torch.randn(2, 64, generator=g)
    context = torch.randn(2, 77 + 256, 160, generator=g)
    t = torch.tensor([997.0, 31.5])
    with torch.no_grad():
        ours = pipe.transformer(x, t, context, None, y)
        theirs = ref(hidden_states=x, timestep=t, encoder_hidden_states=context, pooled_projections=y).sample
    assert (ours - theirs).abs().max() < 1e-4
    assert pipe.config.family == ("sd3.5" if pipe.config.mmdit.qk_norm else "sd3")


@pytest.mark.parametrize("steps", [1, 4, 28])
def test_the_schedule_and_steps_equal_diffusers(steps):
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ref.set_timesteps(steps)
    ours = FlowMatchEuler(steps)
    assert torch.allclose(ours.timesteps, ref.timesteps) and torch.allclose(ours.sigmas, ref.sigmas)
    g = torch.Generator().manual_seed(1)
    x = a = torch.randn(1, 16, 4, 4, generator=g)
    for t in ref.timesteps:
        v = torch.randn(1, 16, 4, 4, generator=g)
        x, a = ours.step(v, t, x)[0], ref.step(v, t, a).prev_sample
    assert (x - a).abs().max() < 1e-5


def test_generate_equals_diffusers_pipeline(model):
    """With T5 (SD3.5 here) and without (zeros in its place: SD3 here); a long prompt's CLIP tokens are cut
    at 77 by both, T5 reads it whole."""
    pipe, sd = model
    ref = oracle.sd3_pipeline(sd, pipe.config, pipe)
    prompts = [SOURCE] if pipe.tokenizer_3 is None else [SOURCE, " ".join(WORDS * 8)]
    for prompt in prompts:
        ours = pipe.generate([prompt], seed=1, steps=4, output="tensor", progress=False, **SIZE)
        noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
        theirs = ref(
            prompt, num_inference_steps=4, guidance_scale=7.0, latents=noise, output_type="pt", **SIZE
        )
        assert ((ours * 0.5 + 0.5).clamp(0, 1) - theirs.images).abs().max() < 1e-3


def test_a_full_size_sd35_medium_file_is_known_by_its_keys_and_loads_strictly():
    """Every key of sd3.5_medium.safetensors (derived from diffusers' converter: scripts/sd35_medium_keys.py),
    as zero-stride tensors: the config read from the shapes is SD3.5 Medium's, and the MM-DiT's and VAE's
    keys and shapes are exactly our modules'."""
    tensors = {}
    for line in (DATA / "sd35_medium_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        tensors[key] = torch.zeros(()).expand([int(s) for s in shape.split(",")])
    mmdit = {k[len(UNET_PREFIX) :]: v for k, v in tensors.items() if k.startswith(UNET_PREFIX)}
    vae = {k[len(VAE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(VAE_PREFIX)}
    cfg = config_from_keys({k: tuple(v.shape) for k, v in mmdit.items()})
    assert cfg == MMDiTConfig() and vae_config(vae, "sd3.5_medium") == SD3Config().vae
    with torch.device("meta"):
        for part, model in ((mmdit, MMDiT(cfg)), (vae, VAE(SD3Config().vae))):
            assert {k: tuple(v.shape) for k, v in part.items()} == {
                k: tuple(v.shape) for k, v in model.state_dict().items()
            }
    assert sum(v.numel() for v in mmdit.values()) > 2.4e9


def images(pipe, prompts, **options):
    return pipe.generate(prompts, seed=4, steps=6, output="tensor", progress=False, **SIZE, **options)


def test_the_same_prompt_twice_is_the_same_image_and_a_store_changes_nothing(model):
    pipe, _ = model
    plain = images(pipe, [SOURCE, SOURCE])
    assert torch.equal(plain[0], plain[1]) and torch.equal(plain, images(pipe, [SOURCE, SOURCE]))
    store = AttentionStore()
    assert (images(pipe, [SOURCE, SOURCE], controller=store) - plain).abs().max() < 1e-4
    depth = pipe.config.mmdit.depth
    assert len(store.keys(part="image->text")) == depth
    assert len(store.keys(part="text->image")) == depth
    maps = store.aggregate(8)  # (prompts, 8, 8, 77): image tokens x CLIP tokens, rows of a distribution
    assert maps.shape == (2, 8, 8, 77) and torch.allclose(maps.sum(-1), torch.ones(2, 8, 8), atol=1e-5)
    assert store.aggregate(8, part="text->image").shape == (2, 8, 8, 77)
    assert store.aggregate(8, places=["late"]).shape == (2, 8, 8, 77)
    grid = cross_attention_grid(store, SOURCE, 8, pipe.tokenizer, part="text->image", tile=32)
    assert grid.size[0] > 32


def test_replace_with_no_steps_is_the_plain_target_and_reweight_at_one_is_no_edit(model):
    pipe, _ = model
    plain = images(pipe, [SOURCE, TARGET])
    none = make_edit(SOURCE, TARGET, pipe.tokenizer, cross_replace_steps=0.0, self_replace_steps=0.0)
    noise = (images(pipe, [SOURCE, TARGET], controller=none) - plain).abs().max()  # the explicit path's
    assert noise < 1e-4
    one = make_edit(SOURCE, SOURCE, pipe.tokenizer, reweight={"circle": 1.0})
    same = images(pipe, [SOURCE, SOURCE], controller=one)
    assert (same - plain[:1]).abs().max() < 1e-4
    edit = make_edit(SOURCE, TARGET, pipe.tokenizer, blend=["circle", "square"])
    edited = images(pipe, [SOURCE, TARGET], controller=edit)
    assert (edited[0] - plain[0]).abs().max() < 1e-4  # the source is never edited
    assert (edited[1] - plain[1]).abs().max() > 10 * noise  # the target is
    late = make_edit(SOURCE, TARGET, pipe.tokenizer, cross_places=["late"], self_places=[0])
    assert (images(pipe, [SOURCE, TARGET], controller=late)[1] - edited[1]).abs().max() > 10 * noise


def test_a_batch_and_a_recording_are_the_same_edits_on_joint_attention(model):
    pipe, _ = model
    run = dict(seed=5, steps=4, output="tensor", progress=False)
    targets = [TARGET, SOURCE.replace("red", "blue")]
    batch = pipe.edit(SOURCE, targets, blend=[["circle", "square"], None], **run)
    for n, target in enumerate(targets):
        alone = pipe.edit(SOURCE, target, blend=[["circle", "square"], None][n], **run)
        assert (batch[n + 1] - alone[1]).abs().max() < 1e-3
    recording = pipe.record(SOURCE, seed=5, steps=4, progress=False)
    assert any(k.endswith(":image->image") for k in recording.maps)
    replayed = pipe.edit(
        recording, targets, blend=[["circle", "square"], None], output="tensor", progress=False
    )
    assert (replayed - batch).abs().max() < 1e-3


def test_direct_inversion_reconstructs_exactly(model):
    pipe, _ = model
    image = images(pipe, [SOURCE]).clamp(-1, 1)
    inv = pipe.invert(image, SOURCE, method="direct", steps=5, progress=False)
    latents = pipe.sample([SOURCE, TARGET], inversion=inv, progress=False)
    assert torch.equal(latents[0], pipe.encode(image)[0])
    plain = pipe.invert(image, SOURCE, method="ddim", steps=5, progress=False)
    assert not torch.equal(pipe.sample([SOURCE], inversion=plain, progress=False)[0], latents[0])
    with pytest.raises(ValueError, match="SD3 inverts by the Euler steps"):
        pipe.invert(image, SOURCE, method="null-text", steps=5, progress=False)


class Swap(Controller):
    """Gives the target (conditional prompt 1) the source's (prompt 0) map in the image->text block."""

    def wants(self, place):
        return place.part == "image->text"

    def __call__(self, attn, place):
        cond = attn.view(2, -1, place.heads, *attn.shape[1:])[1]
        cond[1] = cond[0]
        return attn


def test_a_joint_edit_keeps_each_rows_mass_per_block():
    """The edited block is the source's distribution over the CLIP tokens times the target's own mass there:
    rows still sum to 1, the T5 and image columns are untouched."""
    n, prompt, t5, heads = 6, 77, 5, 2
    place = Place("joint_blocks.0.x_block.attn", "early", True, 2, heads, "joint", 0, prompt)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, n + prompt + t5, 2 * heads * 4, generator=g) for _ in range(3))
    maps = {}

    class Keep(Controller):
        def wants(self, p):
            return p.part in ("image->text", "text->image")

        def __call__(self, attn, p):
            maps[p.part] = attn.clone()
            return attn

    plain = attention(q, k, v, heads, place, None, n)
    kept = attention(q, k, v, heads, place, Keep(), n)
    assert (plain - kept).abs().max() < 1e-5 and maps["image->text"].shape == (8, n, prompt)
    assert torch.allclose(maps["image->text"].sum(-1), torch.ones(8, n))
    assert maps["text->image"].shape == (8, prompt, n)
    assert not torch.allclose(attention(q, k, v, heads, place, Swap(), n), plain, atol=1e-3)
    assert set(joint_parts(place)) == {"image->text", "image->image", "text->image"}


def test_bad_sd3_files_are_one_line_each(files, tmp_path):
    d, out = files
    sd = out["sd3.5"][1]

    def write(name, tensors):
        save_file(tensors, str(tmp_path / name))
        return tmp_path / name

    half = write("half.safetensors", {k: v for k, v in sd.items() if k.startswith(UNET_PREFIX)})
    with pytest.raises(CheckpointError, match="no VAE"):
        minip2p.load(half)
    no_text = write("no_text.safetensors", {k: v for k, v in sd.items() if not k.startswith("text_")})
    with pytest.raises(CheckpointError, match="holds no CLIP text encoders.*text_encoders=FOLDER"):
        minip2p.load(no_text)
    missing = dict(sd)
    missing.pop(UNET_PREFIX + "joint_blocks.2.x_block.mlp.fc1.weight")
    with pytest.raises(CheckpointError, match="missing keys, e.g. model.diffusion_model.joint_blocks.2"):
        minip2p.load(write("missing.safetensors", missing), tokenizers=d / "tokenizers")
    narrow_t5 = {
        k: v[..., :96].contiguous()
        if k.startswith("text_encoders.t5xxl") and k.endswith("shared.weight")
        else v
        for k, v in sd.items()
    }
    with pytest.raises(CheckpointError, match="T5 encoder is 96 wide, the MM-DiT reads a 160-wide"):
        minip2p.load(write("t5.safetensors", narrow_t5), tokenizers=d / "tokenizers")
    with pytest.raises(FileNotFoundError, match="tokenizer_3"):
        minip2p.load(out["sd3.5"][0])
    bad = tmp_path / "bad_tokenizers"
    shutil.copytree(d / "tokenizers", bad)
    for text, says in (
        ('{"model": ', "not JSON"),
        ('{"model": {"type": "Nope"}}', "not a readable tokenizer"),
    ):
        (bad / "tokenizer_3" / "tokenizer.json").write_text(text)
        with pytest.raises(CheckpointError, match=f"tokenizer_3/tokenizer.json.*{says}") as e:
            minip2p.load(out["sd3.5"][0], tokenizers=bad)
        assert len(str(e.value).splitlines()) == 1


def test_the_text_encoders_may_come_apart_and_long_prompts_are_refused(files, tmp_path):
    d, out = files
    parts = random_sd3_checkpoint(small_sd3_config("sd3.5"), seed=3, text_inside=False)
    save_file(parts.pop("model"), str(tmp_path / "model.safetensors"))
    for name, state in parts.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    apart = minip2p.load(tmp_path / "model.safetensors", text_encoders=tmp_path, tokenizers=d / "tokenizers")
    whole = minip2p.load(out["sd3.5"][0], tokenizers=d / "tokenizers")
    # the same weights; the last bits of a matmul follow where a tensor sits in memory (another file)
    assert (images(apart, [SOURCE]) - images(whole, [SOURCE])).abs().max() < 1e-4
    with pytest.raises(ValueError, match="more than the 256 the text encoder takes"):
        whole.generate([" ".join(WORDS * 30)], seed=0, progress=False)
    sd3 = minip2p.load(out["sd3"][0])  # no T5: the CLIPs' 77 tokens are all there is
    with pytest.raises(ValueError, match="more than the 77"):
        sd3.generate([" ".join(WORDS * 8)], seed=0, progress=False)
    with pytest.raises(ValueError, match="eta is DDIM.s noise; sampler .euler."):
        sd3.generate([SOURCE], seed=0, eta=0.5, progress=False)
    with pytest.raises(ValueError, match="cross_places must be None"):
        make_edit(SOURCE, TARGET, sd3.tokenizer, cross_places=["nowhere"])


def test_the_command_line_edits_and_draws_sd3(files, tmp_path, cli):
    d, out = files
    model = ["--weights", out["sd3.5"][0], "--tokenizers", d / "tokenizers", "--steps", 3, "--quiet"]
    edit = [
        "edit",
        "--prompt",
        SOURCE,
        "--to",
        TARGET,
        "--cross-places",
        "late",
        "3",
        "--out",
        tmp_path / "e.png",
    ]
    code, stdout, stderr = cli(*edit, *model)
    assert code == 0 and (tmp_path / "e.png").exists(), stderr
    code, _, stderr = cli("attention", "--prompt", SOURCE, "--out", tmp_path / "m.png", *model)
    assert code == 0 and (tmp_path / "m.png").exists(), stderr
    code, _, stderr = cli(*edit, *model[:2], "--steps", 3)  # no T5 tokenizer: one line
    assert code == 1 and "tokenizer_3" in stderr and "Traceback" not in stderr
