"""Optional install-time build of the fused CPU kernels (gaussian_adaptive_attention/kernels.cpp).

Everything else is in pyproject.toml. The kernels are built here only where
torch can be imported while building, i.e. ``pip install --no-build-isolation .``
(or ``-e .``) into an environment that has torch; they are written as
``gaussian_adaptive_attention/_kernels_<key><EXT_SUFFIX>``, the key naming what
the build depends on, and used only by processes with the same key.
A plain ``pip install .`` (isolated, no torch here), a missing compiler or a
failed build never fails the install: the kernels are then built on first use.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "gaussian_adaptive_attention"


def kernels() -> tuple[list, dict]:
    """``(ext_modules, cmdclass)`` for setup(): the kernels where torch is importable, else nothing."""
    if os.environ.get("GAA_NATIVE", "1") == "0":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception:  # no torch while building (build isolation), or no setuptools in torch's reach
        return [], {}
    # _build.py imports only torch and the standard library: load it by path, not the package
    spec = importlib.util.spec_from_file_location("_gaa_build", PACKAGE / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)

    class OptionalBuildExtension(BuildExtension):
        """Builds the kernels; a failure is a note, not an error."""

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 - any failure leaves the just-in-time build
                print(f"gaussian_adaptive_attention: note: fused CPU kernels not built at install time ({e}); "
                      "they will be built on first use", file=sys.stderr)

    ext = CppExtension(
        f"gaussian_adaptive_attention.{build.PREBUILT}_{build.build_key()}",
        ["gaussian_adaptive_attention/kernels.cpp"],
        extra_compile_args=build.cflags(),
        extra_link_args=build.ldflags(),
    )
    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = kernels()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
