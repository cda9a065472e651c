"""Edit sweeps: many Prompt-to-Prompt edits from a JSONL spec, with metrics, resumable, in this process, in N
local processes or over a Ray cluster (`scale.py`).

A spec line is one edit, {"source": ..., "target": ...} and optional "id", "kind", "blend", "reweight",
"seed" or "seeds", "cross_replace_steps" / "self_replace_steps" (a value or a list: a grid), "steps",
"guidance_scale", "sampler", "cross_places" / "self_places" (the places an edit touches: "down"/"mid"/"up",
"early"/"middle"/"late" or MM-DiT block numbers). Every (line, seed, grid point) is one item. Items of one
source, seed, steps, guidance and sampler are computed `batch` at a time as one batch (`batches`: the
grouping is a function of the spec and `batch` alone, so results do not depend on the workers, the order or
a resume; `batch` is one of the options a folder keeps, as the thread count is). The driver
alone writes: each item's images (atomically), then its line in results.jsonl (one write, flushed and
synced), so an item is finished exactly when its result line is there; a re-run skips those. Each item is
computed with a fixed number of threads (`threads`, default 1): on the CPU the thread count changes the last
bits of a result, and a sweep's images must not depend on how many workers shared the machine.
"""

import signal
import sys
import threading
from contextlib import closing, contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from . import defaults
from .checkpoint import is_bundled, model_path
from .checks import check_device, check_whole, cut, dtype_name, short, short_path
from .files import atomic_write, fingerprint
from .metrics import CLIP_METRICS, SHAPES_METRICS, check_clip, kept, parse_keep
from .scale import check_ray, results
from .sweep_folder import RESULTS, SPECS, Folder, image_paths, spec_hash, write_line
from .sweep_spec import MAX_ERRORS, Item, SpecError, read_spec
from .text import TOKENIZER_DIR, TextConfig, load_tokenizer


def batches(items: list, size: int) -> list:
    """Items -> the batches they are computed in: the items of one source, seed, steps, guidance and
    sampler, in spec order, `size` at a time."""
    groups = {}
    for item in items:
        b = item.base
        key = (b["source"], item.point[0], b["steps"], b["guidance_scale"], b["sampler"])
        groups.setdefault(key, []).append(item)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def read_results(path) -> dict:
    """A sweep folder's results.jsonl -> {key: its last record} (an error record: "error" says why)."""
    folder = Folder(Path(path).parent)
    folder.writable = False  # reading only: nothing repaired, nothing locked
    return folder.records()


def run_options(weights, dtype, vae_dtype, threads, batch, clip, keep, conditions, shapes) -> dict:
    """What a folder's results depend on, by what it is: the model and CLIP by their content (`fingerprint`:
    another path to the same files is the same model, one path to other files is not), the rest by value.
    `shapes` is written only where it is not the model's default, so folders from before it resume."""
    options = dict(
        model=fingerprint(model_path(weights)),
        dtype=dtype_name(dtype),
        vae_dtype=dtype_name(vae_dtype, "vae_dtype"),
        threads=threads,
        batch=batch,
        clip=None if clip is None else fingerprint(clip),
        keep=None if keep is None else ",".join(f"{m}{op}{v!r}" for m, op, v in conditions),
        weights=None if is_bundled(weights) else str(Path(weights).resolve()),  # where: not compared
    )
    if shapes != is_bundled(weights):
        options["shapes"] = shapes
    return options


def check_options(folder: Folder, options: dict, has_results: bool):
    """The same options as the folder's results were made with (sweep.json), or one line saying which
    differ; a folder with results but no sweep.json cannot say, and is refused."""
    before = folder.options()
    if before is None:
        if has_results:
            raise ValueError(
                f"{short_path(folder.out)} has results but no sweep.json (the options they were made with): "
                "give another --out"
            )
        return
    names = {"model": "weights (the model's files)", "clip": "clip (the CLIP model's files)"}
    changed = [
        f"{names.get(k, k)} {short(before.get(k), 40)} -> {short(options.get(k), 40)}"
        for k in {**before, **options}
        if k != "weights" and before.get(k) != options.get(k)
    ]
    if changed:
        raise ValueError(
            f"{short_path(folder.out)} holds results made with other options ({'; '.join(changed)}): give "
            "the same, or another --out"
        )


