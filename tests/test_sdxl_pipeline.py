"""SDXL end to end: the loader (the family from the keys, the refiner and half files refused), both text
encoders and the sampler against diffusers' StableDiffusionXLPipeline on the same narrow random weights, the
diffusers folder, Prompt-to-Prompt's invariants and inversion on SDXL."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import minip2p
import minip2p_oracle as oracle
from minip2p import AttentionStore, LocalBlend, Replace, defaults
from minip2p.blend import blend_downsample, region
from minip2p.checkpoint import (
    SDXL_OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointError,
    infer_config,
    split_parts,
)
from minip2p.p2p import self_max_tokens
from minip2p.pipeline import choose_vae_dtype
from minip2p.text import build_text_encoder
from minip2p.unet import UNet
from minip2p.vae import VAE

DATA = Path(__file__).parent / "data"
P = ["a red circle on a white background", "a blue square on a white background"]
MICRO = dict(original_size=(256, 96), crops_coords_top_left=(8, 16), target_size=(64, 64))


@pytest.fixture(scope="module")
def reference(sdxl_ckpt, sdxl_pipe):
    path, sd, cfg = sdxl_ckpt
    return oracle.sdxl_pipeline(path, sd, cfg, sdxl_pipe.tokenizer, sdxl_pipe.tokenizer_2)


def test_a_full_size_sdxl_file_is_known_by_its_keys_and_loads_strictly():
    """Every key of sd_xl_base_1.0.safetensors (zero-stride tensors: no memory), plus the buffer a real file
    holds: the family is SDXL, and each part's keys and shapes are exactly our modules' (SGM keys = paths)."""
    tensors = {}
    for line in (DATA / "sdxl_keys_shapes.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        shape = [int(x) for x in shape.strip("[]").split(",") if x.strip()]
        tensors[key] = torch.zeros(()).expand(shape)
    tensors["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    cfg = infer_config(tensors, {}, "sd_xl_base_1.0.safetensors")
    assert cfg == minip2p.ModelConfig.sdxl() and cfg.image_size == 1024 and cfg.vae.scale_factor == 0.13025
    parts = split_parts(tensors, cfg)
    with torch.device("meta"):
        models = {"unet": UNet(cfg.unet), "vae": VAE(cfg.vae)}
        models.update(text=build_text_encoder(cfg.text), text_2=build_text_encoder(cfg.text_2))
    for name, model in models.items():
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in parts[name].items()} == want, name
    assert len(parts["text_2"]) == 517  # diffusers' count for bigG (all but logit_scale)


def test_refiner_and_half_sdxl_files_are_one_line_errors(tmp_path, sdxl_ckpt, cli):
    refiner = tmp_path / "sd_xl_refiner_1.0.safetensors"
    save_file(
        {
            UNET_PREFIX + "label_emb.0.0.weight": torch.zeros(1536, 2560),
            "conditioner.embedders.0.model.ln_final.weight": torch.zeros(1280),
        },
        str(refiner),
    )
    with pytest.raises(CheckpointError, match="SDXL refiner checkpoint, which minip2p does not support"):
        minip2p.load(refiner)
    half = tmp_path / "half.safetensors"
    sd = sdxl_ckpt[1]
    save_file({k: v for k, v in sd.items() if not k.startswith(SDXL_OPENCLIP_PREFIX)}, str(half))
    with pytest.raises(CheckpointError, match=r"only part of an SDXL model: no text encoder 2 \(OpenCLIP"):
        minip2p.load(half)
    code, out, err = cli("generate", "--prompt", "a cat", "--weights", half, "--out", tmp_path / "x.png")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "text encoder 2" in err
    no_vae = tmp_path / "no_vae.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith(VAE_PREFIX)}, str(no_vae))
    with pytest.raises(CheckpointError, match=r"no the VAE \(first_stage_model"):
        minip2p.load(no_vae)


def test_text_encoders_equal_diffusers(sdxl_pipe, reference):
    """The context (both encoders' penultimate layers side by side), the pooled embedding, and the negatives:
    zeros for no negative prompt, both encoders for a given one."""
    prompts = ["a red circle and a blue square", "a photo"]
    with torch.no_grad():
        ref = reference.encode_prompt(prompts, device="cpu", negative_prompt=None)
        ref_negative = reference.encode_prompt(prompts, device="cpu", negative_prompt=["ugly", "ugly"])
    context, pooled = sdxl_pipe.encode_text(prompts)
    assert context.shape == (2, 77, 96) and pooled.shape == (2, 16)
    assert (context - ref[0]).abs().max() < 1e-5 and (pooled - ref[2]).abs().max() < 1e-5
    zeros, zeros_pooled = sdxl_pipe.encode_negative(None)
    assert not zeros.any() and not zeros_pooled.any() and not ref[1].any() and not ref[3].any()
    negative, negative_pooled = sdxl_pipe.encode_negative("ugly")
    assert (negative - ref_negative[1]).abs().max() < 1e-5
    assert (negative_pooled - ref_negative[3]).abs().max() < 1e-5
    assert (negative_pooled - pooled[1]).abs().max() > 1e-2  # a real difference, not all zeros
    empty_context, _ = sdxl_pipe.encode_negative("")
    assert empty_context.abs().max() > 0.1  # "" is encoded, as in diffusers; only None gives zeros


def test_both_tokenizers_put_every_word_at_the_same_place(sdxl_pipe):
    """The edits' token maps are built on tokenizer 1; tokenizer 2 gives the same ids up to the end token and
    pads with "!" (0), not end-of-text (49407): the maps fit both halves of the concatenated context."""
    for prompt in P + ["an astronaut riding a horse, photorealistic", "a cat's hat"]:
        a = sdxl_pipe.tokenizer(prompt, padding="max_length", max_length=77).input_ids
        b = sdxl_pipe.tokenizer_2(prompt, padding="max_length", max_length=77).input_ids
        n = a.index(49407) + 1
        assert a[:n] == b[:n] and set(a[n:]) == {49407} and set(b[n:]) == {0}


@pytest.mark.parametrize("micro", [{}, MICRO])
def test_generate_equals_stable_diffusion_xl_pipeline(sdxl_pipe, reference, micro):
    """Each side's defaults (guidance 5.0, the image's size as original and target size), then given sizes."""
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    negative = {"negative_prompt": "ugly"} if micro else {}
    options = dict(latents=latents, **micro, **negative)
    latent = sdxl_pipe.generate(["a cat"], steps=4, output="latent", progress=False, **options)
    ours = sdxl_pipe.decode(latent)

    def diffusers_run(output_type):
        return reference(
            ["a cat"], num_inference_steps=4, height=128, width=128, output_type=output_type, **options
        )

    theirs, ref_latent = diffusers_run("pt").images, diffusers_run("latent").images
    image_diff = ((ours / 2 + 0.5).clamp(0, 1) - theirs).abs().max()
    latent_diff = (latent - ref_latent).abs().max()
    print(f"\nnarrow SDXL, 4 DDIM steps {micro}: max |diff| image {image_diff:.2e}, latent {latent_diff:.2e}")
    assert image_diff < 1e-3 and latent_diff < 1e-3 and ref_latent.abs().mean() > 0.1


def test_dpm_generate_equals_stable_diffusion_xl_pipeline(sdxl_pipe, reference):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = sdxl_pipe.generate(
        ["a cat"], steps=5, sampler="dpm++", latents=latents, output="latent", progress=False
    )
    reference.scheduler = oracle.dpm_scheduler()
    try:
        theirs = reference(
            ["a cat"], num_inference_steps=5, height=128, width=128, latents=latents, output_type="latent"
        )
    finally:
        reference.scheduler = oracle.ddim_scheduler()
    diff = (ours - theirs.images).abs().max()
    print(f"\nnarrow SDXL, 5 DPM++ steps: max |latent diff| {diff:.2e}")
    assert diff < 1e-3 and ours.abs().mean() > 0.1


def test_micro_conditioning_matters_and_is_checked(sdxl_pipe, pipe):
    def run(**kw):
        return sdxl_pipe.sample(["a cat"], seed=1, steps=2, progress=False, **kw)

    assert (run(**MICRO) - run()).abs().max() > 1e-3
    assert torch.equal(run(original_size=(128, 128), target_size=(128, 128)), run())  # the defaults
    with pytest.raises(ValueError, match="original_size must be a pair"):
        run(original_size=1024)
    with pytest.raises(ValueError, match="crops_coords_top_left entry must be between 0"):
        run(crops_coords_top_left=(-8, 0))
    with pytest.raises(ValueError, match="original_size, crops_coords_top_left, target_size: only SDXL"):
        pipe.sample(["a cat"], seed=1, steps=2, progress=False, target_size=(64, 64))


def test_the_diffusers_sdxl_folder_is_the_same_model(sdxl_pipe, reference, tmp_path):
    reference.save_pretrained(tmp_path / "sdxl", safe_serialization=True)
    folder = minip2p.load(tmp_path / "sdxl")
    # the size is the folder's unet sample_size (the oracle's converter leaves it at 64 latent cells)
    assert replace(folder.config, image_size=128) == sdxl_pipe.config
    a = folder.sample(P, seed=2, steps=3, progress=False, height=128, width=128)
    b = sdxl_pipe.sample(P, seed=2, steps=3, progress=False)
    assert (a - b).abs().max() < 1e-4


def run(pipe, prompts, controller=None, **options):
    return pipe.sample(prompts, seed=3, steps=6, controller=controller, progress=False, **options)


def test_an_attention_store_on_sdxl(sdxl_pipe):
    plain = run(sdxl_pipe, P)
    store = AttentionStore()
    assert (run(sdxl_pipe, P, store) - plain).abs().max() < 1e-3  # an attached store changes nothing
    assert store.resolutions() == [4, 8]  # SDXL: no attention at the first level (16x16 here)
    assert store.aggregate(8, ("down", "up")).shape == (2, 8, 8, 77)


def test_local_blend_and_the_self_attention_cap_follow_the_latent(sdxl_pipe):
    """1/4 of SDXL's 128x128 latent is 32x32 (4x smaller, SDXL's second level, where the SDXL port reads its
    maps); on the narrow model's 16x16 latent LocalBlend reads the 8x8 maps (2x smaller): maps that exist in
    both. The self-attention cap is 32x32 there, and all of the 16x16 latent (the official 16x16 rule)."""
    assert blend_downsample(defaults.BLEND_RES_FRACTION, 128) == 4
    assert self_max_tokens(defaults.SELF_MAX_FRACTION, (128, 128)) == 32**2
    assert self_max_tokens(defaults.SELF_MAX_FRACTION, (16, 16)) == 16**2
    blend = LocalBlend(["circle", "square"], threshold=0.9)  # random weights: a high bar keeps some out
    edit = Replace(P, sdxl_pipe.tokenizer, local_blend=blend)
    x = run(sdxl_pipe, P, edit)
    assert blend.downsample == 2 and blend.sum.shape == (2, 8, 8, 77)
    assert 0 < region(blend.sum, blend.alpha, blend.latent_hw, 0.9, pool=True)[1].float().mean() < 1
    assert (x[1] - x[0]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="reads the 16x16 cross-attention maps .* this model has none"):
        run(
            sdxl_pipe,
            P,
            Replace(P, sdxl_pipe.tokenizer, local_blend=LocalBlend(["circle", "square"], res_fraction=1)),
        )


@pytest.mark.parametrize("method", ["ddim", "negative-prompt", "null-text", "direct"])
def test_inversion_on_sdxl(sdxl_pipe, method, tmp_path):
    image = sdxl_pipe.generate(["a red circle"], seed=4, steps=4, output="tensor", progress=False)
    inv = sdxl_pipe.invert(image, "a red circle", method=method, steps=4, inner_steps=2, progress=False)
    assert inv.null_pooled.shape == (1, 16)
    assert inv.null_pooled.any() == (method == "negative-prompt")  # zeros, as sampling's unconditional half
    inv.save(tmp_path / "inv.safetensors")
    loaded = minip2p.Inversion.load(tmp_path / "inv.safetensors")
    assert torch.equal(loaded.null_pooled, inv.null_pooled)
    edited = sdxl_pipe.edit(
        "a red circle", "a blue circle", inversion=loaded, output="latent", progress=False
    )
    again = sdxl_pipe.generate(["a red circle"], inversion=inv, output="latent", progress=False)
    assert (edited[0] - again[0]).abs().max() < 1e-3  # the source branch is the reconstruction (batch 2 vs 1)
    if method == "direct":
        assert torch.equal(again[0], inv.trajectory[0][0])  # exactly the encoded image
    with pytest.raises(ValueError, match="an inversion was made with the defaults"):
        sdxl_pipe.generate(["a red circle"], inversion=inv, target_size=(64, 64), progress=False)


def test_sdxl_vae_stays_float32_under_float16():
    cfg = minip2p.ModelConfig.sdxl()
    assert choose_vae_dtype(cfg, torch.float16, None) == torch.float32
    assert choose_vae_dtype(cfg, torch.bfloat16, None) == torch.bfloat16
