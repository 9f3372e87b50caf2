"""Gaussian adaptive attention (DAAM) for PyTorch: single-head, multi-head and block modules."""

from .attention import GaussianAdaptiveAttention, MultiHeadGaussianAdaptiveAttention
from .gaussian_block import GaussianBlock

__version__ = "0.2.0"

__all__ = [
    "GaussianAdaptiveAttention",
    "MultiHeadGaussianAdaptiveAttention",
    "GaussianBlock",
    "__version__",
]