def check_ids(items: list, stored: dict, folder: Folder):
    """A line whose id has results for another spec is an error: those results would be silently mixed. One
    comparison per line, whatever its size."""
    lines = {i.line: i for i in items}.values()
    errors = [
        f"line {i.line}: id {i.id!r} has results in {short_path(folder.out)} for another spec; give the "
        "line a new id, or another --out"
        for i in lines
        if stored.get(i.id, spec_hash(i.spec)) != spec_hash(i.spec)
    ]
    if errors:
        raise SpecError("\n".join(errors[:MAX_ERRORS]))


def sweep(
    spec,
    out,
    *,
    weights=None,
    workers: int = 1,
    ray: bool = False,
    ray_address: str | None = None,
    clip=None,
    keep: str | None = None,
    device: str | None = None,
    dtype="float32",
    vae_dtype=None,
    threads: int = 1,
    batch: int = defaults.SWEEP_BATCH,
    shapes: bool | None = None,
    progress: bool = True,
) -> list:
    """Run every item of `spec` (a JSONL path, or a list of dicts) not yet finished in `out` -> every item's
    record, in spec order. `workers` local processes (1: this one), or Ray workers with `ray`
    (`ray_address`: an existing cluster's; else a local Ray is started). `clip`: a local CLIPModel folder for
    CLIP metrics; `keep`: filters ("clip_dir>=0.2,clip_img>=0.75") that mark the records that pass. `device`
    None: the CPU, or on a Ray cluster with GPUs, one GPU per worker. An edit that fails (a setting the model
    cannot take, out of memory) gets a record with its "error", the sweep goes on, and the next run of the
    folder tries it again. `batch`: edits of one source and seed computed together (1 + batch rows of work
    instead of 2 x batch). `shapes`: score with the shapes-world analyser (None: for the bundled models
    only; True for a shapes-world model of your own). SIGTERM is taken as Ctrl-C: the workers are stopped,
    what is finished is kept."""
    folder = Folder(out)
    workers, threads = check_whole(workers, "workers", 1, 1024), check_whole(threads, "threads", 1, 1024)
    batch = check_whole(batch, "batch", 1, 64)
    check_model_options(weights, device, dtype, vae_dtype)
    items = read_spec(spec, sweep_tokenizer(weights))
    if shapes not in (None, True, False):
        raise ValueError(
            f"shapes={shapes!r}: give True, False or None (the analyser for bundled models only)"
        )
    shapes = is_bundled(weights) if shapes is None else shapes
    metrics = (SHAPES_METRICS if shapes else ()) + (CLIP_METRICS if clip else ())
    conditions = parse_keep(keep, metrics)
    if clip:
        check_clip(clip)
    if ray:
        check_ray(ray_address)
    options = run_options(weights, dtype, vae_dtype, threads, batch, clip, keep, conditions, shapes)
    with folder, terminate_as_interrupt():
        records, stored, by_key, todo = plan(folder, items, options, batch, progress)
        bar = tqdm(
            total=len(items),
            initial=len(items) - len(by_key),
            desc="sweep",
            unit="edit",
            disable=not progress,
        )
        work = dict(weights=weights, dtype=options["dtype"], vae_dtype=options["vae_dtype"])
        work.update(device=device, clip=clip, threads=threads, shapes=shapes)
        computed = results(todo, work, workers, ray, ray_address)
        records.update(Writer(folder, options, stored, by_key, conditions).write(computed, bar))
    return [records[i.key] for i in items]


