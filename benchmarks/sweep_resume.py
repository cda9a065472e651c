"""What a resume costs as a spec line grows: a folder holding the first 2 edits of a line with N seeds, then a
re-run of the same spec timed up to the point where it would compute (everything but the edits). Prints the
size of a record and of results.jsonl, and the seconds, for N = 2 .. 10^6.

    python benchmarks/sweep_resume.py
"""

import importlib
import tempfile
import time
from pathlib import Path

import minip2p

sweep_module = importlib.import_module("minip2p.sweep")  # minip2p.sweep is the function
LINE = {"id": "e", "source": "a red circle and a blue square", "target": "a red square and a blue square"}


def first_two(real, todo, *args):
    """The first 2 edits computed and written, then an interruption (the rest never run)."""
    yield from real(todo[:2], *args)
    raise KeyboardInterrupt


def stop_at_first_edit(todo, *args):
    raise KeyboardInterrupt
    yield


def main():
    real = sweep_module.results
    print("| seeds in the line | record bytes | results.jsonl bytes | resume, s (to the first edit) |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (2, 10**3, 10**5, 10**6):
            out, spec = Path(tmp) / str(n), [dict(LINE, seeds=list(range(n)), steps=2)]
            sweep_module.results = lambda todo, *a: first_two(real, todo, *a)
            try:
                minip2p.sweep(spec, out, progress=False, batch=1)
            except KeyboardInterrupt:
                pass
            sweep_module.results = stop_at_first_edit  # the resume, up to its first edit
            t0 = time.perf_counter()
            try:
                minip2p.sweep(spec, out, progress=False, batch=1)
            except KeyboardInterrupt:
                seconds = time.perf_counter() - t0
            records = (out / "results.jsonl").read_text().splitlines()
            size = len(records[0]) + 1
            print(f"| {n:,} | {size} | {sum(len(r) + 1 for r in records)} | {seconds:.2f} |")
    sweep_module.results = real


if __name__ == "__main__":
    main()
