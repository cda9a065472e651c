"""A sweep's folder, the sweep's alone: `--out`/results.jsonl (a record per finished item), images/ (its two
PNGs), specs.jsonl (each spec line once, by id), sweep.json (the options its results were made with) and
sweep.lock (held while a sweep runs in it).

Nothing outside the folder is read, written, trusted or returned because of what is inside it: files are
opened without following links and must be regular, a record's image paths must be the ones its key names.
One sweep at a time holds the lock (the OS releases it when its process ends, however it ends: a stale lock
is no lock); temp files a killed run left are removed by the next. Only the driver writes, each record in
one synced write, after its images: an item is finished exactly when its record is there, without an error,
with its images.
"""

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

from .checks import short_path
from .files import atomic_write, open_regular, parse_json, read_json, read_text, remove_temps

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

RESULTS, SPECS, RUN, LOCK = "results.jsonl", "specs.jsonl", "sweep.json", "sweep.lock"
ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
IMAGES = ("source", "edited")


def image_paths(key: str) -> dict:
    """The only image paths a record of `key` may hold, relative to the folder."""
    return {name: f"images/{key}_{name}.png" for name in IMAGES}


def spec_hash(line: dict) -> str:
    """A spec line's identity: two lines are the same spec exactly when their JSON is."""
    return hashlib.sha256(json.dumps(line, sort_keys=True).encode()).hexdigest()[:16]


def plain_file(path: Path) -> bool:
    """A regular file, not through a link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class Folder:
    """with Folder(out) as folder: the sweep folder, created if need be, locked, its results read."""

    def __init__(self, out):
        if isinstance(out, str) and not out.strip():
            raise ValueError(
                "--out is empty: give a folder for the sweep's results (it is created if need be)"
            )
        self.out = Path(out)
        if self.out.is_symlink() and not self.out.exists():
            raise ValueError(
                f"--out {short_path(out)} is a link to {short_path(os.readlink(out))}, which is missing"
            )
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {short_path(out)} is a file: give a folder (it is created if need be)")
        self.lock_fd, self.writable = None, True

    def __enter__(self):
        if self.out.is_dir() and not os.access(self.out, os.W_OK):
            self.writable = False  # a finished sweep can still be read
            return self
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        images = self.out / "images"
        if images.is_symlink() or not images.is_dir():
            raise ValueError(f"{short_path(images)} is not a folder of this sweep's (a link or a file)")
        self.lock()
        for folder in (self.out, self.out / "images"):
            remove_temps(folder)  # left by a run killed while writing: under the lock, none is ours now
        return self

    def __exit__(self, *exc):
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # and the lock with it
            self.lock_fd = None

    def lock(self):
        """Hold sweep.lock (with this pid in it), or one line naming the sweep that holds it."""
        path = self.out / LOCK
        fd = open_regular(path, os.O_RDWR | os.O_CREAT, follow=False)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            owner = "".join(c for c in os.read(fd, 32).decode(errors="replace") if c.isdigit())[:12] or "?"
            os.close(fd)
            raise ValueError(
                f"{short_path(self.out)} is in use by another sweep (pid {owner}, {LOCK}): wait "
                "for it to end, or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def read_lines(self, name: str) -> list:
        """A JSONL file of the folder -> its lines (split on newlines only); [] when absent. A last line cut
        short (a crash while writing it) is dropped."""
        path = self.out / name
        if not os.path.lexists(path):
            return []
        text = read_text(path, follow=False)
        lines = text.split("\n")
        if text and not text.endswith("\n"):
            try:
                parse_json(lines[-1], "")["key" if name == RESULTS else "id"]
                text += "\n"  # whole: it only lacks its newline
            except (ValueError, KeyError, TypeError):
                print(f"{short_path(path)}: dropped an unfinished last line", file=sys.stderr)
                text = text[: len(text) - len(lines[-1])]
            if self.writable:
                with atomic_write(path) as tmp:
                    tmp.write_text(text)
            lines = text.split("\n")
        return [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]

    def records(self) -> dict:
        """results.jsonl -> {key: its last record}; a line that is not a record of this folder is an error."""
        path, records = self.out / RESULTS, {}
        for n, line in self.read_lines(RESULTS):
            where = f"{short_path(path)} line {n}"
            record = parse_json(line, where)
            if not (isinstance(record, dict) and is_record(record)):
                raise ValueError(f"{where} is not a result line of this sweep: the file is damaged")
            records[record["key"]] = record
        return records

    def finished(self, record: dict) -> bool:
        """A record without an error whose two images are there (errors are retried by the next run)."""
        return "error" not in record and all(plain_file(self.out / p) for p in record["images"].values())

    def specs(self, records: dict) -> dict:
        """{id: spec hash} of the lines this folder has results for."""
        hashes = {r["id"]: spec_hash(r["spec"]) for r in records.values() if isinstance(r.get("spec"), dict)}
        for n, line in self.read_lines(SPECS):  # (records of minip2p 0.2.0 held their line: above)
            entry = parse_json(line, f"{short_path(self.out / SPECS)} line {n}")
            if not (isinstance(entry, dict) and isinstance(entry.get("id"), str) and "hash" in entry):
                raise ValueError(f"{short_path(self.out / SPECS)} line {n} is damaged")
            hashes[entry["id"]] = entry["hash"]
        return hashes

    def options(self):
        """sweep.json's options, or None when this folder has none yet."""
        path = self.out / RUN
        if not os.path.lexists(path):
            return None
        options = read_json(path, follow=False)
        if not isinstance(options, dict):
            raise ValueError(f"{short_path(path)} is not a sweep's options file: the folder is damaged")
        return options

    def write_options(self, options: dict):
        with atomic_write(self.out / RUN) as tmp:
            tmp.write_text(json.dumps(options, indent=1) + "\n")

    def appender(self, name: str):
        """A file of the folder opened to append lines, not through a link."""
        return os.fdopen(
            open_regular(self.out / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, follow=False), "a"
        )


def is_record(r: dict) -> bool:
    """The shape of a record: a key of this sweep's characters, images exactly where its key puts them (or
    none, for an error), an id, metrics."""
    key = r.get("key")
    if not (isinstance(key, str) and 0 < len(key) <= 1000 and set(key) <= ID_CHARS):
        return False
    images_ok = r.get("images") == image_paths(key) or ("error" in r and r.get("images") == {})
    return images_ok and isinstance(r.get("id"), str) and isinstance(r.get("metrics"), dict)


def write_line(f, value: dict):
    """One JSON line, flushed and synced: on the disk before the next."""
    f.write(json.dumps(value) + "\n")
    f.flush()
    os.fsync(f.fileno())
