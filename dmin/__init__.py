"""dmin: which training samples most influenced an image a diffusion model generated (DMin, arXiv 2412.08637)."""

import os

# torch and numba each run an OpenMP thread pool; by default idle threads spin, and a collection pass alternates
# between torch's kernels and numba's compressor, so each pool's spinning took the cores from the other (a pass
# measured 3-6x slower). Passive waiting must be chosen before either pool starts; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dmin.compress import Compressor, fold
from dmin.errors import DminError

__version__ = "0.1.0"
__all__ = ["Compressor", "DminError", "__version__", "fold"]
