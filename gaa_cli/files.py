"""Writing files so that a crash never leaves a torn one (write beside, then rename), and one writer per run directory."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UsageError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "RunLock", "holder"]


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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file would be (mkstemp makes it private)
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


class RunLock:
    """One writer per run directory: an exclusive lock on RUN_DIR/.lock, held while training (released by the
    system if the process dies, so a killed run never blocks the next one)."""

    NAME = ".lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / self.NAME
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = holder(self.path.parent) or ""
            raise UsageError(f"{self.path.parent}: another gaa process{who} is training into this run directory; "
                             "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays, empty of meaning
            self.fd = None


def holder(run_dir: Path) -> str | None:
    """' (pid N)' if a process holds the run directory's lock now, '' if one does but gives no pid, else None."""
    try:
        fd = os.open(run_dir / RunLock.NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody writes now
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip()
        return f" (pid {pid})" if pid.isdigit() else ""
    finally:
        os.close(fd)
