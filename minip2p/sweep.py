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

import hashlib
import itertools
import json
import os
import sys
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import defaults
from .checks import DTYPES, check_device, check_finite, check_seed, check_whole
from .ddim import TRAIN_STEPS
from .files import atomic_write
from .metrics import CLIP_METRICS, SHAPES_METRICS, check_clip, kept, parse_keep
from .p2p import check_window, default_edit_kind, make_edit
from .scale import check_ray, results
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
ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
RESULTS = "results.jsonl"
RUN = "sweep.json"  # the options a sweep folder's results were made with: a resume must use the same


class SpecError(ValueError):
    """Bad spec lines, every one of them, one line each."""


@dataclass(frozen=True)
class Item:
    key: str  # unique in the sweep: the line's id, the seed and the grid point; names the images
    line: int  # line number in the spec (1-based)
    id: str  # the line's "id", else a hash of its content
    spec: dict  # the line as given
    settings: dict  # what the edit is run with, every default filled in (guidance None: the model's)


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


def line_items(d, n: int, tokenizer) -> list:
    """One spec line (a parsed JSON value) -> its items; ValueError with what is wrong."""
    if not isinstance(d, dict):
        raise ValueError('a spec line is a JSON object, {"source": ..., "target": ...}')
    unknown = sorted(set(d) - KEYS)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; a line takes {sorted(KEYS)}")
    source, target = d.get("source"), d.get("target")
    if not (isinstance(source, str) and isinstance(target, str)):
        raise ValueError('needs "source" and "target" prompts (strings)')
    if "seed" in d and "seeds" in d:
        raise ValueError('give "seed" or "seeds", not both')
    seeds = d.get("seeds", [d.get("seed", defaults.SEED)])
    if not isinstance(seeds, list) or not seeds:
        raise ValueError(f'"seeds" must be a non-empty list of seeds, not {seeds!r}')
    seeds = [check_seed(s) for s in seeds]
    sampler = d.get("sampler", defaults.SAMPLERS[0])
    if sampler not in defaults.SAMPLERS:
        raise ValueError(f'"sampler" must be one of {list(defaults.SAMPLERS)}, not {sampler!r}')
    default_steps = defaults.DPM_STEPS if sampler == "dpm++" else defaults.STEPS
    steps = check_whole(d.get("steps", default_steps), "steps", 1, TRAIN_STEPS)
    guidance = d.get("guidance_scale")  # None: the model's own (SD 7.5, SDXL 5.0), as pipe.edit's
    guidance = None if guidance is None else check_finite(guidance, "guidance_scale")
    cross = grid(d.get("cross_replace_steps", defaults.CROSS_REPLACE_STEPS), "cross_replace_steps")
    self_ = grid(d.get("self_replace_steps", defaults.SELF_REPLACE_STEPS), "self_replace_steps")
    reweight, blend = d.get("reweight"), d.get("blend")
    if reweight is not None and not isinstance(reweight, dict):
        raise ValueError(f'"reweight" must be {{word: scale}}, not {reweight!r}')
    kind = d.get("kind") or default_edit_kind(source, target, reweight)
    edit = dict(kind=kind, blend=blend, reweight=reweight)
    edit.update({k: d[k] for k in ("cross_places", "self_places") if d.get(k) is not None})  # blocks
    make_edit(source, target, tokenizer, cross_replace_steps=cross[0], self_replace_steps=self_[0], **edit)
    line_id = d.get("id")
    if line_id is None:
        line_id = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    elif not (isinstance(line_id, str) and line_id and set(line_id) <= ID_CHARS and len(line_id) <= 100):
        raise ValueError(f"\"id\" must be up to 100 letters, digits, '.', '_' or '-', not {line_id!r}")
    items = []
    for s, c, x in itertools.product(seeds, cross, self_):
        settings = dict(source=source, target=target, seed=s, steps=steps, guidance_scale=guidance)
        settings.update(sampler=sampler, **edit)
        settings.update(cross_replace_steps=c, self_replace_steps=x)
        key = f"{line_id}_seed{s}_cross{window_name(c)}_self{window_name(x)}"
        items.append(Item(key, n, line_id, d, settings))
    if len({i.key for i in items}) < len(items):
        raise ValueError("a seed or grid point is given twice")
    return items


