"""The Typer app, its commands (registered here, explicitly), and the entry point that turns every error into one line.

Exit codes: 0 success, 1 a failure or a defect found, 2 a usage error. DMIN_DEBUG=1 shows tracebacks.
Command modules import the library inside their functions, so `dmin --help`, `--version` and shell completion
(which runs `dmin` on every Tab) never pay for torch.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer

from dmin.errors import DminError, UsageError
from dmin_cli import quiet, render
from dmin_cli.commands import (
    collect,
    compact,
    compress,
    demo,
    forget,
    index,
    info,
    merge,
    precondition,
    query,
    roots,
    sql,
    verify,
)

try:  # typer ≥ 0.22 vendors click; earlier releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

app = typer.Typer(
    name="dmin",
    help="Which training samples most influenced this generated image? Gradient database + DMin influence.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

app.command("collect", epilog=collect.EXAMPLES)(collect.collect_cmd)
app.command("compress", epilog=compress.EXAMPLES)(compress.compress_cmd)
app.command("index", epilog=index.EXAMPLES)(index.index_cmd)
app.command("precondition", epilog=precondition.EXAMPLES)(precondition.precondition_cmd)
app.command("query", epilog=query.EXAMPLES)(query.query_cmd)
app.command("sql", epilog=sql.EXAMPLES)(sql.sql_cmd)
app.command("verify", epilog=verify.EXAMPLES)(verify.verify_cmd)
app.command("info", epilog=info.EXAMPLES)(info.info_cmd)
app.command("forget", epilog=forget.EXAMPLES)(forget.forget_cmd)
app.command("compact", epilog=compact.EXAMPLES)(compact.compact_cmd)
app.command("merge", epilog=merge.EXAMPLES)(merge.merge_cmd)
app.command("roots", epilog=roots.EXAMPLES)(roots.roots_cmd)
app.command("demo", epilog=demo.EXAMPLES)(demo.demo_cmd)


def _show_version(value: bool) -> None:
    if value:
        from dmin import __version__

        print(f"dmin {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print dmin's version and exit.", callback=_show_version, is_eager=True),
    ] = False,
) -> None:
    """Which training samples most influenced this generated image? Gradient database + DMin influence."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code the CLI shows for an exception."""
    if isinstance(exc, click_exceptions.UsageError):
        ctx = exc.ctx
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return f"Error: {_one_line(exc.format_message())}{where}", 2
    if isinstance(exc, click_exceptions.ClickException):
        return f"Error: {_one_line(exc.format_message())}", exc.exit_code
    if isinstance(exc, UsageError):
        return f"Error: {_one_line(str(exc))}", 2
    if isinstance(exc, DminError):
        return f"Error: {_one_line(str(exc))}", 1
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
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Error: {exc.strerror}: {exc.filename}; check that you may write there, or choose another path", 1
    name = type(exc).__name__
    return f"Error: unexpected {name}: {_one_line(str(exc))} (set DMIN_DEBUG=1 for the traceback)", 1


def main(argv: list[str] | None = None) -> None:
    """Console entry point (argv: default sys.argv[1:]): every failure, usage errors included, becomes one line on
    stderr. The program is `dmin` however it was started (`python -m dmin_cli`, torchrun)."""
    debug = os.environ.get("DMIN_DEBUG") == "1"
    quiet.silence_libraries(debug, render.interactive())
    quiet.show_dmin_warnings(render.warn)
    try:
        code = app(args=argv, prog_name="dmin", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:  # bare `dmin`: the help, as before
        print(exc.ctx.get_help())
        code = 2
    except (Exception, KeyboardInterrupt) as exc:  # one clear line, unless debugging
        if debug:
            raise
        line, code = error_line(exc)
        print(line, file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
