"""The package's Python API: cheap to import, every exported name resolves, and submodules never shadow it."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_import_dmin_does_not_load_torch() -> None:
    assert run("import sys, dmin; print('torch' in sys.modules, dmin.__version__)") == "False 0.2.0"


def test_every_exported_name_resolves_to_what_its_module_defines() -> None:
    code = (
        "import importlib, dmin\n"
        "for name, module in dmin._LAZY.items():\n"
        "    assert getattr(dmin, name) is getattr(importlib.import_module(module), name), name\n"
        "assert sorted(dmin.__all__) == sorted([*dmin._LAZY, 'DminError', '__version__'])\n"
        "print('ok')"
    )
    assert run(code) == "ok"


def test_loading_a_submodule_first_keeps_the_function_of_the_same_name() -> None:
    """dmin.collect and dmin.verify are functions even when their modules were imported before, by anyone."""
    code = (
        "from dmin.verify import Report\n"
        "import dmin.collect, dmin\n"
        "print(dmin.collect.__name__, dmin.collect.__module__, dmin.verify.__name__, callable(dmin.verify))"
    )
    assert run(code) == "collect dmin.collect verify True"
