"""Writing files atomically with the mode an ordinary `open()` would give them.

A temp file in the destination folder is written, given its final mode and renamed over the destination, so a
reader never sees a half-written file. `tempfile.mkstemp` creates files 0600 whatever the umask; the temp file gets
the mode of the file it replaces (so overwriting a manifest in place keeps its 0644), or 0666 & ~umask for a new
file, as `open(path, "w")` would.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from fusion_ser.errors import FusionSerError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(FusionSerError):
    """A write that ran out of disk space or quota; the file it was replacing is intact."""


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def new_file_mode(path: str | Path) -> int:
    """The permission bits a write to `path` should leave: those of the existing file, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path next to `path` to write into; on success it gets `new_file_mode(path)` and replaces `path`.

    On an error the temp file is removed and `path` is left as it was.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    except OSError as e:
        raise _disk_full(dest, e) if e.errno in NO_SPACE else e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode(dest))
        os.replace(tmp, dest)
    except OSError as e:
        if e.errno in NO_SPACE or isinstance(e.__cause__, OSError) and e.__cause__.errno in NO_SPACE:
            raise _disk_full(dest, e) from None
        raise
    except RuntimeError as e:  # torch.save wraps the write's OSError in a RuntimeError
        if "No space left" in str(e) or "Disk quota" in str(e):
            raise _disk_full(dest, e) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _disk_full(dest: Path, e: Exception) -> DiskFullError:
    return DiskFullError(f"no space left on the device while writing '{dest}' ({e}); '{dest}' was left as it was. "
                         "Free space on that disk (or write there less: another output or cache folder) and run the "
                         "command again; an interrupted training resumes from its last checkpoint")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and a rename (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` through a temp file and a rename (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
