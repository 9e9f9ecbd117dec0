"""Option aliases shared by commands, so their help text is identical everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProjectArg = Annotated[
    Path, typer.Argument(help="The project directory (a gradient database).", metavar="PROJECT", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
VOpt = Annotated[
    str | None,
    typer.Option("--v", help="Which stored v to use (e.g. 4096, full); default: the largest compressed v stored."),
]
