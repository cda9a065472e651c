"""Write the tensor keys and shapes of Stability's single-file `sd3.5_medium.safetensors`.

Nothing is downloaded; the list is derived from diffusers' own code:

1. The diffusers models are built on the meta device (no memory allocated) with the
   SD3.5 Medium configs: SD3Transformer2DModel (24 MMDiT-X layers, dual attention in
   layers 0-12, RMS qk-norm) and the SD3 AutoencoderKL (16 latent channels, no
   quant_conv / post_quant_conv).
2. Their state_dict keys are mapped back to the original layout by inverting
   `convert_sd3_transformer_checkpoint_to_diffusers` and `convert_ldm_vae_checkpoint`
   from diffusers/loaders/single_file_utils.py: to_q/to_k/to_v are stacked on dim 0
   into one `qkv`, VAE mid-attention linears become 1x1 convs, and the keys are
   prefixed with `model.diffusion_model.` (transformer) and `first_stage_model.` (VAE).
3. Check: meta tensors with the original keys and shapes are run through those two
   diffusers converters. The converted keys and shapes must equal the diffusers models'
   state_dicts exactly, and every original key must be used.

Output: one line per tensor, `key<TAB>comma-separated shape`, sorted by key.

Usage: python scripts/sd35_medium_keys.py tests/data/sd35_medium_keys.txt
"""

import re
import sys

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_vae_checkpoint,
    convert_sd3_transformer_checkpoint_to_diffusers,
)

TRANSFORMER_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

TRANSFORMER_CONFIG = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

# diffusers name -> original name (either a whole key, or a block-relative prefix).
TRANSFORMER_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
TRANSFORMER_BLOCK = {
    "attn.to_q": "x_block.attn.qkv",
    "attn.to_k": "x_block.attn.qkv",
    "attn.to_v": "x_block.attn.qkv",
    "attn.add_q_proj": "context_block.attn.qkv",
    "attn.add_k_proj": "context_block.attn.qkv",
    "attn.add_v_proj": "context_block.attn.qkv",
    "attn2.to_q": "x_block.attn2.qkv",
    "attn2.to_k": "x_block.attn2.qkv",
    "attn2.to_v": "x_block.attn2.qkv",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn2.to_out.0": "x_block.attn2.proj",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def shapes_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def split_param(key):
    """'a.b.weight' -> ('a.b', 'weight')."""
    module, _, param = key.rpartition(".")
    return module, param


def transformer_to_original(diffusers_shapes):
    out = {}
    for key, shape in diffusers_shapes.items():
        if key in TRANSFORMER_TOP:
            out[TRANSFORMER_TOP[key]] = shape
            continue
        module, param = split_param(key)
        if module in TRANSFORMER_TOP:
            out[f"{TRANSFORMER_TOP[module]}.{param}"] = shape
            continue
        i, rel = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", module).groups()
        new = f"joint_blocks.{i}.{TRANSFORMER_BLOCK[rel]}.{param}"
        if new.endswith((".qkv.weight", ".qkv.bias")) and new in out:  # q, k, v stacked on dim 0
            shape = (out[new][0] + shape[0],) + shape[1:]
        out[new] = shape
    return {TRANSFORMER_PREFIX + k: v for k, v in out.items()}


def vae_to_original(diffusers_shapes, num_up_blocks):
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, shape in diffusers_shapes.items():
        if key in top:
            out[top[key]] = shape
            continue
        module, param = split_param(key)
        side, rest = module.split(".", 1)  # encoder / decoder
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            rest = f"down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", rest):
            rest = f"down.{m[1]}.downsample.conv"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):  # up blocks are reversed
            rest = f"up.{num_up_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", rest):
            rest = f"up.{num_up_blocks - 1 - int(m[1])}.upsample.conv"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
            rest = f"mid.block_{int(m[1]) + 1}.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
            rest = f"mid.attn_1.{VAE_ATTN[m[1]]}"
            if param == "weight" and len(shape) == 2:  # linear in diffusers, 1x1 conv in LDM
                shape = shape + (1, 1)
        else:
            raise KeyError(key)
        out[f"{side}.{rest.replace('conv_shortcut', 'nin_shortcut')}.{param}"] = shape
    return {VAE_PREFIX + k: v for k, v in out.items()}


def check(converter, original_shapes, expected_shapes, **kwargs):
    checkpoint = {k: torch.empty(s, device="meta") for k, s in original_shapes.items()}
    converted = {k: tuple(v.shape) for k, v in converter(checkpoint, **kwargs).items()}
    assert converted == expected_shapes, (
        sorted(set(converted) ^ set(expected_shapes))[:10]
        or [k for k in converted if converted[k] != expected_shapes[k]][:10]
    )
    return checkpoint


def main(path):
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**TRANSFORMER_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
    t_shapes, v_shapes = shapes_of(transformer), shapes_of(vae)

    t_orig = transformer_to_original(t_shapes)
    v_orig = vae_to_original(v_shapes, len(VAE_CONFIG["up_block_types"]))

    # The transformer converter pops what it uses: anything left over was not mapped.
    leftover = check(convert_sd3_transformer_checkpoint_to_diffusers, t_orig, t_shapes)
    assert not leftover, sorted(leftover)
    # The VAE converter copies rather than pops: a 1:1 mapping has as many keys on each side.
    assert len(v_orig) == len(v_shapes)
    check(convert_ldm_vae_checkpoint, v_orig, v_shapes, config=VAE_CONFIG)

    keys = {**t_orig, **v_orig}
    with open(path, "w") as f:
        for k in sorted(keys):
            f.write(f"{k}\t{','.join(map(str, keys[k]))}\n")

    numel = lambda d: sum(torch.Size(s).numel() for s in d.values())  # noqa: E731
    print(f"transformer: {len(t_orig)} tensors, {numel(t_orig):,} params")
    print(f"vae:         {len(v_orig)} tensors, {numel(v_orig):,} params")
    print(f"total:       {len(keys)} tensors -> {path}")


if __name__ == "__main__":
    main(sys.argv[1])
