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

import itertools
import numbers
import signal
import sys
import threading
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import defaults
from .checkpoint import BUNDLED_MODEL
from .checks import check_device, check_finite, check_seed, check_whole, dtype_name, short, short_path
from .ddim import TRAIN_STEPS
from .files import atomic_write, fingerprint, parse_json, read_text
from .metrics import CLIP_METRICS, SHAPES_METRICS, check_clip, kept, parse_keep
from .p2p import check_window, default_edit_kind, make_edit
from .scale import check_ray, results
from .sweep_folder import ID_CHARS, RESULTS, SPECS, Folder, image_paths, spec_hash, write_line
from .text import TOKENIZER_DIR, TextConfig, load_tokenizer

KEYS = {
    "id",
    "source",
    "target",
    "kind",
    "blend",
    "reweight",
    "seed",
    "seeds",
    "cross_replace_steps",
    "self_replace_steps",
    "steps",
    "guidance_scale",
    "sampler",
    "cross_places",
    "self_places",
}
WINDOWS = ("cross_replace_steps", "self_replace_steps")
MAX_ERRORS = 20  # bad spec lines reported, then a count


class SpecError(ValueError):
    """Bad spec lines, every one of them (up to MAX_ERRORS), one line each."""


@dataclass(frozen=True, slots=True)
class Item:
    key: str  # unique in the sweep: the line's id, the seed and the grid point; names the images
    line: int  # line number in the spec (1-based)
    id: str  # the line's "id", else a hash of its content
    spec: dict  # the line as given (shared by its items; stored once, in specs.jsonl)
    base: dict  # the line's settings, every default filled in (guidance None: the model's); shared
    point: tuple  # (seed, cross_replace_steps, self_replace_steps)

    @property
    def settings(self) -> dict:
        """What the edit is run with."""
        seed, cross, self_ = self.point
        return dict(self.base, seed=seed, cross_replace_steps=cross, self_replace_steps=self_)


def window_name(w) -> str:
    """A grid point in a file name, exactly (repr: 0.3 and 0.30000001 stay apart)."""
    return repr(float(w)) if isinstance(w, (int, float)) else "-".join(repr(float(v)) for v in w)


