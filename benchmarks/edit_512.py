"""A full-size Prompt-to-Prompt edit in fp32 and half precision: minip2p vs diffusers' plain generation.

    python benchmarks/edit_512.py [--steps 3] [--runs 3] [--dtypes float32 bfloat16] [--device cpu]
    python benchmarks/edit_512.py --device cuda --dtypes float32 float16 bfloat16

The SD1.5 layout with random weights, written as a single file and read by each side as a user would
(`minip2p.load`; diffusers' `from_single_file` converters for the UNet and VAE), 512x512, 2 prompts (UNet
batch 4 with guidance). Rows: a Replace + LocalBlend edit (minip2p), plain generation of the same 2 prompts
(minip2p, and diffusers' StableDiffusionPipeline with DDIM), in each dtype. A run samples `--steps` steps of
a `--steps`-step schedule (the edit's windows scale with it) and is timed whole, text encoding included;
s/step is the median over `--runs` interleaved runs, after one warm-up run of each. Peak memory is measured in
a fresh process per row (RSS on the CPU, allocated memory on CUDA). The projected 50-step edit is 50 x the
edit's s/step + one VAE decode (timed once per dtype).
"""

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from report import header, measured_on, row, rss_mib
from safetensors.torch import load_file

import minip2p
import minip2p_oracle as oracle
from minip2p import ModelConfig, make_edit
from minip2p.testing import ldm_config, small_config, write_checkpoint
from minip2p.text import load_tokenizer

PROMPTS = ["a photo of a cat sitting on a bench", "a photo of a dog sitting on a bench"]
BLEND = ("cat", "dog")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROWS = ("edit", "plain", "diffusers")


def model_config(args) -> ModelConfig:
    return small_config("sd1") if args.small else ModelConfig.sd1()


def diffusers_pipeline(path, cfg, dtype, device):
    """diffusers' SD pipeline on the same file: UNet and VAE through its single-file converters, the CLIP text
    encoder through its LDM CLIP converter, DDIM as SD's own schedule."""
    original = ldm_config(cfg)
    unet = UNet2DConditionModel.from_single_file(str(path), original_config=original)
    vae = AutoencoderKL.from_single_file(str(path), original_config=original)
    text = oracle.text_encoder(load_file(str(path)), cfg)
    tokenizer = load_tokenizer(cfg.text)  # the CLIP tokenizer files minip2p ships
    return oracle.sd_pipeline(unet, vae, text, tokenizer).to(device=device, dtype=dtype)


def build(kind, path, cfg, dtype, device):
    if kind == "diffusers":
        return diffusers_pipeline(path, cfg, dtype, device)
    return minip2p.load(path, dtype=dtype, device=device)


def run(kind, pipe, steps, size):
    """One timed unit: `steps` sampling steps of the 2 prompts at size x size, latents out (no decode)."""
    if kind == "diffusers":
        g = torch.Generator("cpu").manual_seed(0)
        with torch.no_grad():
            out = pipe(
                PROMPTS, height=size, width=size, num_inference_steps=steps, generator=g, output_type="latent"
            )
        return out.images
    controller = make_edit(*PROMPTS, pipe.tokenizer, kind="replace", blend=BLEND) if kind == "edit" else None
    options = dict(seed=0, steps=steps, controller=controller, height=size, width=size, progress=False)
    return pipe.sample(PROMPTS, **options)


