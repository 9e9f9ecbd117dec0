"""The Typer app and the entry point that turns dmin's typed errors into one-line messages.

Exit codes: 0 success, 1 a failure or a defect found, 2 a usage error. DMIN_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import errno
import os
import sys

import typer

from dmin.errors import DminError, UsageError

app = typer.Typer(
    name="dmin",
    help="Which training samples most influenced this generated image? Gradient database + DMin influence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _register() -> None:
    from dmin_cli import commands  # noqa: F401  (each module adds its command to `app`)


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code the CLI shows for an exception."""
    if isinstance(exc, UsageError):
        return f"Error: {exc}", 2
    if isinstance(exc, DminError):
        return f"Error: {exc}", 1
    if isinstance(exc, KeyboardInterrupt):
        return "Interrupted: committed work is kept; run the same command again to resume.", 130
    if isinstance(exc, MemoryError):
        return "Error: out of memory; try a smaller --batch-size or --v, or --device cuda", 1
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return (
            f"Error: no space left for {exc.filename or 'a write'} ({exc.strerror}); nothing was committed — "
            f"free space and rerun to resume",
            1,
        )
    name = type(exc).__name__
    return f"Error: unexpected {name}: {exc} (set DMIN_DEBUG=1 for the traceback)", 1


def main() -> None:
    """Console entry point: Typer handles usage errors (exit 2); dmin's errors become one line (exit 1)."""
    _register()
    try:
        app()
    except (Exception, KeyboardInterrupt) as exc:  # one clear line, unless debugging
        if os.environ.get("DMIN_DEBUG") == "1":
            raise
        line, code = error_line(exc)
        print(line, file=sys.stderr)
        sys.exit(code)
