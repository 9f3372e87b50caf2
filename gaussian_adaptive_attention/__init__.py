"""Gaussian adaptive attention (DAAM) for PyTorch: single-head, multi-head and block modules."""

from .attention import GaussianAdaptiveAttention, MultiHeadGaussianAdaptiveAttention
from ._fused import fused_kernels_available, set_fused_kernels
from .gaussian_block import GaussianBlock

__version__ = "0.2.0"

__all__ = [
    "GaussianAdaptiveAttention",
    "MultiHeadGaussianAdaptiveAttention",
    "GaussianBlock",
    "set_fused_kernels",
    "fused_kernels_available",
    "__version__",
]