def child(args):
    """In a fresh process: load one row's model, run it once, print (MiB with the model loaded, peak MiB)."""
    kind, dtype = args.child.split(":")
    cfg = model_config(args)
    pipe = build(kind, args.path, cfg, DTYPES[dtype], args.device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what loading freed goes back, on both sides alike
    base = rss_mib() if args.device == "cpu" else 0.0
    _, _, peak = measured_on(args.device, run, kind, pipe, args.steps, cfg.image_size)
    print(base, max(base, peak))


def peak_memory(args, kind, dtype):
    cmd = [sys.executable, __file__, "--child", f"{kind}:{dtype}", "--path", str(args.path)]
    cmd += ["--steps", "1", "--device", args.device] + (["--small"] if args.small else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return tuple(float(v) for v in out.strip().splitlines()[-1].split())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3, help="steps per timed run")
    p.add_argument("--runs", type=int, default=3, help="interleaved timed runs per row")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--small", action="store_true", help="a narrow model at 64x64: checks the script, in seconds"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    diffusers.utils.logging.set_verbosity_error()  # its advice on casting, once per model
    if args.child:
        return child(args)
    cfg = model_config(args)
    with tempfile.TemporaryDirectory() as d:
        args.path = Path(d) / "sd15_random.safetensors"
        write_checkpoint(args.path, cfg, with_config=args.small)  # real files carry no config
        keys = [(kind, dt) for dt in args.dtypes for kind in ROWS]
        pipes = {k: None for k in keys}
        for kind, dt in keys:  # the edit and plain rows share one minip2p model per dtype
            same = pipes.get(("edit", dt)) if kind == "plain" else None
            pipes[kind, dt] = same or build(kind, args.path, cfg, DTYPES[dt], args.device)
            run(kind, pipes[kind, dt], 1, cfg.image_size)  # warm-up
        times = {k: [] for k in keys}
        for _ in range(args.runs):
            for k in keys:
                seconds = measured_on(args.device, run, k[0], pipes[k], args.steps, cfg.image_size)[1]
                times[k].append(seconds / args.steps)
        decode = {}
        for dt in args.dtypes:
            ours = pipes["edit", dt]
            latents = run("plain", ours, 1, cfg.image_size)
            decode[dt] = measured_on(args.device, ours.decode, latents)[1]
        del pipes
        memory = {k: peak_memory(args, *k) for k in keys}
    report(args, cfg, keys, times, decode, memory)


def report(args, cfg, keys, times, decode, memory):
    med = {k: statistics.median(v) for k, v in times.items()}
    where = f"{torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    model = "narrow SD1" if args.small else "SD1.5"
    memory_kind = "peak RSS" if args.device == "cpu" else "peak allocated"
    print(
        f"{model} layout (random weights), {cfg.image_size}px, 2 prompts (UNet batch 4), {args.device} "
        f"({where}); runs of {args.steps} steps, median of {args.runs} interleaved; memory: {memory_kind}"
    )
    print(
        header(
            "row",
            "dtype",
            "s/step",
            "/ diffusers (same dtype)",
            "edit / plain",
            "peak MiB",
            "/ diffusers' peak",
            "50-step edit",
        )
    )
    for kind, dt in keys:
        m = med[kind, dt]
        edit_plain = f"{med['edit', dt] / med['plain', dt]:.3f}" if kind == "edit" else ""
        projected = f"{(50 * m + decode[dt]) / 60:.1f} min" if kind == "edit" else ""
        print(
            row(
                {
                    "edit": "minip2p Replace + LocalBlend",
                    "plain": "minip2p plain",
                    "diffusers": "diffusers plain",
                }[kind],
                dt,
                f"{m:.2f}",
                f"{m / med['diffusers', dt]:.3f}",
                edit_plain,
                f"{memory[kind, dt][1]:.0f}",
                f"{memory[kind, dt][1] / memory['diffusers', dt][1]:.3f}",
                projected,
            )
        )
    ref = args.dtypes[0]
    for dt in args.dtypes[1:]:
        print(
            f"minip2p {dt} / minip2p {ref}: edit {med['edit', dt] / med['edit', ref]:.3f}, "
            f"plain {med['plain', dt] / med['plain', ref]:.3f}"
        )
    print(
        "runs (s/step): "
        + "; ".join(f"{k[0]} {k[1]} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items())
    )
    print("VAE decode of 2 images (s): " + ", ".join(f"{dt} {s:.1f}" for dt, s in decode.items()))


if __name__ == "__main__":
    main()
