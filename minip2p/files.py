"""Writing files: every file minip2p writes goes through `atomic_write`, so that nothing half-written survives
a full disk or an interruption, and a good file already there is only replaced by a complete new one."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

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
