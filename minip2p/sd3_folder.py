"""Reading a diffusers SD3 / SD3.5 folder (model_index.json, transformer/, vae/, text_encoder/,
text_encoder_2/, optional text_encoder_3/, tokenizer/, tokenizer_2/, tokenizer_3/) into ONE dict in
Stability's single-file layout.

Why one dict in that layout: `sd3_loading.load_sd3` already reads the config from a single file's shapes and
checks every part against the model built from it; a folder turned into the same dict gets the same checks
and the same model, with no second loader to keep in step. The transformer and VAE tables here are the exact
inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` and `convert_ldm_vae_checkpoint`
(q, k, v fused back into one `qkv`; the (scale, shift) halves diffusers swaps put back as (shift, scale); the
VAE's mid-attention linears back to 1x1 convs); the text encoders are transformers' own, kept as they are.
"""

import re
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import CheckpointError
from .diffusers_folder import read_json, vae_key
from .sd3_loading import TEXT_PREFIXES

REQUIRED = ("transformer", "vae", "text_encoder", "text_encoder_2")
TEXT_FOLDERS = {"text_encoder": "text", "text_encoder_2": "text_2", "text_encoder_3": "t5"}

# diffusers name -> Stability name: whole keys, then modules (the parameter name follows unchanged)
TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
BLOCK = {  # inside transformer_blocks.N (-> joint_blocks.N)
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
# the q, k, v projections diffusers splits: module -> (the fused Stability module, its third of `qkv`)
QKV = {
    f"{attn}.{name.format(c)}": (fused, i)
    for attn, name, fused in (
        ("attn", "to_{}", "x_block.attn.qkv"),
        ("attn", "add_{}_proj", "context_block.attn.qkv"),
        ("attn2", "to_{}", "x_block.attn2.qkv"),
    )
    for i, c in enumerate("qkv")
}
BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def class_name(path: Path):
    """model_index.json's `_class_name` (None when the folder has no model_index.json)."""
    index = path / "model_index.json"
    if not index.exists() and not index.is_symlink():
        return None
    return read_json(index).get("_class_name")


def is_sd3_folder(path) -> bool:
    """A folder to read here: its model_index.json names an SD3 pipeline, or it has a transformer/ and no
    unet/ (a folder without model_index.json; other transformer models are refused by `read_sd3_folder`)."""
    path = Path(path)
    name = class_name(path)
    if isinstance(name, str) and name.startswith("StableDiffusion3"):
        return True
    return (path / "transformer").is_dir() and not (path / "unet").is_dir()


def weight_files(folder: Path) -> tuple:
    """-> (the .safetensors files to read, the tensor names a shard index promises or None). Sharded: the
    files the index names (plain names beside it: nothing elsewhere is read); else all, full precision before
    fp16 variants (which hold the same tensors). Pickles (.bin) are refused: unpickling runs code (the
    message is diffusers_folder's; its `read_weights` reads files unchecked, a FIFO would block it)."""
    plain, variant = (sorted(folder.glob(f"*.safetensors.index{v}.json")) for v in ("", ".*"))
    index = plain or variant  # a variant's index (.fp16.json) when it is all there is
    if index:
        weight_map = read_json(index[0]).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index[0]} holds no weight_map of tensor names to shard files")
        names = sorted(set(weight_map.values()))
        bad = [n for n in names if Path(n).name != n or not n.endswith(".safetensors")]
        if bad or not names:
            what = f"names {bad[0]!r}" if bad else "lists no shards"
            raise CheckpointError(f"{index[0]} {what}: shards are .safetensors files beside it")
        return [folder / n for n in names], set(weight_map)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(folder.glob("*.bin"))
        hint = f" (found {pickles[0].name}: a pickle, which minip2p does not read)" if pickles else ""
        raise CheckpointError(f"{folder}: no .safetensors weights{hint}")
    return [f for f in files if ".fp16." not in f.name] or files, None


