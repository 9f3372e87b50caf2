"""gaa: train, evaluate and apply Gaussian Adaptive Attention sequence classifiers from the command line."""

from gaussian_adaptive_attention import __version__

__all__ = ["__version__"]
