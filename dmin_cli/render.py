"""Output helpers: rich tables and progress on a terminal, JSON for scripts, quiet in pipes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True)


def note(text: str, quiet: bool = False) -> None:
    """A remark worth telling a person (stderr), kept out of pipes and --json output."""
    if not quiet and interactive():
        err.print(f"[dim]note:[/dim] {text}", highlight=False)


def warn(text: str, quiet: bool = False) -> None:
    """Something went differently than asked (stderr), even in pipes; --json keeps stderr clean."""
    if not quiet:
        err.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)


def write_bytes(data: bytes) -> None:
    """Binary output (a PNG for `--sheet -`) to stdout, nothing else with it."""
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if x is None else str(x) for x in r))
    out.print(t)


def interactive() -> bool:
    """A person is watching: stdout and stderr are both terminals. Otherwise a successful command prints its output
    and nothing else."""
    return out.is_terminal and err.is_terminal


@contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A progress bar with rate and ETA on stderr when `interactive()`; disabled in pipes or with --json."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=err,
        disable=not (enabled and interactive()),
        transient=False,
    )
    with bar:
        yield bar


def run_build(title: str, json_out: bool, build: Callable[[Callable[[int, int], None]], tuple[Any, dict]]) -> dict:
    """Run a build (index, preconditioner) under a progress bar; its info with "changed" (a new build committed),
    printed as JSON with --json. `build` takes the progress callback and returns (entry or None, info)."""
    with progress(enabled=not json_out) as bar:
        task = bar.add_task(title, total=None, rate="", note="")
        entry, info = build(lambda done, total: bar.update(task, completed=done, total=total))
    info["changed"] = entry is not None
    if json_out:
        print_json(info)
    return info