def read_weights(folder: Path, files, promised) -> dict:
    """The tensors of `files` (each checked by `checkpoint.read_safetensors`: a regular file, complete, not a
    broken link), and every tensor the shard index promised."""
    sd = {}
    for f in files:
        sd.update(ckpt.read_safetensors(f)[0])
    lost = sorted((promised or set()) - sd.keys())
    if lost:
        raise CheckpointError(
            f"{folder}: {len(lost)} tensors its index lists are in no shard, e.g. {lost[0]}"
        )
    return sd


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(scale, shift) -> (shift, scale): diffusers' `swap_scale_shift` undone (it is its own inverse)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def transformer_keys(sd: dict, folder: Path) -> dict:
    """SD3Transformer2DModel keys -> Stability's `model.diffusion_model.` keys. The last block's
    norm1_context and norm_out have their halves swapped back; keys not in the tables keep their names (the
    loader's key check reports them)."""
    blocks = [int(m[1]) for k in sd if (m := BLOCK_KEY.fullmatch(k))]
    last = max(blocks, default=-1)
    out, thirds = {}, {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        m = BLOCK_KEY.fullmatch(module)
        if m and m[2] in QKV:
            fused, i = QKV[m[2]]
            thirds.setdefault(f"joint_blocks.{m[1]}.{fused}.{param}", {})[i] = value
            continue
        if m:
            new = f"joint_blocks.{m[1]}.{BLOCK.get(m[2], m[2])}.{param}"
        else:
            new = TOP.get(key) or f"{TOP.get(module, module)}.{param}"
        if module == "norm_out.linear" or (m and m[2] == "norm1_context.linear" and int(m[1]) == last):
            value = swap_halves(value)
        out[new] = value
    for new, parts in thirds.items():
        if len(parts) < 3:
            lacking = "qkv"[min(set(range(3)) - parts.keys())]
            raise CheckpointError(f"{folder}: {new} has no {lacking} projection (the file is incomplete)")
        out[new] = torch.cat([parts[i] for i in range(3)], dim=0)
    return {ckpt.UNET_PREFIX + k: v for k, v in out.items()}


def vae_keys(sd: dict, folder: Path) -> dict:
    """AutoencoderKL keys -> Stability's `first_stage_model.` keys (the SD1 folder table: the layout is
    the same), the mid attention's linear weights (C, C) back to 1x1 convs (C, C, 1, 1)."""
    ups = [int(m[1]) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))]
    levels = 1 + max(ups, default=-1)
    out = {}
    for k, v in sd.items():
        k = vae_key(k, levels)
        attn_linear = ".mid.attn_1." in k and k.endswith("weight") and v.dim() == 2
        out[ckpt.VAE_PREFIX + k] = v[..., None, None] if attn_linear else v
    return out


def text_keys(prefix: str):
    """A text encoder's transformers keys, as they are, under its single-file prefix (position_ids, a
    buffer some versions save, dropped)."""
    return lambda sd, folder: {prefix + k: v for k, v in sd.items() if not k.endswith("position_ids")}


CONVERT = {"transformer": transformer_keys, "vae": vae_keys}
CONVERT.update({sub: text_keys(TEXT_PREFIXES[name]) for sub, name in TEXT_FOLDERS.items()})


def check_folder(path: Path) -> list:
    """The parts to read, checked before any weights: an SD3 pipeline, the required subfolders, T5's
    tokenizer where there is a T5."""
    name = class_name(path)
    if name is not None and not (isinstance(name, str) and name.startswith("StableDiffusion3")):
        raise CheckpointError(
            f"{path}/model_index.json names {name!r}: minip2p reads SD3 / SD3.5 folders "
            "(StableDiffusion3Pipeline) and SD1 / SD2 / SDXL ones (unet/)"
        )
    for sub in REQUIRED:
        if not (path / sub).is_dir():
            raise CheckpointError(
                f"{path} is an SD3 diffusers folder without {sub}/: it needs transformer/, vae/, "
                "text_encoder/ and text_encoder_2/ (text_encoder_3/ if it has a T5)"
            )
    subs = list(REQUIRED) + (["text_encoder_3"] if (path / "text_encoder_3").is_dir() else [])
    if "text_encoder_3" in subs and not (path / "tokenizer_3" / "tokenizer.json").is_file():
        raise CheckpointError(f"{path} has text_encoder_3/ (T5) but no tokenizer_3/tokenizer.json")
    return subs


def read_sd3_folder(path) -> dict:
    """A diffusers SD3 / SD3.5 folder -> one dict of tensors in Stability's single-file layout, for
    `load_sd3`. Every part's files are listed (its shard index read and checked) before any weights are read:
    a broken folder fails in a moment, not after gigabytes."""
    path = Path(path)
    files = {sub: weight_files(path / sub) for sub in check_folder(path)}
    tensors = {}
    for sub, (names, promised) in files.items():
        tensors.update(CONVERT[sub](read_weights(path / sub, names, promised), path / sub))
    return tensors
