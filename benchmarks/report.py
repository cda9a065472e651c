"""What the benchmarks share: time and peak memory of one call (resident memory on the CPU, from Linux's
/proc/self/status; allocated memory on a CUDA device), and Markdown tables as docs/RESULTS.md holds them."""

import threading
import time

import torch


def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measured(fn, *args, **kwargs):
    """fn(*args, **kwargs) -> (its result, seconds, peak RSS in MiB while it ran), RSS sampled every 2 ms."""
    peak, done = [rss_mib()], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    return out, seconds, peak[0]


def measured_on(device, fn, *args, **kwargs):
    """-> (fn's result, seconds, peak MiB): peak RSS on the CPU, peak allocated GPU memory (torch) on CUDA."""
    if torch.device(device).type != "cuda":
        return measured(fn, *args, **kwargs)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) / 2**20


def header(*columns) -> str:
    """The first two lines of a Markdown table."""
    return "| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns)


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
