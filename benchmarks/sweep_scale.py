"""A 200-edit sweep on the bundled model: in this process, in 2 local worker processes, on 2 Ray workers (and,
for reference, in this process with 2 threads). The results must be the same, bit for bit, whatever ran them
(the thread count per edit is fixed: 1); the throughput of each is printed next to the others.

    python benchmarks/sweep_scale.py [--seeds 50] [--steps 20] [--out /tmp/sweep_scale]
"""

import argparse
import shutil
import time
from pathlib import Path

from report import header, row

import minip2p
from minip2p.evaluation import SWAPS

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
    args = p.parse_args()
    spec = [
        {"id": f"swap{k}", "source": s, "target": t, "seeds": list(range(args.seeds)), "steps": args.steps}
        for k, (s, t, _) in enumerate(SWAPS)
    ]
    results, seconds, per_edit = {}, {}, {}
    for name, options in RUNS.items():
        out = Path(args.out) / f"run{len(results)}"  # one folder per run
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        records = minip2p.sweep(spec, out, progress=False, **options)
        seconds[name] = time.perf_counter() - t0
        per_edit[name] = sum(r["seconds"] for r in records) / len(records)
        results[name] = ([{k: v for k, v in r.items() if k != "seconds"} for r in records], out)
    reference, reference_out = results["in-process, 1 thread"]
    n = len(reference)
    print(f"{n} edits ({len(SWAPS)} word swaps x {args.seeds} seeds, {args.steps} DDIM steps), bundled model")
    print(
        header(
            "run",
            "wall time (s)",
            "edits / minute",
            "vs in-process",
            "s per edit (in the worker)",
            "same results",
        )
    )
    base = seconds["in-process, 1 thread"]
    for name in RUNS:
        records, out = results[name]
        same = records == reference and all(
            (out / f).read_bytes() == (reference_out / f).read_bytes()
            for r in records
            for f in r["images"].values()
        )
        print(
            row(
                name,
                f"{seconds[name]:.1f}",
                f"{60 * n / seconds[name]:.1f}",
                f"{base / seconds[name]:.2f}x",
                f"{per_edit[name]:.2f}",
                same,
            )
        )


if __name__ == "__main__":
    main()
