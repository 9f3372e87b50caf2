"""gaa: train, evaluate and apply Gaussian Adaptive Attention sequence classifiers from the command line."""

from __future__ import annotations

__all__ = ["__version__", "Model", "GaaClassifier"]


def __getattr__(name: str) -> object:
    # the version lives in the library, whose import pulls in torch: load it only when asked,
    # so that importing the CLI (and `gaa --help`) does not load torch (see __main__.py); the Python API
    # (api.py: Model, GaaClassifier) loads the same way
    if name == "__version__":
        from gaussian_adaptive_attention import __version__

        return __version__
    if name in ("Model", "GaaClassifier"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
