"""Keep other libraries off the user's terminal: dmin draws its own progress and prints its own errors.

diffusers, transformers and huggingface_hub draw tqdm bars and log advice while loading and sampling; Python
warnings from them would reach stderr too. A script reading dmin's stdout, or a person watching dmin's one
progress bar, wants none of it. Environment variables (set only where the user has not set them) reach the
libraries when they are imported later, and the worker processes `dmin demo` spawns. DMIN_DEBUG=1 keeps warnings.
"""

from __future__ import annotations

import os
import warnings

LIBRARY_QUIET = {
    "TQDM_DISABLE": "1",  # diffusers' sampling loops and transformers' weight loading draw tqdm bars
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def silence_libraries(debug: bool) -> None:
    for name, value in LIBRARY_QUIET.items():
        os.environ.setdefault(name, value)
    if not debug:
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        warnings.simplefilter("ignore")
