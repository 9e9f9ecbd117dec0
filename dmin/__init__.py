"""dmin: which training samples most influenced an image a diffusion model generated (DMin, arXiv 2412.08637)."""

from dmin.compress import Compressor, fold
from dmin.errors import DminError

__version__ = "0.1.0"
__all__ = ["Compressor", "DminError", "__version__", "fold"]
