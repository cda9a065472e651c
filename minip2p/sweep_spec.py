"""Sweep specs: a JSONL file (or a list of dicts) -> items, one per (line, seed, grid point), every bad line
reported with its number before any work. A line's keys are `KEYS`; see `sweep.py` for what they mean."""

import itertools
import numbers
from dataclasses import dataclass
from pathlib import Path

from . import defaults
from .checks import check_finite, check_seed, check_whole, short, short_path
from .ddim import TRAIN_STEPS
from .files import parse_json, read_text
from .p2p import check_window, default_edit_kind, make_edit
from .sweep_folder import ID_CHARS, spec_hash

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
    """A grid point in a file name, exactly (repr: 0.3 and 0.30000001 stay apart); None, the default."""
    if w is None:
        return "default"
    return repr(float(w)) if isinstance(w, (int, float)) else "-".join(repr(float(v)) for v in w)


def grid(value, name: str) -> list:
    """A window or a list of them (a grid: [0.2, 0.8] is two points; a window (start, end) in a grid is
    written [[0.2, 0.6]]) -> the list, each point checked."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{name}: an empty grid")
    for v in values:
        if v is not None:  # the default
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
    sampler = d.get("sampler")  # None: the model's (DDIM; SD3: Euler), as pipe.edit's
    if sampler is not None and (not isinstance(sampler, str) or sampler not in defaults.ALL_SAMPLERS):
        raise ValueError(f'"sampler" must be one of {list(defaults.ALL_SAMPLERS)}, not {short(sampler)}')
    steps = d.get("steps")  # None: the model's for the sampler (DDIM 50, DPM++ 20, SD3 28)
    steps = None if steps is None else check_whole(steps, "steps", 1, TRAIN_STEPS)
    guidance = d.get("guidance_scale")  # None: the model's own (SD 7.5, SDXL 5.0), as pipe.edit's
    guidance = None if guidance is None else check_finite(guidance, "guidance_scale")
    cross = grid(d.get("cross_replace_steps", defaults.CROSS_REPLACE_STEPS), "cross_replace_steps")
    self_ = grid(d.get("self_replace_steps"), "self_replace_steps")  # None: the model's, as pipe.edit's
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
