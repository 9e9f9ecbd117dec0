"""dmin: which training samples most influenced an image a diffusion model generated (DMin, arXiv 2412.08637).

The names below are the Python API the README shows. They load on first use, so `import dmin` stays cheap (it
does not import torch) and the CLI answers `--help` and shell completion at once.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING, Any

# torch and numba each run an OpenMP thread pool; by default idle threads spin, and a collection pass alternates
# between torch's kernels and numba's compressor, so each pool's spinning took the cores from the other (a pass
# measured 3-6x slower). Passive waiting must be chosen before either pool starts; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dmin.errors import DminError
from dmin.version import __version__

_LAZY = {
    "Compressor": "dmin.compressor",
    "fold": "dmin.compressor",
    "prepare": "dmin.gradients",
    "collect": "dmin.collect",
    "open_for_query": "dmin.query",
    "run_query": "dmin.query",
    "QuerySpec": "dmin.query",
    "connect": "dmin.store.catalog",
    "build_index": "dmin.index",
    "build_preconditioner": "dmin.precondition",
    "IndexParams": "dmin.index",
    "verify": "dmin.verify",
    "project_info": "dmin.info",
}

__all__ = [
    "Compressor",
    "DminError",
    "IndexParams",
    "QuerySpec",
    "__version__",
    "build_index",
    "build_preconditioner",
    "collect",
    "connect",
    "fold",
    "open_for_query",
    "prepare",
    "project_info",
    "run_query",
    "verify",
]

if TYPE_CHECKING:
    from dmin.collect import collect
    from dmin.compressor import Compressor, fold
    from dmin.index import IndexParams, build_index
    from dmin.info import project_info
    from dmin.precondition import build_preconditioner
    from dmin.query import QuerySpec, open_for_query, run_query
    from dmin.store.catalog import connect
    from dmin.verify import verify


class _Package(types.ModuleType):
    """`dmin.collect` and `dmin.verify` name both a function of the API and a submodule. Python binds a submodule to
    its package's attribute when it is first imported (by anyone: the CLI, dmin.query, …), which would turn
    `dmin.collect(…)` into "module is not callable" depending on import order; here the API's function wins.
    The submodules stay importable as usual: `from dmin.collect import CollectSummary`."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dmin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
