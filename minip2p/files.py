"""Writing files: every file minip2p writes goes through `atomic_write`, so that nothing half-written survives
a full disk or an interruption, and a good file already there is only replaced by a complete new one."""

import errno
import hashlib
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .checks import short, short_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def check_output(path, suffixes=None) -> Path:
    """An output path, checked before any slow work: its folder exists, it is not a folder, not a symlink (we
    would write through it to a file elsewhere), and has one of `suffixes` if given."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link: give a plain file's path (we would write elsewhere)")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name in it")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: give a file name ending in {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"{path}: the folder {path.parent} is not writable")
    return path


def file_mode() -> int:
    """The permissions a new file gets here (mkstemp's own are owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path):
    """with atomic_write(path) as tmp: write the file at `tmp`. It is renamed to `path` only when the block
    ends without an error (os.replace: atomic on one file system); else it is removed, `path` untouched."""
    path = check_output(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:  # on the disk before it takes the name: a crash leaves the old or the new
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # and the rename itself
        finally:
            os.close(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image, path):
    """A PIL image to path (PNG, JPEG or WebP, by its suffix), atomically."""
    path = check_output(path, IMAGE_SUFFIXES)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    with atomic_write(path) as tmp:
        image.save(tmp, format=fmt)


def open_regular(path, flags: int = os.O_RDONLY, follow: bool = True) -> int:
    """os.open that refuses what is not a regular file before reading or writing it: a FIFO would block
    forever, a device or socket is not a file of ours; with follow=False a symbolic link too (inside a sweep
    folder: we would read or write a file elsewhere). -> a blocking file descriptor."""
    nofollow = 0 if follow else getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | nofollow, 0o666)
    except OSError as e:
        if not follow and Path(path).is_symlink():
            raise ValueError(f"{short_path(path)} is a link: a sweep folder holds plain files") from None
        if e.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise ValueError(f"{short_path(path)} is not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{short_path(path)} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_text(path, follow: bool = True) -> str:
    """A regular file's text (UTF-8) -> str; one line naming the file otherwise."""
    fd = open_regular(path, follow=follow)
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{short_path(path)} is not UTF-8 text (byte {e.start})") from None


def parse_json(text: str, where: str):
    """JSON text -> its value, strictly: a key given twice, NaN or Infinity, or nesting past Python's
    recursion limit are one-line errors naming `where` (json itself takes the last duplicate silently)."""

    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) < len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"{where}: the key {short(twice)} is given twice")
        return dict(pairs)

    def constant(name):
        raise ValueError(f"{where}: {name} is not a number JSON allows")

    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deep") from None


def read_json(path, follow: bool = True):
    """A JSON file -> its value (`parse_json`), naming the file in every error."""
    return parse_json(read_text(path, follow), short_path(path))


def fingerprint(path) -> str:
    """What a model file or folder is, cheaply: a hash of each file's size and, for files over 4 MiB, 32
    spread 64 KiB samples (the whole of a smaller one), by relative name. Two copies of a model agree wherever
    they are; two models differ (their headers and weights do), without reading gigabytes at every start."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(path) if path.is_dir() else ''}\0{size}\0".encode())
        fd = open_regular(p)
        with os.fdopen(fd, "rb") as f:
            if size <= SAMPLED:
                h.update(f.read())
                continue
            for k in range(SAMPLES):
                f.seek((size - SAMPLE) * k // (SAMPLES - 1))
                h.update(f.read(SAMPLE))
    return h.hexdigest()[:32]


SAMPLE, SAMPLES, SAMPLED = 1 << 16, 32, 1 << 22


def remove_temps(folder) -> int:
    """Temp files `atomic_write` left behind in `folder` (a run killed mid-write) -> removed; their count."""
    n = 0
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n
