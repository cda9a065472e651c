"""A 200-edit sweep on the bundled model: in this process, in 2 local worker processes, on 2 Ray workers (and,
for reference, in this process with 2 threads). The results must be the same, bit for bit, whatever ran them
(the thread count per edit is fixed: 1); the throughput of each is printed next to the others.

    python benchmarks/sweep_scale.py [--seeds 50] [--steps 20] [--out /tmp/sweep_scale]
    python benchmarks/sweep_scale.py --grid --seeds 10   # 4 cross_replace_steps per pair: batched vs not

With --grid, every word swap takes a grid of 4 cross_replace_steps values, and the runs are the same sweep
computed one edit at a time (--batch 1, each edit its own source) and in batches of 4 (the source once per
batch), in this process and in 2 workers; the results are compared with the first run's, pixel by pixel.
"""

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image
from report import header, row

import minip2p
from minip2p.evaluation import SWAPS

GRID = [0.2, 0.4, 0.6, 0.8]
GRID_RUNS = {
    "in-process, one edit at a time (batch 1)": dict(workers=1, batch=1),
    "in-process, batches of 4": dict(workers=1, batch=4),
    "2 local workers, batch 1": dict(workers=2, batch=1),
    "2 local workers, batches of 4": dict(workers=2, batch=4),
}
RUNS = {  # name: sweep options
    "in-process, 1 thread": dict(workers=1),
    "2 local workers x 1 thread": dict(workers=2),
    "Ray, 2 workers x 1 thread": dict(workers=2, ray=True),
    "in-process, 2 threads (other bits)": dict(workers=1, threads=2),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="/tmp/sweep_scale")
    p.add_argument("--grid", action="store_true", help="4 cross_replace_steps per pair: batched vs not")
    args = p.parse_args()
    spec = [
        {"id": f"swap{k}", "source": s, "target": t, "seeds": list(range(args.seeds)), "steps": args.steps}
        for k, (s, t, _) in enumerate(SWAPS)
    ]
    runs = GRID_RUNS if args.grid else RUNS
    if args.grid:
        spec = [dict(line, cross_replace_steps=GRID) for line in spec]
    results, seconds, per_edit = {}, {}, {}
    for name, options in runs.items():
        out = Path(args.out) / f"run{len(results)}"  # one folder per run
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        records = minip2p.sweep(spec, out, progress=False, **options)
        seconds[name] = time.perf_counter() - t0
        per_edit[name] = sum(r["seconds"] for r in records) / len(records)
        results[name] = ([{k: v for k, v in r.items() if k != "seconds"} for r in records], out)
    first = next(iter(runs))
    reference, reference_out = results[first]
    n = len(reference)
    grid = f" x {len(GRID)} cross_replace_steps" if args.grid else ""
    print(
        f"{n} edits ({len(SWAPS)} word swaps x {args.seeds} seeds{grid}, {args.steps} DDIM steps), "
        "bundled model"
    )
    print(
        header(
            "run",
            "wall time (s)",
            "edits / minute",
            "vs in-process",
            "s per edit (in the worker)",
            "same results (bit for bit)",
            "largest pixel difference",
        )
    )
    base = seconds[first]
    for name in runs:
        records, out = results[name]
        files = [f for r in records for f in r["images"].values()]
        same = records == reference and all(
            (out / f).read_bytes() == (reference_out / f).read_bytes() for f in files
        )
        pixels = max(
            np.abs(
                np.asarray(Image.open(out / f), dtype=int)
                - np.asarray(Image.open(reference_out / f), dtype=int)
            ).max()
            for f in files
        )
        print(
            row(
                name,
                f"{seconds[name]:.1f}",
                f"{60 * n / seconds[name]:.1f}",
                f"{base / seconds[name]:.2f}x",
                f"{per_edit[name]:.2f}",
                same,
                f"{pixels} / 255",
            )
        )


if __name__ == "__main__":
    main()