def plan(folder: Folder, items: list, options: dict, batch: int, progress: bool) -> tuple:
    """The folder read and checked against this run -> (its records, {id: spec hash}, {key: item} to do, the
    batches to compute: whole, so an item finished before comes out with the same bits)."""
    records = folder.records()
    check_options(folder, options, bool(records))
    stored = folder.specs(records)
    check_ids(items, stored, folder)
    done = {k for k, r in records.items() if folder.finished(r)}
    todo = [b for b in batches(items, batch) if any(i.key not in done for i in b)]
    by_key = {i.key: i for b in todo for i in b if i.key not in done}
    if progress:
        retried = sum(1 for k in by_key if k in records)
        again = f"; {retried} that failed before tried again" if retried else ""
        print(f"{len(by_key)} of {len(items)} edits to do ({len(done)} finished{again})", file=sys.stderr)
    if by_key and not folder.writable:
        raise ValueError(f"{short_path(folder.out)} is not writable: {len(by_key)} edits are left to do")
    return records, stored, by_key, todo


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (what `timeout`, a scheduler or `kill` sends) ends the sweep as Ctrl-C does: through every
    `finally`, so the workers are stopped and nothing is half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)  # raises KeyboardInterrupt
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


class Writer:
    """The driver's writes, in the order that makes every state of the folder a valid one: sweep.json once the
    model has given a result (a sweep that cannot start leaves no options behind), a line's spec before its
    first record, each item's images before its record."""

    def __init__(self, folder: Folder, options: dict, stored: dict, by_key: dict, conditions: list):
        self.folder, self.options, self.stored = folder, options, stored
        self.by_key, self.conditions = by_key, conditions

    def write(self, computed, bar) -> dict:
        """Each batch's results as they come -> {key: record} of those written; an item of the batch
        finished before (a resume re-runs its batch whole) keeps its first record."""
        records, f, specs = {}, None, None
        try:
            with bar, closing(computed):
                for batch_results in computed:
                    for result in batch_results:
                        if "fatal" in result:  # a worker that could not start: its model or device
                            raise ValueError(result["fatal"])
                        item = self.by_key.get(result.get("key"))
                        if item is None:
                            continue
                        if f is None:
                            if self.folder.options() is None:
                                self.folder.write_options(self.options)
                            f, specs = self.folder.appender(RESULTS), self.folder.appender(SPECS)
                        if item.id not in self.stored:
                            write_line(specs, dict(id=item.id, hash=spec_hash(item.spec), spec=item.spec))
                            self.stored[item.id] = spec_hash(item.spec)
                        record = self.finish(item, result)
                        write_line(f, record)
                        records[item.key] = record
                        bar.update()
        finally:
            for file in (f, specs):
                if file is not None:
                    file.close()
        return records

    def finish(self, item: Item, result: dict) -> dict:
        """Write an item's images (atomically) -> its result record."""
        images = image_paths(item.key) if "png" in result else {}
        for name, rel in images.items():
            with atomic_write(self.folder.out / rel) as tmp:
                tmp.write_bytes(result["png"][name])
        record = dict(key=item.key, line=item.line, id=item.id, settings=item.settings, images=images)
        record.update(metrics=result["metrics"], seconds=round(result["seconds"], 3))
        record["kept"] = kept(result["metrics"], self.conditions)
        if "error" in result:
            record["error"] = cut(result["error"], 2000)
        return record


def sweep_tokenizer(weights):
    """The tokenizer a spec's words are checked with: a diffusers folder's own, else the bundled CLIP one."""
    folder = model_path(weights) / "tokenizer" if model_path(weights).is_dir() else None
    return load_tokenizer(TextConfig(), folder if folder and folder.is_dir() else TOKENIZER_DIR)


def check_model_options(weights, device, dtype, vae_dtype):
    dtype_name(dtype), dtype_name(vae_dtype, "vae_dtype")  # by name: the options are written to sweep.json
    if device is not None:
        check_device(device)
    if not model_path(weights).exists():
        raise FileNotFoundError(f"checkpoint not found: {short_path(weights)}")
