"""A full-size Prompt-to-Prompt edit: DDIM 50 vs DPM-Solver++ 20 vs DPM++ 20 from a recording, fp32 and bf16.

    python benchmarks/edit_512.py [--steps 3] [--runs 3] [--dtypes float32 bfloat16] [--diffusers]
    python benchmarks/edit_512.py --device cuda --dtypes float32 float16 bfloat16

The SD1.5 layout with random weights, written as a single file and read as a user would (`minip2p.load`;
with --diffusers also diffusers' `from_single_file` converters), 512x512. Rows: a Replace + LocalBlend edit
of 2 prompts (UNet batch 4 with guidance); plain generation of the same 2 prompts; `pipe.record` of the
source alone (batch 2, its maps kept); an edit from that recording (the target alone, batch 2); 3 targets of
one source in one batch (batch 8); diffusers' plain generation with --diffusers. A run samples `--steps`
steps of a `--steps`-step schedule with DPM-Solver++ (a step costs what a DDIM step costs: one UNet call;
the solver's update is a few vector operations) and is timed whole, text encoding included; s/step is the
median over `--runs` interleaved runs, after one warm-up run of each. Peak memory is measured in a fresh
process per row (RSS on the CPU, allocated memory on CUDA). Projections: N x s/step + one VAE decode of the
images the row makes (timed once per dtype).
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
from minip2p import ModelConfig
from minip2p.testing import ldm_config, small_config, write_checkpoint
from minip2p.text import load_tokenizer

PROMPTS = ["a photo of a cat sitting on a bench", "a photo of a dog sitting on a bench"]
BLEND = ["cat", "dog"]
TARGETS = [PROMPTS[1], "a photo of a fox sitting on a bench", "a photo of a rabbit sitting on a bench"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROWS = ("edit", "plain", "record", "replay", "batch3")
NAMES = {
    "edit": "Replace + LocalBlend",
    "plain": "plain generation, 2 prompts",
    "record": "record the source",
    "replay": "edit from the recording",
    "batch3": "3 targets, one batch",
    "diffusers": "diffusers plain",
}


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


def build(kind, path, cfg, dtype, device):  # kind: "diffusers", else minip2p
    if kind == "diffusers":
        return diffusers_pipeline(path, cfg, dtype, device)
    return minip2p.load(path, dtype=dtype, device=device)


def run(kind, pipe, steps, size, recording=None):
    """One timed unit: `steps` sampling steps at size x size, latents out (no decode)."""
    if kind == "diffusers":
        g = torch.Generator("cpu").manual_seed(0)
        with torch.no_grad():
            out = pipe(
                PROMPTS, height=size, width=size, num_inference_steps=steps, generator=g, output_type="latent"
            )
        return out.images
    options = dict(seed=0, steps=steps, sampler="dpm++", height=size, width=size, progress=False)
    if kind == "plain":
        return pipe.sample(PROMPTS, **options)
    if kind == "record":
        return pipe.record(PROMPTS[0], **options)
    if kind == "replay":
        return pipe.edit(recording, PROMPTS[1], blend=BLEND, output="latent", progress=False)
    if kind == "batch3":
        blends = [["cat", t.split()[4]] for t in TARGETS]  # cat -> dog, fox, rabbit
        return pipe.edit(PROMPTS[0], TARGETS, blend=blends, output="latent", **options)
    return pipe.edit(*PROMPTS, kind="replace", blend=BLEND, output="latent", **options)


def recording_for(kind, pipe, steps, size):
    return run("record", pipe, steps, size) if kind == "replay" else None


def child(args):
    """In a fresh process: load one row's model, run it once, print (MiB with the model loaded, peak MiB)."""
    kind, dtype = args.child.split(":")
    cfg = model_config(args)
    pipe = build(kind, args.path, cfg, DTYPES[dtype], args.device)
    recording = recording_for(kind, pipe, args.steps, cfg.image_size)  # held: part of the replay's memory
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what loading freed goes back, on both sides alike
    base = rss_mib() if args.device == "cpu" else 0.0
    _, _, peak = measured_on(args.device, run, kind, pipe, args.steps, cfg.image_size, recording)
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
    p.add_argument("--diffusers", action="store_true", help="add diffusers' plain generation as a row")
    p.add_argument(
        "--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to run (edit: always)"
    )
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
        rows = ("edit", *(r for r in args.rows if r != "edit")) + (("diffusers",) if args.diffusers else ())
        keys = [(kind, dt) for dt in args.dtypes for kind in rows]
        pipes = {dt: build("minip2p", args.path, cfg, DTYPES[dt], args.device) for dt in args.dtypes}
        if args.diffusers:
            pipes.update(
                {
                    ("diffusers", dt): build("diffusers", args.path, cfg, DTYPES[dt], args.device)
                    for dt in args.dtypes
                }
            )
        model = {k: pipes.get(k, pipes[k[1]]) for k in keys}
        recordings = {dt: run("record", pipes[dt], args.steps, cfg.image_size) for dt in args.dtypes}
        for kind, dt in keys:
            run(
                kind, model[kind, dt], 1, cfg.image_size, run("record", pipes[dt], 1, cfg.image_size)
            )  # warm-up
        times = {k: [] for k in keys}
        for _ in range(args.runs):
            for k in keys:
                timed = measured_on(
                    args.device, run, k[0], model[k], args.steps, cfg.image_size, recordings[k[1]]
                )
                times[k].append(timed[1] / args.steps)
        decode = {
            dt: measured_on(args.device, pipes[dt].decode, recordings[dt].latents[-1])[1]
            for dt in args.dtypes
        }
        per_step = {dt: recordings[dt].nbytes / args.steps for dt in args.dtypes}
        del pipes, model, recordings
        memory = {k: peak_memory(args, *k) for k in keys}
    report(args, cfg, keys, times, decode, memory, per_step)


