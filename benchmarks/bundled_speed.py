"""The bundled shapes-world model, fast: a 50-step edit and a null-text inversion per dtype and thread count,
and how far a bf16 edit's pixels are from the fp32 one's.

    python benchmarks/bundled_speed.py [--runs 3] [--seeds 8]

Times are medians of interleaved runs (after a warm-up of each), in this process with torch.set_num_threads.
The pixel difference compares the same edit (seed, prompts) made in bfloat16 and in float32, over `--seeds`
seeds, in 0-255 units: whether the edit does what it should in bf16 is benchmarks/shapes_edits.py --dtype
bfloat16.
"""

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from report import header, row

import minip2p
from minip2p import defaults, shapes

SOURCE = "a red circle and a blue square on a white background"
TARGET = "a green circle and a blue square on a white background"
DTYPES = ("float32", "bfloat16")


def edit(pipe, seed, progress=False):
    return pipe.edit(SOURCE, TARGET, seed=seed, steps=defaults.STEPS, output="tensor", progress=progress)


def null_text(pipe, image):
    return pipe.invert(image, SOURCE, method="null-text", progress=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args()
    pipes = {dt: minip2p.load(dtype=dt) for dt in DTYPES}
    image = Image.fromarray(shapes.render(shapes.parse(SOURCE), np.random.default_rng(0))[0])
    jobs = {
        (what, dt, threads): (fn, pipes[dt], arg)
        for what, fn, arg in (("50-step edit", edit, 0), ("null-text inversion", null_text, image))
        for dt in DTYPES
        for threads in (1, 2)
    }
    times = {k: [] for k in jobs}
    for k, (fn, pipe, arg) in jobs.items():
        torch.set_num_threads(k[2])
        fn(pipe, arg)  # warm-up
    for _ in range(args.runs):
        for k, (fn, pipe, arg) in jobs.items():
            torch.set_num_threads(k[2])
            t0 = time.perf_counter()
            fn(pipe, arg)
            times[k].append(time.perf_counter() - t0)
    torch.set_num_threads(2)
    print(
        f"bundled shapes model, {pipes['float32'].config.image_size}px, {defaults.STEPS} DDIM steps, CPU, "
        f"median of {args.runs} interleaved runs"
    )
    print(header("what", "dtype", "threads", "seconds", "/ float32 at 2 threads"))
    for (what, dt, threads), v in times.items():
        ref = statistics.median(times[what, "float32", 2])
        print(row(what, dt, threads, f"{statistics.median(v):.2f}", f"{statistics.median(v) / ref:.2f}"))

    diffs = []
    for seed in range(args.seeds):
        a, b = (edit(pipes[dt], seed).float() for dt in DTYPES)
        diffs.append(((a - b).abs() * 127.5).numpy())
    d = np.stack(diffs)
    print(
        f"bf16 vs fp32 edit, {args.seeds} seeds (source and edited image), per pixel and channel (0-255): "
        f"mean {d.mean():.2f}, 99th percentile {np.percentile(d, 99):.1f}, max {d.max():.1f}"
    )


if __name__ == "__main__":
    main()
