"""Where a sweep's items are computed: in this process, in N local processes, or on Ray workers (one model per
worker, a GPU each where the cluster has them), a batch of items (`sweep.batches`) at a time. Each yields the
workers' results as they finish; the driver (`sweep.sweep`) alone writes files, so a worker that dies loses
only the batches it held, run again.
"""

import io
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from .checkpoint import is_bundled
from .checks import cut, short
from .loading import load
from .metrics import ClipScorer, shapes_metrics

RAY_TIMEOUT = 10  # seconds a Ray cluster's address has to answer
RETRIES = 3  # workers that die are started again this many times (the items they held are run again)
_worker = None  # the model of a local worker process


class Worker:
    """One model (and CLIP scorer), loaded once; computes items. The same in this process, in a local
    process or in a Ray actor."""

    def __init__(
        self, weights=None, device=None, dtype="float32", vae_dtype=None, clip=None, threads=1, shapes=None
    ):
        self.threads, self.fatal, device = threads, None, device or "cpu"
        try:
            self.pipe = load(weights, device=device, dtype=dtype, vae_dtype=vae_dtype)
            self.clip = ClipScorer(clip, device) if clip else None
        except Exception as e:  # any cause: the driver stops on the first item with this line, no retries
            self.fatal = f"a sweep worker cannot start: {cut(e, 300)}"
        self.shapes = is_bundled(weights) if shapes is None else shapes  # the analyser's metrics

    def run(self, items: list) -> list:
        """A batch of items (one source and seed, `sweep.batches`) -> a result each: {"key", "metrics",
        "seconds", "png": {"source": bytes, "edited": bytes}}, or with "error" (the message) where the edit
        failed; [{"fatal": message}] if this worker has no model."""
        if self.fatal is not None:
            return [{"fatal": self.fatal}]
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            t0 = time.perf_counter()
            try:
                images = self.edit(items)
            except (
                ValueError,
                RuntimeError,
            ) as e:  # this batch only (NaN in fp16, a map size the model lacks)
                if len(items) > 1:  # which edit failed: each alone
                    return [r for item in items for r in self.run([item])]
                return [
                    {"key": items[0].key, "metrics": {}, "seconds": time.perf_counter() - t0, "error": str(e)}
                ]
            seconds = (time.perf_counter() - t0) / len(items)
            return [self.result(item, images[0], edited, seconds) for item, edited in zip(items, images[1:])]
        finally:
            torch.set_num_threads(threads)

    def edit(self, items: list) -> list:
        """One sampling pass: the source and every item's target, each with its own edit settings."""
        first = items[0].settings
        shared = {k: first[k] for k in ("seed", "steps", "guidance_scale", "sampler")}
        columns = {k: [edit_value(k, i.settings.get(k)) for i in items] for k in EDIT_KEYS}
        targets = [i.settings["target"] for i in items]
        return self.pipe.edit(first["source"], targets, progress=False, **shared, **columns)

    def result(self, item, source_image, edited, seconds: float) -> dict:
        source, target = item.settings["source"], item.settings["target"]
        metrics = {}
        if self.shapes:
            metrics.update(shapes_metrics(source_image, edited, source, target))
        if self.clip is not None:
            metrics.update(self.clip(source_image, edited, source, target))
        png = {}
        for name, image in zip(("source", "edited"), (source_image, edited)):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            png[name] = buffer.getvalue()
        return {"key": item.key, "metrics": metrics, "seconds": seconds, "png": png}


EDIT_KEYS = (
    "kind",
    "blend",
    "reweight",
    "cross_replace_steps",
    "self_replace_steps",
    "cross_places",
    "self_places",
)


def edit_value(name: str, value):
    """An item's edit setting as one target's entry of `Pipeline.edit`'s per-target lists: windows as
    (start, end) tuples, blend words and places as lists (or None)."""
    if name.endswith("_replace_steps"):
        return tuple(value) if isinstance(value, list) else value
    if name in ("blend", "cross_places", "self_places") and value is not None:
        return list(value) if isinstance(value, (list, tuple)) else [value]
    return value


