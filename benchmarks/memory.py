"""Time and peak memory of one call, for the benchmarks: resident memory on the CPU (Linux: reads
/proc/self/status), allocated memory on a CUDA device."""
import threading
import time


def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measured(fn):
    """-> (fn's result, seconds, peak RSS in MiB while it ran), RSS sampled every 2 ms on a thread."""
    peak, done = [rss_mib()], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)
    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    return out, seconds, peak[0]


def measured_on(device, fn):
    """-> (fn's result, seconds, peak MiB): peak RSS on the CPU, peak allocated GPU memory (torch) on CUDA."""
    import torch
    if torch.device(device).type != "cuda":
        return measured(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) / 2 ** 20
