"""Writing files so that a crash never leaves a torn one: write beside, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UsageError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and rename the result onto `path` in one step.

    The temporary file lives in the same folder (so the rename is atomic) and is
    removed if anything fails; `path` then still holds its old contents, if any.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except FileNotFoundError:
        raise UsageError(f"{folder}: folder does not exist; create it or choose another output path") from None
    except PermissionError:
        raise UsageError(f"{folder}: folder is not writable; choose another output path") from None
    except NotADirectoryError:
        raise UsageError(f"{folder}: is not a folder (a file is in the way); choose another output path") from None
    except OSError as e:
        raise UsageError(f"{folder}: cannot write a file here ({e.strerror}); choose another output path") from None
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
