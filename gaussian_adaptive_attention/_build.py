"""Finding or building the fused CPU kernels (``kernels.cpp``).

Two ways to a compiled library, tried in this order:

1. Install time: ``pip install --no-build-isolation .`` with torch importable
   builds ``_kernels_<key>`` next to this file (``setup.py``). It is used only
   by a process whose key is the same (same torch, Python, machine, CPU
   capability, source and flags).
2. Just in time: ``torch.utils.cpp_extension.load`` builds into the cache
   folder, ``$GAA_CACHE_DIR``, else ``$XDG_CACHE_HOME/gaussian_adaptive_attention``,
   else ``~/.cache/gaussian_adaptive_attention`` (without a home folder:
   ``<tmp>/gaussian_adaptive_attention-<uid>``), in a subfolder named by the key,
   under an ``fcntl`` lock so that concurrent processes build once.

A compiled library is code that every process loads, so the cache is trusted
only while the folders and the file are owned by the current user and not
writable by group or others; otherwise nothing is loaded from it.

This file imports only the standard library and torch (``cpp_extension`` only
when it builds), so that ``setup.py`` can load it by path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import os
import platform
import shutil
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import torch

SOURCE = Path(__file__).with_name("kernels.cpp")
PREBUILT = "_kernels"  # setup.py's extension: gaussian_adaptive_attention/_kernels_<key><EXT_SUFFIX>


class BuildError(Exception):
    """The kernels cannot be had: ``reason`` says why and ``fix`` what to do."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


def capability() -> str:
    """The CPU capability ATen dispatches to here (AVX2, AVX512, DEFAULT, SVE256, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cflags() -> list[str]:
    """Compiler flags: ATen's Vectorized is only as wide as the CPU_CAPABILITY it is built for.

    x86 machines that run ATen's AVX2 (or AVX-512) kernels get the AVX2 build;
    everything else the portable one (NEON on ARM64 comes with the target).
    """
    # -fno-tree-loop-distribute-patterns: GCC would turn the loads of an 8 x 8
    # transpose into a memcpy to the stack (a store-forwarding stall per row)
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fno-tree-loop-distribute-patterns"]
    if platform.machine().lower() in ("x86_64", "amd64") and capability() in ("AVX2", "AVX512"):
        return flags + ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    return flags + ["-DCPU_CAPABILITY=DEFAULT"]


def ldflags() -> list[str]:
    return ["-fopenmp"]  # at::parallel_for's OpenMP region, on the libgomp torch has loaded


def build_key(source: Path = SOURCE, flags: Optional[list[str]] = None) -> str:
    """What a compiled library depends on, hashed: never the x86-only cpuinfo flags."""
    parts = [
        hashlib.sha256(source.read_bytes()).hexdigest(),
        " ".join(cflags() if flags is None else flags),
        torch.__version__,
        str(torch._C._GLIBCXX_USE_CXX11_ABI),
        sys.implementation.cache_tag or "",
        sysconfig.get_config_var("EXT_SUFFIX") or "",
        platform.system(),
        platform.machine(),
        capability(),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def cache_root() -> Path:
    """The cache folder; never raises, even without HOME or a passwd entry."""
    if os.environ.get("GAA_CACHE_DIR"):
        return Path(os.environ["GAA_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "gaussian_adaptive_attention"
    try:
        home = Path.home()
    except (KeyError, RuntimeError, OSError):  # no HOME and no passwd entry for this uid
        home = None
    if home is None or str(home) in ("", ".", "/"):
        uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
        return Path(tempfile.gettempdir()) / f"gaussian_adaptive_attention-{uid}"
    return home / ".cache" / "gaussian_adaptive_attention"


def check_trusted(path: Path, what: str) -> None:
    """Raise BuildError unless ``path`` is ours and not writable by group or others."""
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise BuildError(
            f"the {what} {path} belongs to another user",
            "set GAA_CACHE_DIR to a folder of your own",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BuildError(
            f"the {what} {path} is writable by group or others",
            f"run `chmod go-w {path}` or set GAA_CACHE_DIR to a private folder",
        )


def private_dir(path: Path, what: str) -> Path:
    """Create ``path`` (mode 0700) or check an existing one against the trust rule."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create the {what} {path}: {e.strerror}", "set GAA_CACHE_DIR to a folder you can write") from e
    check_trusted(path, what)
    if not os.access(path, os.W_OK | os.X_OK):
        raise BuildError(f"the {what} {path} is not writable", "set GAA_CACHE_DIR to a folder you can write")
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock held while building; the system releases it if the process dies."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def prebuilt(key: str) -> Optional[Path]:
    """The install-time build for this process's key, where there is one."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        library = here / f"{PREBUILT}_{key}{suffix}"
        if library.is_file():
            return library
    return None


def _check_toolchain() -> None:
    if not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        raise BuildError(f"they are built on Linux and macOS only, not {sys.platform}", "run on Linux or macOS")
    if not hasattr(torch.library, "register_fake"):
        raise BuildError(f"they need torch >= 2.4, found {torch.__version__}", "upgrade torch")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler: {cxx} not found", "install one (e.g. `apt-get install g++`) or point CXX at it")
    try:
        from torch.utils import cpp_extension
    except ImportError as e:  # it needs setuptools
        raise BuildError(f"torch.utils.cpp_extension cannot be imported: {e}", "`pip install setuptools`") from e
    if not cpp_extension.is_ninja_available():
        raise BuildError("ninja is not installed", "`pip install ninja`")


def load(source: Path = SOURCE, name: str = "gaa_kernels", use_prebuilt: bool = True) -> str:
    """Load the kernels into this process, building them if need be.

    Returns how: ``"prebuilt"``, ``"cached"`` or ``"built"``. Raises BuildError.
    """
    flags = cflags()
    key = build_key(source, flags)
    library = prebuilt(key) if use_prebuilt else None
    if library is not None:
        torch.ops.load_library(str(library))
        return "prebuilt"
    root = private_dir(cache_root(), "cache folder")
    folder = private_dir(root / f"{name}-{key}", "cache folder")
    library = folder / f"{name}_{key}.so"
    with locked(folder / "build.lock"):
        if library.exists():
            check_trusted(library, "compiled kernels file")
            torch.ops.load_library(str(library))
            return "cached"
        _check_toolchain()
        (folder / "lock").unlink(missing_ok=True)  # cpp_extension's own lock, left by a killed build
        from torch.utils import cpp_extension

        try:
            cpp_extension.load(
                f"{name}_{key}",
                [str(source)],
                extra_cflags=flags,
                extra_ldflags=ldflags(),
                build_directory=str(folder),
                is_python_module=False,
                verbose=False,
            )
        except Exception as e:  # a compiler error, a missing header or libomp, a full disk...
            log = folder / "build.log"
            log.write_text(f"{type(e).__name__}: {e}\n")
            library.unlink(missing_ok=True)
            raise BuildError(f"building them failed, see {log}", "fix the build (or the compiler) named in that log") from e
        os.chmod(library, stat.S_IMODE(os.stat(library).st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
        return "built"