def report(args, cfg, keys, times, decode, memory, per_step):
    """decode: seconds to decode one image (the VAE's time is per image)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    where = f"{torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    model = "narrow SD1" if args.small else "SD1.5"
    memory_kind = "peak RSS" if args.device == "cpu" else "peak allocated"
    print(
        f"{model} layout (random weights), {cfg.image_size}px, {args.device} ({where}); runs of {args.steps} "
        f"DPM++ steps, median of {args.runs} interleaved; memory: {memory_kind}"
    )
    print(header("row", "dtype", "s/step", "/ edit", f"{memory_kind} MiB", "DDIM 50", "DPM++ 20"))
    images = {"edit": 2, "plain": 2, "record": 0, "replay": 1, "batch3": 4, "diffusers": 2}
    for kind, dt in keys:
        m, decoded = med[kind, dt], images[kind] * decode[dt]
        ddim = f"{(50 * m + decoded) / 60:.1f} min" if kind in ("edit", "plain", "diffusers") else ""
        print(
            row(
                NAMES[kind],
                dt,
                f"{m:.2f}",
                f"{m / med['edit', dt]:.3f}",
                f"{memory[kind, dt][1]:.0f}",
                ddim,
                f"{(20 * m + decoded) / 60:.1f} min",
            )
        )
    for dt in args.dtypes if {"record", "replay", "batch3"} <= {k for k, _ in keys} else []:
        first = 20 * med["edit", dt] + 2 * decode[dt]
        further = 20 * med["replay", dt] + decode[dt]
        recorded = 20 * med["record", dt]
        print(
            f"{dt}: a further edit of a recorded source / the first edit (DPM++ 20, decode included): "
            f"{further / first:.3f}; recording + its first edit / the plain edit: "
            f"{(recorded + further) / first:.3f}; 3 targets in one batch, per target / one edit: "
            f"{med['batch3', dt] / 3 / med['edit', dt]:.3f}; the recording holds "
            f"{per_step[dt] / 2**20:.0f} MiB per step ({20 * per_step[dt] / 2**30:.2f} GiB at 20 steps)"
        )
    ref = args.dtypes[0]
    for dt in args.dtypes[1:]:
        print(
            f"{dt} / {ref}: " + ", ".join(f"{k} {med[k, dt] / med[k, ref]:.3f}" for k, d in keys if d == ref)
        )
    print(
        "runs (s/step): "
        + "; ".join(f"{k[0]} {k[1]} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items())
    )
    print("VAE decode of one image (s): " + ", ".join(f"{dt} {s:.1f}" for dt, s in decode.items()))


if __name__ == "__main__":
    main()
