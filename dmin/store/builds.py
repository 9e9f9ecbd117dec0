"""A derived build (an index, a preconditioner) committed as the successor of the one it was made from.

Builds are written into a fresh folder outside any commit, then adopted in one commit that supersedes the current
build's files. If another build for the same v landed meanwhile, the written one is dropped (its folder removed)
and the caller redoes its work on top of the winner: two writers never both succeed, and neither loses data.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dmin.store.manifest import Entry, FileRef
from dmin.store.project import Commit, Project, Stage


class Build(Protocol):
    @property
    def files(self) -> dict[str, FileRef]: ...


def commit_build(
    project: Project,
    kind: str,
    v: str,
    current: Callable[[], Build | None],
    old: Build | None,
    folder: Path,
    written: list[tuple[str, Path]],
    meta: dict[str, Any],
) -> Entry | None:
    """Commit `written` (table, path) as the build of `kind` for v that succeeds `old`; the entry, or None (and the
    folder removed) when the current build is no longer `old`. `meta` goes to the manifest entry."""
    meta_table = f"{kind}_meta"

    def identity(build: Build | None) -> str | None:
        return build.files[meta_table].path if build is not None else None

    def plan(stage: Stage) -> Commit | None:
        cur = current()
        if identity(cur) != identity(old):
            return None
        files = [stage.adopt(table, table, v, path) for table, path in written]
        return Commit(kind, files, meta, [f.path for f in cur.files.values()] if cur else [])

    entry = project.transact(plan)
    if entry is None:
        shutil.rmtree(folder, ignore_errors=True)
    return entry
