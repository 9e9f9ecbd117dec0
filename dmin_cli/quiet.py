"""Keep other libraries off the user's stderr: dmin draws its own progress and prints its own errors.

dmin.models already turns diffusers' and transformers' own bars and advice off. What is left reaches stderr through
the environment or Python's warnings: tqdm bars of other code paths (Hub downloads among them) and deprecation
warnings from dependencies. In a pipe the environment switches them all off (set only where the user has not set
them, read by libraries when they are imported later and by the worker processes `dmin demo` spawns); on a
terminal, download bars stay, as dmin has no bar of its own for a download. DMIN_DEBUG=1 keeps warnings.
"""

from __future__ import annotations

import os
import warnings

PIPE_QUIET = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def silence_libraries(debug: bool, interactive: bool) -> None:
    if not interactive:
        for name, value in PIPE_QUIET.items():
            os.environ.setdefault(name, value)
    if not debug:
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        warnings.simplefilter("ignore")
