"""How an edit's block sits inside SD3's joint softmax: the numbers behind `attention.joint_edit`'s rule.

    python benchmarks/sd3_joint.py [--steps 28] [--seed 0]

On a narrow random SD3.5 (testing.small_sd3_config, with T5), one Replace edit is sampled; at every joint
block and step the joint maps are read before the edit touches them, and for the image queries of the
conditional prompts this prints, per third of the blocks: the share of each row's attention on the image, the
77 CLIP tokens and the T5 tokens; how far the source's CLIP-block mass is from the target's (the error of
ReFlex's rule, which pastes the source's block as it is: a target row then sums to 1 + (m_source -
m_target)); and, under our rule (the source's distribution over the CLIP tokens times the target's own mass),
the largest |row sum - 1|. Random weights say how the arithmetic behaves, not which rule edits better: that
needs a trained model (the shapes-world MM-DiT).
"""

import argparse
import importlib
import statistics
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

import minip2p
from minip2p import make_edit
from minip2p.attention import joint_block
from minip2p.testing import random_sd3_checkpoint, small_sd3_config, write_t5_tokenizer

attention_module = importlib.import_module("minip2p.attention")  # the package's `attention` is the function
PROMPTS = ["a red circle on a white background", "a blue square on a white background"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp())
    cfg = small_sd3_config("sd3.5")
    save_file(random_sd3_checkpoint(cfg, seed=3), str(folder / "sd35.safetensors"))
    write_t5_tokenizer(folder / "tokenizer_3", " ".join(PROMPTS).split())
    pipe = minip2p.load(folder / "sd35.safetensors", tokenizers=folder)
    rows, original = {}, attention_module.joint_edit

    def recording(attn, place, controller, n):
        cond = attn.view(2, -1, *attn.shape[1:])[1]  # (prompts, heads, n + T, n + T): conditional half
        image, clip = joint_block("image->text", n, place.prompt_tokens)
        shares = torch.stack([cond[..., image, :n].sum(-1), cond[..., image, clip].sum(-1)])
        mass_src, mass_tgt = shares[1, 0], shares[1, 1]
        edited = original(attn, place, controller, n)
        sums = attn.view(2, -1, *attn.shape[1:])[1][1, :, image].sum(-1)
        rows.setdefault(place.where, []).append(
            (
                shares.mean(dim=(1, 2, 3)),
                ((mass_src - mass_tgt).abs() / mass_tgt).mean(),
                (sums - 1).abs().max(),
            )
        )
        return edited

    attention_module.joint_edit = recording
    edit = make_edit(*PROMPTS, pipe.tokenizer)
    pipe.generate(PROMPTS, seed=args.seed, steps=args.steps, controller=edit, progress=False)
    attention_module.joint_edit = original
    print(f"narrow random SD3.5 ({cfg.mmdit.depth} blocks), Replace, {args.steps} steps, seed {args.seed}")
    print(
        "| blocks | on image | on CLIP | on T5 | abs(m_source - m_target) / m_target | max abs(row sum - 1) |"
    )
    print("|---|---|---|---|---|---|")
    for where, values in rows.items():
        image, clip = (statistics.mean(float(v[0][i]) for v in values) for i in (0, 1))
        rel = statistics.mean(float(v[1]) for v in values)
        err = max(float(v[2]) for v in values)
        print(f"| {where} | {image:.3f} | {clip:.3f} | {1 - image - clip:.3f} | {rel:.4f} | {err:.1e} |")


if __name__ == "__main__":
    main()