def read_spec(spec, tokenizer) -> list:
    """A JSONL file (or a list of dicts) -> every item, in order. Every bad line is reported, with its
    number, in one error, before any work."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"{path} is not a readable text file ({e})") from None
        where = str(path)
    else:
        lines, where = [json.dumps(d) for d in spec], "the spec"
    items, errors, ids = [], [], {}
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = line_items(json.loads(text), n, tokenizer)
        except json.JSONDecodeError as e:
            errors.append(f"{where} line {n}: not JSON ({e.msg}, column {e.colno})")
            continue
        except (ValueError, TypeError) as e:
            errors.append(f"{where} line {n}: {e}")
            continue
        same = line[0].id.lower()  # file names: case-insensitive on some systems
        if same in ids:
            errors.append(f"{where} line {n}: id {line[0].id!r} is already the id of line {ids[same]}")
            continue
        ids[same] = n
        items += line
    if errors:
        raise SpecError("\n".join(errors))
    if not items:
        raise SpecError(f"{where} holds no edits")
    return items


def batches(items: list, size: int) -> list:
    """Items -> the batches they are computed in: the items of one source, seed, steps, guidance and
    sampler, in spec order, `size` at a time."""
    groups = {}
    for item in items:
        s = item.settings
        key = (s["source"], s["seed"], s["steps"], s["guidance_scale"], s["sampler"])
        groups.setdefault(key, []).append(item)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def read_results(path: Path) -> dict:
    """results.jsonl -> {key: record} of the finished items (a later line for a key wins). A last line
    without its newline (a crash while writing it) is dropped, or completed if it is whole; any other
    unreadable line is an error; a record whose images are gone is not finished."""
    if not path.is_file():
        return {}
    text = path.read_text()
    lines = text.split("\n")
    if not text.endswith("\n") and text:
        try:
            json.loads(lines[-1])["key"]
            lines.append("")  # whole: it only lacks its newline
        except (json.JSONDecodeError, KeyError, TypeError):
            print(f"{path}: dropped an unfinished last line", file=sys.stderr)
            lines[-1] = ""
        with atomic_write(path) as tmp:
            tmp.write_text("\n".join(lines))
    records = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[record["key"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path} line {n} is not a result line: the file is damaged") from None
    return {
        k: r
        for k, r in records.items()
        if all((path.parent / name).is_file() for name in r.get("images", {}).values())
    }


def check_run(path: Path, options: dict):
    """The first run of a folder writes its options; a later one must give the same (other weights, dtype,
    threads, CLIP model or filters would mix results that cannot be compared)."""
    if not path.is_file():
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(options, indent=1) + "\n")
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable ({e}): the folder is damaged") from None
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in options.items() if before.get(k) != v]
    if changed:
        raise ValueError(
            f"{path.parent} holds results made with other options ({'; '.join(changed)}): give the same, "
            "or another --out"
        )


def check_ids(items: list, done: dict, path: Path):
    """A line whose id has results for another spec is an error: those results would be silently mixed."""
    specs = {r["id"]: r["spec"] for r in done.values()}
    errors = sorted(
        {
            f"line {i.line}: id {i.id!r} has results in {path} for another spec; give the line a new id, or "
            "another --out"
            for i in items
            if i.id in specs and specs[i.id] != i.spec
        }
    )
    if errors:
        raise SpecError("\n".join(errors))


def check_folder(out) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder (it is created if need be)")
    return out


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
    dtype: str = "float32",
    vae_dtype: str | None = None,
    threads: int = 1,
    batch: int = defaults.SWEEP_BATCH,
    progress: bool = True,
) -> list:
    """Run every item of `spec` (a JSONL path, or a list of dicts) not yet in `out`/results.jsonl -> every
    item's record, in spec order. `workers` local processes (1: this one), or Ray workers with `ray`
    (`ray_address`: an existing cluster's; else a local Ray is started). `clip`: a local CLIPModel folder for
    CLIP metrics; `keep`: filters ("clip_dir>=0.2,clip_img>=0.75") that mark the records that pass. `device`
    None: the CPU, or on a Ray cluster with GPUs, one GPU per worker. An edit that fails (a setting the model
    cannot take) gets a record with its "error", and the sweep goes on. `batch`: edits of one source and
    seed computed together (1 + batch rows of work instead of 2 x batch)."""
    out = check_folder(out)
    workers, threads = check_whole(workers, "workers", 1, 1024), check_whole(threads, "threads", 1, 1024)
    batch = check_whole(batch, "batch", 1, 64)
    check_model_options(weights, device, dtype, vae_dtype)
    items = read_spec(spec, sweep_tokenizer(weights))
    metrics = (SHAPES_METRICS if weights is None else ()) + (CLIP_METRICS if clip else ())
    conditions = parse_keep(keep, metrics)
    if clip:
        check_clip(clip)
    if ray:
        check_ray()
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    done = read_results(path)
    check_ids(items, done, path)
    model = dict(weights=None if weights is None else str(weights), dtype=dtype, vae_dtype=vae_dtype)
    run = dict(model, threads=threads, batch=batch, clip=None if clip is None else str(clip), keep=keep)
    check_run(out / RUN, run)
    todo = [b for b in batches(items, batch) if any(i.key not in done for i in b)]  # run whole: same bits
    by_key = {i.key: i for b in todo for i in b if i.key not in done}
    if progress:
        print(
            f"{len(by_key)} of {len(items)} edits to do ({len(items) - len(by_key)} finished in {path})",
            file=sys.stderr,
        )
    options = dict(model, device=device, clip=clip, threads=threads)
    bar = tqdm(
        total=len(items), initial=len(items) - len(by_key), desc="sweep", unit="edit", disable=not progress
    )
    computed = results(todo, options, workers, ray, ray_address)
    done.update(write(path, computed, by_key, out, conditions, bar))
    return [done[i.key] for i in items]


def write(path: Path, computed, by_key: dict, out: Path, conditions: list, bar) -> dict:
    """Each batch's results as they come -> {key: record} of those written; an item of the batch finished
    before (a resume re-runs its batch whole) keeps its first record."""
    records = {}
    with open(path, "a") as f, bar, closing(computed):
        for batch_results in computed:
            for result in batch_results:
                if result.get("key") in by_key or "fatal" in result:
                    records.update(append(f, result, by_key, out, conditions))
                    bar.update()
    return records


def sweep_tokenizer(weights):
    """The tokenizer a spec's words are checked with: a diffusers folder's own, else the bundled CLIP one."""
    folder = Path(weights) / "tokenizer" if weights and Path(weights).is_dir() else None
    return load_tokenizer(TextConfig(), folder if folder and folder.is_dir() else TOKENIZER_DIR)


def check_model_options(weights, device, dtype, vae_dtype):
    for name, d in (("dtype", dtype), ("vae_dtype", vae_dtype)):
        if d is not None and d not in DTYPES:  # by name: the options are written to sweep.json
            raise ValueError(f"{name} {d!r}: use {', '.join(DTYPES)}")
    if device is not None:
        check_device(device)
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"checkpoint not found: {weights}")


def append(f, result: dict, by_key: dict, out: Path, conditions: list) -> dict:
    """A worker's result -> its images written, its line appended to results.jsonl and synced -> {key:
    record}; a worker that could not start (its model or device) stops the sweep."""
    if "fatal" in result:
        raise ValueError(result["fatal"])
    item = by_key[result["key"]]
    record = finish(item, result, out, conditions)
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())
    return {item.key: record}


def finish(item: Item, result: dict, out: Path, conditions: list) -> dict:
    """Write an item's images (atomically) -> its result record."""
    images = {}
    for name, data in result.get("png", {}).items():
        rel = f"images/{item.key}_{name}.png"
        with atomic_write(out / rel) as tmp:
            tmp.write_bytes(data)
        images[name] = rel
    record = asdict(item)
    record.update(images=images, metrics=result["metrics"], seconds=round(result["seconds"], 3))
    record["kept"] = kept(result["metrics"], conditions)
    if "error" in result:
        record["error"] = result["error"]
    return record