def grid(value, name: str) -> list:
    """A window or a list of them (a grid: [0.2, 0.8] is two points; a window (start, end) in a grid is
    written [[0.2, 0.6]]) -> the list, each point checked."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{name}: an empty grid")
    for v in values:
        check_window(tuple(v) if isinstance(v, list) else v, name)
    return values


def plain(value, name: str = ""):
    """A spec line given to the API -> the JSON the same line would be in a file: a (start, end) tuple is one
    window (as in pipe.edit), numpy numbers are numbers; anything JSON cannot hold is an error."""
    if name in WINDOWS and isinstance(value, tuple):
        return [[plain(v) for v in value]]  # one window: a grid of one point
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"keys must be strings: {short(list(value))}")
        return {k: plain(v, k if not name else "") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(check_finite(value, name or "a number"))
    raise ValueError(f"{name or 'a value'}: {short(value)} is not a JSON value")


def line_items(d, n: int, tokenizer) -> list:
    """One spec line (a parsed JSON value) -> its items; ValueError with what is wrong."""
    if not isinstance(d, dict):
        raise ValueError('a spec line is a JSON object, {"source": ..., "target": ...}')
    unknown = sorted(set(d) - KEYS)
    if unknown:
        raise ValueError(f"unknown keys {short(unknown)}; a line takes {sorted(KEYS)}")
    source, target = d.get("source"), d.get("target")
    if not (isinstance(source, str) and isinstance(target, str)):
        raise ValueError('needs "source" and "target" prompts (strings)')
    if "seed" in d and "seeds" in d:
        raise ValueError('give "seed" or "seeds", not both')
    seeds = d.get("seeds", [d.get("seed", defaults.SEED)])
    if not isinstance(seeds, list) or not seeds:
        raise ValueError(f'"seeds" must be a non-empty list of seeds, not {short(seeds)}')
    seeds = [check_seed(s) for s in seeds]
    sampler = d.get("sampler", defaults.SAMPLERS[0])
    if not isinstance(sampler, str) or sampler not in defaults.SAMPLERS:
        raise ValueError(f'"sampler" must be one of {list(defaults.SAMPLERS)}, not {short(sampler)}')
    default_steps = defaults.DPM_STEPS if sampler == "dpm++" else defaults.STEPS
    steps = check_whole(d.get("steps", default_steps), "steps", 1, TRAIN_STEPS)
    guidance = d.get("guidance_scale")  # None: the model's own (SD 7.5, SDXL 5.0), as pipe.edit's
    guidance = None if guidance is None else check_finite(guidance, "guidance_scale")
    cross = grid(d.get("cross_replace_steps", defaults.CROSS_REPLACE_STEPS), "cross_replace_steps")
    self_ = grid(d.get("self_replace_steps", defaults.SELF_REPLACE_STEPS), "self_replace_steps")
    reweight, blend = d.get("reweight"), d.get("blend")
    if reweight is not None and not isinstance(reweight, dict):
        raise ValueError(f'"reweight" must be {{word: scale}}, not {short(reweight)}')
    kind = d.get("kind")
    kind = default_edit_kind(source, target, reweight) if kind is None else kind
    edit = dict(kind=kind, blend=blend, reweight=reweight)
    edit.update({k: d[k] for k in ("cross_places", "self_places") if d.get(k) is not None})  # blocks
    make_edit(source, target, tokenizer, cross_replace_steps=cross[0], self_replace_steps=self_[0], **edit)
    line_id = d.get("id")
    if line_id is None:
        line_id = spec_hash(d)[:12]
    elif not (isinstance(line_id, str) and line_id and set(line_id) <= ID_CHARS and len(line_id) <= 100):
        raise ValueError(f"\"id\" must be up to 100 letters, digits, '.', '_' or '-', not {short(line_id)}")
    base = dict(source=source, target=target, steps=steps, guidance_scale=guidance, sampler=sampler, **edit)
    items = [
        Item(f"{line_id}_seed{s}_cross{window_name(c)}_self{window_name(x)}", n, line_id, d, base, (s, c, x))
        for s, c, x in itertools.product(seeds, cross, self_)
    ]
    if len({i.key for i in items}) < len(items):
        raise ValueError("a seed or grid point is given twice")
    return items


def spec_lines(spec) -> tuple:
    """A JSONL path or a list of dicts -> ([(number, parsed line or the error)], where): a file is split on
    newlines only (U+2028 inside a prompt is a character of a JSON string, not a line break)."""
    if not isinstance(spec, (str, Path)):
        if not isinstance(spec, (list, tuple)):
            raise SpecError(f"a spec is a JSONL file or a list of dicts, not {short(spec)}")
        return [(n, d) for n, d in enumerate(spec, start=1)], "the spec"
    if str(spec) == "-":
        raise SpecError("reading a spec from standard input is not supported: give a JSONL file")
    path = Path(spec)
    if path.is_dir():
        raise SpecError(f"spec {short_path(path)} is a folder: give a JSONL file")
    if not path.exists():
        raise SpecError(f"spec file not found: {short_path(path)}")
    where = short_path(path)
    lines = [line.removesuffix("\r") for line in read_text(path).split("\n")]
    return [(n, text) for n, text in enumerate(lines, start=1) if text.strip()], where


def read_spec(spec, tokenizer) -> list:
    """A JSONL file (or a list of dicts) -> every item, in order. Every bad line is reported, with its
    number, in one error (the first MAX_ERRORS, then how many more), before any work."""
    try:
        lines, where = spec_lines(spec)
    except ValueError as e:
        raise SpecError(str(e)) from None
    items, errors, ids = [], [], {}
    for n, text in lines:
        try:
            d = parse_json(text, "") if isinstance(text, str) else plain(text)
            line = line_items(d, n, tokenizer)
        except (ValueError, TypeError) as e:
            errors.append(f"{where} line {n}: {str(e).removeprefix(': ')}")
            continue
        same = line[0].id.lower()  # file names: case-insensitive on some systems
        if same in ids:
            errors.append(f"{where} line {n}: id {line[0].id!r} is already the id of line {ids[same]}")
            continue
        ids[same] = n
        items += line
    if errors:
        more = len(errors) - MAX_ERRORS
        raise SpecError(
            "\n".join(errors[:MAX_ERRORS] + ([f"... and {more} more bad lines"] if more > 0 else []))
        )
    if not items:
        raise SpecError(f"{where} holds no edits")
    return items


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


def run_options(weights, dtype, vae_dtype, threads, batch, clip, keep, conditions) -> dict:
    """What a folder's results depend on, by what it is: the model and CLIP by their content (`fingerprint`:
    another path to the same files is the same model, one path to other files is not), the rest by value."""
    model = BUNDLED_MODEL if weights is None else weights
    return dict(
        model=fingerprint(model),
        dtype=dtype_name(dtype),
        vae_dtype=dtype_name(vae_dtype, "vae_dtype"),
        threads=threads,
        batch=batch,
        clip=None if clip is None else fingerprint(clip),
        keep=None if keep is None else ",".join(f"{m}{op}{v!r}" for m, op, v in conditions),
        weights=None if weights is None else str(Path(weights).resolve()),  # where it was: not compared
    )


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
        f"{names.get(k, k)} {short(before.get(k), 40)} -> {short(v, 40)}"
        for k, v in options.items()
        if k != "weights" and before.get(k) != v
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
    progress: bool = True,
) -> list:
    """Run every item of `spec` (a JSONL path, or a list of dicts) not yet finished in `out` -> every item's
    record, in spec order. `workers` local processes (1: this one), or Ray workers with `ray`
    (`ray_address`: an existing cluster's; else a local Ray is started). `clip`: a local CLIPModel folder for
    CLIP metrics; `keep`: filters ("clip_dir>=0.2,clip_img>=0.75") that mark the records that pass. `device`
    None: the CPU, or on a Ray cluster with GPUs, one GPU per worker. An edit that fails (a setting the model
    cannot take, out of memory) gets a record with its "error", the sweep goes on, and the next run of the
    folder tries it again. `batch`: edits of one source and seed computed together (1 + batch rows of work
    instead of 2 x batch). SIGTERM is taken as Ctrl-C: the workers are stopped, what is finished is kept."""
    folder = Folder(out)
    workers, threads = check_whole(workers, "workers", 1, 1024), check_whole(threads, "threads", 1, 1024)
    batch = check_whole(batch, "batch", 1, 64)
    check_model_options(weights, device, dtype, vae_dtype)
    items = read_spec(spec, sweep_tokenizer(weights))
    metrics = (SHAPES_METRICS if weights is None else ()) + (CLIP_METRICS if clip else ())
    conditions = parse_keep(keep, metrics)
    if clip:
        check_clip(clip)
    if ray:
        check_ray(ray_address)
    options = run_options(weights, dtype, vae_dtype, threads, batch, clip, keep, conditions)
    with folder, terminate_as_interrupt():
        records = folder.records()
        check_options(folder, options, bool(records))
        stored = folder.specs(records)
        check_ids(items, stored, folder)
        done = {k: r for k, r in records.items() if folder.finished(r)}
        todo = [b for b in batches(items, batch) if any(i.key not in done for i in b)]  # whole: same bits
        by_key = {i.key: i for b in todo for i in b if i.key not in done}
        if progress:
            retried = sum(1 for k in by_key if k in records)
            again = f"; {retried} that failed before tried again" if retried else ""
            print(f"{len(by_key)} of {len(items)} edits to do ({len(done)} finished{again})", file=sys.stderr)
        if by_key and not folder.writable:
            raise ValueError(f"{short_path(folder.out)} is not writable: {len(by_key)} edits are left to do")
        bar = tqdm(
            total=len(items),
            initial=len(items) - len(by_key),
            desc="sweep",
            unit="edit",
            disable=not progress,
        )
        work = dict(weights=weights, dtype=options["dtype"], vae_dtype=options["vae_dtype"])
        work.update(device=device, clip=clip, threads=threads)
        computed = results(todo, work, workers, ray, ray_address)
        records.update(Writer(folder, options, stored, by_key, conditions).write(computed, bar))
    return [records[i.key] for i in items]


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
            record["error"] = (
                short(result["error"], 2000)[1:-1] if len(result["error"]) > 2000 else result["error"]
            )
        return record


def sweep_tokenizer(weights):
    """The tokenizer a spec's words are checked with: a diffusers folder's own, else the bundled CLIP one."""
    folder = Path(weights) / "tokenizer" if weights and Path(weights).is_dir() else None
    return load_tokenizer(TextConfig(), folder if folder and folder.is_dir() else TOKENIZER_DIR)


def check_model_options(weights, device, dtype, vae_dtype):
    dtype_name(dtype), dtype_name(vae_dtype, "vae_dtype")  # by name: the options are written to sweep.json
    if device is not None:
        check_device(device)
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"checkpoint not found: {short_path(weights)}")
