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
from collections.abc import Callable

from dmin.errors import DminWarning

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
        warnings.simplefilter("default", DminWarning)  # dmin's own: one line each (`show_dmin_warnings`)


def show_dmin_warnings(say: Callable[[str], None]) -> None:
    """dmin's warnings as one `warning: …` line on stderr; other libraries' keep Python's format (debug only)."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, DminWarning):
            say(str(message))
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