def check_ray(address=None):
    """Ray is an optional extra: say how to get it, before any work; a cluster's address must answer (Ray
    itself waits minutes for one that does not)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError(
            "--ray needs Ray, an optional extra: pip install 'minip2p[scale]' (or pip install ray)"
        ) from None
    if address in (None, "auto", "local"):
        return
    host, _, port = str(address).removeprefix("ray://").rpartition(":")
    port = port if port.isdigit() else ("10001" if str(address).startswith("ray://") else "6379")
    host = host or str(address).removeprefix("ray://")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_TIMEOUT).close()
    except (OSError, ValueError) as e:
        raise ValueError(
            f"--ray-address {short(address)}: no Ray cluster answers at {host}:{port} ({e}); start one "
            "(ray start --head) or leave --ray-address out for a local Ray"
        ) from None


def results(items, options: dict, workers: int, ray: bool, ray_address):
    """Compute every batch of items -> each batch's results, in the order they finish (no model is loaded
    for no items)."""
    if not items:
        return
    if ray:
        yield from ray_results(items, options, workers, ray_address)
    elif workers == 1:
        worker = Worker(**options)
        for batch in items:
            yield worker.run(batch)
    else:
        yield from process_results(items, options, workers)


def _start(options):
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops the workers
    threading.Thread(target=_die_with, args=(os.getppid(),), daemon=True).start()
    _worker = Worker(**options)


def _die_with(parent: int):
    """A worker ends when its driver does, however the driver ended (SIGKILL and the OOM killer run no
    cleanup of the driver's): its parent changes, and it exits within a second."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run(batch):
    return _worker.run(batch)


def process_results(items, options, workers):
    """N spawned processes (fork would copy the driver's threads and torch state), at most one batch queued
    per worker beyond the one it computes, so that an interruption leaves little in flight."""
    context = multiprocessing.get_context("spawn")
    pending, deaths = list(reversed(items)), 0
    while pending:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(options,))
        running, broken, clean = {}, False, False
        try:
            while (pending or running) and not broken:
                while pending and len(running) < 2 * workers:
                    item = pending.pop()
                    try:
                        running[pool.submit(_run, item)] = item
                    except BrokenProcessPool:
                        pending.append(item)
                        broken = True
                        break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    item = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        pending.append(item)
                        broken = True
                        continue
                    yield result
            clean = not broken
        finally:
            if clean:
                pool.shutdown()
            else:
                stop(pool)
        if broken:
            pending += running.values()
            deaths += 1
            if deaths > RETRIES:
                raise RuntimeError(f"sweep workers died {deaths} times; {len(pending)} items left undone")
            print(
                f"a sweep worker died; starting them again for the {len(pending)} items left", file=sys.stderr
            )


def stop(pool: ProcessPoolExecutor):
    """Shut a pool down now: queued items cancelled, running workers killed (their items were not written:
    they are run again next time)."""
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.kill()


def ray_results(items, options, workers, address):
    """Ray actors, one model each; an actor that dies is restarted and its item retried (Ray's own fault
    tolerance). A local Ray is started for the run unless `address` names a cluster."""
    import ray
    from ray.util import ActorPool

    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    started = not address and not ray.is_initialized()
    if started:
        cpus = max(os.cpu_count() or 1, workers * options["threads"])
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if options["device"] is None else 0
    if gpus:
        if workers > gpus:  # the extra workers would wait for a GPU forever
            raise ValueError(f"--workers {workers}: the Ray cluster has {gpus} GPUs, one per worker")
        options = dict(options, device="cuda")  # no device given: one GPU per worker
    actor = ray.remote(
        num_cpus=options["threads"], num_gpus=1 if gpus else 0, max_restarts=RETRIES, max_task_retries=RETRIES
    )(Worker)
    try:
        pool = ActorPool([actor.remote(**options) for _ in range(workers)])
        if threading.current_thread() is threading.main_thread():  # Ray took SIGTERM: give it back
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt: the sweep ends
        yield from pool.map_unordered(lambda a, item: a.run.remote(item), items)
    finally:
        if started:
            ray.shutdown()  # the local Ray this run started, and its workers
