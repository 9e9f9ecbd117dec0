"""Which stored v a command uses, with errors whose hints work.

A v is 'full' (the uncompressed normalized gradient, only ever written by `collect --v full`) or a power of two
16 ≤ v ≤ D. A power of two that is not stored can be derived by `dmin compress` when a stored v is a multiple of
it, or when v=full is stored; each error says which of these applies, so a hint never suggests a command that
would fail.
"""

from __future__ import annotations

from dmin.derive import source_for
from dmin.errors import CompressionError, UsageError
from dmin.store import Project


def parse_v(text: str | int) -> str:
    """'full' or a positive integer, as dmin.json spells it; UsageError for anything else."""
    s = str(text).strip().lower()
    if s == "full":
        return s
    if not s.isdigit() or int(s) == 0:
        raise UsageError(f"--v {text!r}: expected a power of two such as 4096, or 'full'")
    return str(int(s))


def derivable_v(project: Project, text: str | int) -> int:
    """The v `dmin compress` is asked for, checked: a power of two within the project's range, never 'full'."""
    v = parse_v(text)
    if v == "full":
        raise UsageError(
            "--v full cannot be derived: it is the uncompressed gradient, which only `dmin collect --v full` "
            "writes (into a new project); ask for a power of two such as 1024"
        )
    ident = project.identity
    try:
        from dmin.compress import Compressor  # torch: only a v that is not stored gets here

        return Compressor(ident.n, ident.compress_seed).check_v(int(v))
    except CompressionError as exc:
        raise UsageError(f"--v {v}: {exc}") from exc


def resolve_v(project: Project, v: str | int | None) -> str:
    """The stored v to use: `v` when it is stored, else the largest compressed v stored (or 'full')."""
    vs = project.identity.vs
    if v is None:
        numeric = sorted((int(x) for x in vs if x != "full"), reverse=True)
        return str(numeric[0]) if numeric else "full"
    s = parse_v(v)
    if s in vs:
        return s
    stored = ", ".join(vs)
    if s == "full":
        raise UsageError(
            f"v=full is not stored (stored: {stored}); uncompressed gradients exist only in a project collected "
            f"with `--v full`: use one of the stored v's"
        )
    new = derivable_v(project, s)
    src = source_for(project, new)  # UsageError when no stored v can give it
    raise UsageError(
        f"v={s} is not stored (stored: {stored}); derive it from v={src} with `dmin compress {project.root} --v {s}`"
    )
