"""Write the tensor keys and shapes of Stability's single-file `sd3.5_medium.safetensors`.

Nothing is downloaded; the list is derived from diffusers' own code:

1. The diffusers models are built on the meta device (no memory allocated) with the SD3.5 Medium configs:
   SD3Transformer2DModel (24 MMDiT-X layers, dual attention in layers 0-12, RMS qk-norm) and the SD3
   AutoencoderKL (16 latent channels, no quant_conv / post_quant_conv).
2. Their state_dict keys are mapped back to the single-file layout by the tables minip2p reads diffusers
   folders with (`minip2p.sd3_folder.transformer_keys`, `vae_keys`: q, k, v stacked into `qkv`, the VAE's
   mid-attention linears back to 1x1 convs, the prefixes `model.diffusion_model.` and `first_stage_model.`).
3. Check: meta tensors with those keys and shapes are run through diffusers' own converters
   (`convert_sd3_transformer_checkpoint_to_diffusers`, `convert_ldm_vae_checkpoint`). The converted keys and
   shapes must equal the diffusers models' state dicts exactly, and every key must be used: so the list is
   diffusers' single-file layout, and the folder tables are its exact inverse at full size.

Output: one line per tensor, `key<TAB>comma-separated shape`, sorted by key.

Usage: python scripts/sd35_medium_keys.py tests/data/sd35_medium_keys.txt
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_vae_checkpoint,
    convert_sd3_transformer_checkpoint_to_diffusers,
)

from minip2p.sd3_folder import transformer_keys, vae_keys

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
def shapes_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


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
    here = Path("sd3.5_medium")
    t_orig = {k: tuple(v.shape) for k, v in transformer_keys(transformer.state_dict(), here).items()}
    v_orig = {k: tuple(v.shape) for k, v in vae_keys(vae.state_dict(), here).items()}

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
